"""How long the EmbeddingProjector callback takes at the end of an epoch, at the reference size.

    python benchmarks/projector_export.py [--top_k 3000] [--epochs 30]

Exports the ``top_k`` most frequent words of a base-sized model (40,003 words, 128 dimensions)
once per simulated epoch into a TensorBoard log folder, the projector config rebuilt each
time, and prints the time of every epoch's export (the config grows with the epochs) and
the size of one epoch's files.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.loggers import TensorBoardLogger

from minibert.explore.callbacks import EmbeddingProjector
from minibert.module import MiniBert
from minibert.tokenizer import Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top_k", type=int, default=3000, help="words exported (0 = all)")
    parser.add_argument("--epochs", type=int, default=30, help="simulated epochs")
    parser.add_argument("--vocab_size", type=int, default=40_003)
    parser.add_argument("--embed_dim", type=int, default=128)
    args = parser.parse_args()

    words = [f"mot{i}" for i in range(args.vocab_size - 3)]
    model = MiniBert(
        vocab_size=args.vocab_size,
        seq_len=20,
        embed_dim=args.embed_dim,
        num_heads=8,
        num_layers=1,
        ff_dim=512,
    )
    model.vocab = Vocabulary(words, range(len(words), 0, -1))
    callback = EmbeddingProjector(top_k=args.top_k)
    with tempfile.TemporaryDirectory() as root:
        logger = TensorBoardLogger(root, name="lightning_logs")
        times = []
        for epoch in range(args.epochs):
            trainer = SimpleNamespace(
                loggers=[logger],
                logger=logger,
                default_root_dir=root,
                current_epoch=epoch,
                global_step=epoch + 1,
            )
            started = time.perf_counter()
            callback.export(trainer, model)
            times.append(time.perf_counter() - started)
        folder = Path(logger.log_dir) / "projector" / "epoch_0"
        sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
    rows = len(words) if args.top_k == 0 else min(args.top_k, len(words))
    print(f"export of {rows} words x {args.embed_dim} dims, {args.epochs} epochs (config rebuilt each time)")
    print(
        f"  first epoch {times[0] * 1000:.0f} ms, last epoch {times[-1] * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f} ms"
    )
    print(
        "  files of one epoch: "
        + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sorted(sizes.items()))
    )


if __name__ == "__main__":
    main()
