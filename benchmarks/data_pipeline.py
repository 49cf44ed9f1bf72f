"""The data pipeline: building the cache, feeding batches, and starting a run on a large corpus.

    python benchmarks/data_pipeline.py                 # everything (a few minutes on 2 cores)
    python benchmarks/data_pipeline.py --skip-startup  # the cache builds and the loader only
    python benchmarks/data_pipeline.py --corpus FILE   # another corpus than Europarl v7 (downloaded)

Prints three tables:

1. Cache builds (tokenize, build the vocabulary, encode, write): seconds and peak resident
   memory, each in a fresh process with an empty cache directory, for the first 30k, 100k and
   500k sentences of the corpus (base.yaml's, ``europarl-v7-fr``, downloaded on first use).
2. Batches per second out of the DataLoader, masking included (the data module's
   ``on_after_batch_transfer``), beside the training step's demand (minibert's steps per
   second at the base configuration, measured here as in ``throughput.py``).
3. Start-up with a warm cache: ``lightning fit`` on the first 100k and 500k sentences with two
   DataLoader workers: seconds from process start to the first training step, and the
   memory of the training process and its workers (RSS, and USS: the memory that is the
   process's own, which excludes the shared memory-mapped arrays).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L

from minibert.machinery.download import EUROPARL_V7_FR, corpus_file

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
VOCAB_SIZE = 40_003  # configs/base.yaml
BUILDS = (30_000, 100_000, 500_000)  # max_sentences of the corpus
STARTUPS = (100_000, 500_000)
MIB = 1024 * 1024
sys.path.insert(0, str(BENCHMARKS))  # throughput.py, beside this file


# --- 1. cache builds, one fresh process each ------------------------------------------------


def build_in_this_process(corpus: str, max_sentences: int | None, data_dir: str) -> None:
    """Build one cache and print its time, peak memory and size as JSON (run in a child process)."""
    from throughput import peak_rss_mib

    from minibert.data import EuroparlDataModule

    baseline = peak_rss_mib()
    data = EuroparlDataModule(
        corpus=corpus, data_dir=data_dir, vocab_size=VOCAB_SIZE, max_sentences=max_sentences
    )
    start = time.perf_counter()
    data.prepare_data()
    seconds = time.perf_counter() - start
    data.setup("fit")
    train = data.datasets["train"]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "baseline_mib": baseline,
                "peak_mib": peak_rss_mib(),
                "sentences": len(train.offsets) - 1 + len(data.datasets["val"].offsets) - 1,
                "tokens": len(train.tokens),
                "vocab": len(data.vocab),
                "cache_mib": sum(f.stat().st_size for f in data.cache_dir.iterdir()) / MIB,
            }
        )
    )


def build_child(corpus: Path, max_sentences: int | None, data_dir: Path) -> dict:
    argv = [sys.executable, __file__, "--build", str(corpus), "--data-dir", str(data_dir)]
    argv += ["--max-sentences", str(max_sentences)] if max_sentences else []
    return json.loads(
        subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    )


# --- 2. the loader against the training step ------------------------------------------------


def loader_rate(corpus: Path, data_dir: Path, num_workers: int, batches: int = 200) -> float:
    """Batches per second: DataLoader (base configuration) + masking, after a few warm-up batches."""
    from minibert.data import EuroparlDataModule

    data = EuroparlDataModule(
        corpus=str(corpus),
        data_dir=str(data_dir),
        vocab_size=VOCAB_SIZE,
        max_sentences=30_000,
        num_workers=num_workers,
    )
    data.setup("fit")
    loader = iter(data.train_dataloader())
    for _ in range(5):
        data.on_after_batch_transfer(next(loader), 0)
    start = time.perf_counter()
    for _ in range(batches):
        data.on_after_batch_transfer(next(loader), 0)
    return batches / (time.perf_counter() - start)


def training_step_rate(corpus: Path, data_dir: Path) -> float:
    """minibert's training steps per second at the base configuration (median of a few)."""
    import throughput

    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here to log to

    args = throughput.parse_args(
        ["--corpus", str(corpus), "--data-dir", str(data_dir), "--warmup", "3", "--steps", "7"]
    )
    batches, vocab_size = throughput.masked_batches(args, count=8)
    _, step = throughput.make_minibert(args, vocab_size)
    times = throughput.timed_interleaved({"minibert": step}, batches, args)["minibert"]
    return 1 / statistics.median(times)


# --- 3. start-up with a warm cache --------------------------------------------------------


class StartupProbe(L.Callback):
    """Passed to ``lightning fit`` by this script: records when training starts and the memory then.

    Args:
        out: JSON file to write.
        at_step: the training step (after start) at which to record the memory.
    """

    def __init__(self, out: str, at_step: int = 10) -> None:
        self.out, self.at_step, self.first_step_s = out, at_step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_s is None:
            import psutil

            self.first_step_s = time.time() - psutil.Process().create_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 != self.at_step:
            return
        import psutil

        main = psutil.Process()
        workers = main.children(recursive=True)
        info = {"first_step_s": self.first_step_s, "main": main.memory_full_info()._asdict()}
        info["workers"] = [w.memory_full_info()._asdict() for w in workers]
        Path(self.out).write_text(json.dumps(info))


def startup_child(corpus: Path, max_sentences: int, data_dir: Path, steps: int = 10) -> dict:
    """A second ``lightning fit`` on the corpus's first ``max_sentences`` (their cache already built), two workers."""
    with tempfile.TemporaryDirectory() as cwd:
        out = Path(cwd) / "startup.json"
        (Path(cwd) / "benchmarks").symlink_to(BENCHMARKS)  # base.yaml names benchmarks/*.tsv from here
        probe = json.dumps(
            {"class_path": "data_pipeline.StartupProbe", "init_args": {"out": str(out), "at_step": steps}}
        )
        argv = [
            "fit",
            "--config",
            str(REPO / "configs" / "base.yaml"),
            "--data.corpus",
            str(corpus),
            "--data.data_dir",
            str(data_dir),
            "--data.max_sentences",
            str(max_sentences),
            "--data.num_workers",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_steps",
            str(steps),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            f"--trainer.callbacks+={probe}",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")])),
        }
        lightning = Path(sys.executable).parent / "lightning"
        subprocess.run([str(lightning), *argv], cwd=cwd, env=env, capture_output=True, text=True, check=True)
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus",
        default=EUROPARL_V7_FR,
        help="one sentence a line; europarl-v7-fr is downloaded into data/",
    )
    p.add_argument("--skip-startup", action="store_true", help="skip the warm-cache start-up runs")
    p.add_argument("--build", help=argparse.SUPPRESS)  # a child process building one cache
    p.add_argument("--max-sentences", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build:
        build_in_this_process(args.build, args.max_sentences, args.data_dir)
        return

    import torch

    corpus = corpus_file(args.corpus, REPO / "data")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        print(
            "\n| corpus | sentences | tokens | vocabulary | cache MiB | build s | peak RSS MiB | RSS after imports MiB |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        data_dirs = {}
        for max_sentences in BUILDS:
            data_dir = data_dirs[max_sentences] = Path(scratch) / f"first-{max_sentences}"
            r = build_child(corpus, max_sentences, data_dir)
            name = f"{corpus.name} (first {max_sentences:,})"
            print(
                f"| {name} | {r['sentences']:,} | {r['tokens']:,} | {r['vocab']:,} | {r['cache_mib']:.0f} "
                f"| {r['seconds']:.1f} | {r['peak_mib']:.0f} | {r['baseline_mib']:.0f} |"
            )

        data_30k = data_dirs[30_000]
        demand = training_step_rate(corpus, data_30k)
        print("\n| loader (batch 128 x 20, masking included) | batches/s | x the training step's demand |")
        print("| --- | ---: | ---: |")
        for workers in (0, 2):
            rate = loader_rate(corpus, data_30k, workers)
            print(f"| num_workers={workers} | {rate:.0f} | {rate / demand:.0f}x |")
        print(f"| (training step, minibert, base configuration) | {demand:.2f} steps/s | |")

        if not args.skip_startup:
            print(
                "\n| second run, warm cache, 2 workers | to first step s | main RSS MiB | main USS MiB | workers RSS MiB | workers USS MiB |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for max_sentences in STARTUPS:
                r = startup_child(corpus, max_sentences, data_dirs[max_sentences])
                name = f"{max_sentences:,} sentences"
                workers_rss = " + ".join(f"{w['rss'] / MIB:.0f}" for w in r["workers"])
                workers_uss = " + ".join(f"{w['uss'] / MIB:.0f}" for w in r["workers"])
                print(
                    f"| {name} | {r['first_step_s']:.1f} | {r['main']['rss'] / MIB:.0f} | {r['main']['uss'] / MIB:.0f} "
                    f"| {workers_rss} | {workers_uss} |"
                )


if __name__ == "__main__":
    main()
