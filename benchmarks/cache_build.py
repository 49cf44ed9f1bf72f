"""Time and peak memory of encoding a corpus into the cache (``build_cache`` in ``minibert/data.py``).

    python benchmarks/cache_build.py data/europarl-v7.fr-en.fr --max_sentences 500000

Builds into a fresh temporary directory (nothing reused), then prints ``build_s=`` (wall
clock), ``cpu_s=`` (this process's CPU time: steadier on a busy machine) and ``peak_rss_mb=``
(the whole process: Python, numpy and the build).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from minibert.encode import EncodingSettings, build_cache
from minibert.machinery.cache import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--vocab_size", type=int, default=40_003)
    parser.add_argument("--max_sentences", type=int, default=None)
    args = parser.parse_args()
    settings = EncodingSettings(
        args.vocab_size, min_freq=1, max_sentences=args.max_sentences, val_fraction=0.05, seed=0
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp) / "cache"
        start, cpu_start = time.perf_counter(), time.process_time()
        build_cache(args.corpus, settings, cache_dir)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        tokens, offsets = load_split(cache_dir, "train")
        print(f"train_sentences={len(offsets) - 1} train_tokens={len(tokens)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"rss_before_build_mb={rss_before:.0f}")
    print(f"build_s={elapsed:.1f} cpu_s={cpu:.1f} peak_rss_mb={peak:.0f}")


if __name__ == "__main__":
    main()
