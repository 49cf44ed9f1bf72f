"""base.yaml's step against where the host runs the machine's cores: the two paces of a virtual machine.

    python benchmarks/placement.py --seconds 300 --keep-freed-memory   # bf16-mixed, as lightning fit runs
    python benchmarks/placement.py --precision 32-true --seconds 120

A virtual machine's host may run its cores under one L3 cache or apart, and move them while a run
goes; on this project's 2-core AMD EPYC guest, base.yaml's step took about 165 ms with the cores
together and about 193 ms with them apart (docs/benchmarks.md, "The machine's two paces"). This
script trains base.yaml's step in rounds of ``--round-steps`` steps and, after each round,
measures a cache line's round trip between the first two cores (``benchmarks/core_latency.c``).
It prints a row per round, then the median step with the cores together (a round trip under
``--near-ns``) and apart, and the correlation of the steps with the round trips.

The model, data and recipe options are ``benchmarks/throughput.py``'s (base.yaml's step by
default). Needs the ``bench`` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from throughput import core_round_trip_ns, minibert_step_in_fit_setting, parse_step_script_args


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--seconds", type=float, default=300, help="how long to keep measuring")
    parser.add_argument("--round-steps", type=int, default=20, help="steps timed between two round trips")
    parser.add_argument("--near-ns", type=float, default=150, help="round trips under this: cores together")
    ours, args = parse_step_script_args(parser, argv)
    if core_round_trip_ns(rounds=1_000) is None:
        sys.exit("error: the round trip needs two usable cores and a C compiler (benchmarks/core_latency.c)")
    step, batches = minibert_step_in_fit_setting(args)
    for i in range(args.warmup):
        step(batches[i % len(batches)], i)

    print(
        f"{ours.precision}, {args.threads} threads, rounds of {ours.round_steps} steps, mask_prob {args.mask_prob}"
    )
    print("| seconds | step ms (median of the round) | round trip ns |")
    print("| ---: | ---: | ---: |")
    steps_ms, trips_ns, start = [], [], time.perf_counter()
    while not steps_ms or time.perf_counter() - start < ours.seconds:
        seconds = []
        for i in range(ours.round_steps):
            begin = time.perf_counter()
            step(batches[i % len(batches)], i)
            seconds.append(time.perf_counter() - begin)
        steps_ms.append(statistics.median(seconds) * 1e3)
        trips_ns.append(core_round_trip_ns())
        print(f"| {time.perf_counter() - start:.0f} | {steps_ms[-1]:.1f} | {trips_ns[-1]:.0f} |", flush=True)

    for name, together in (("together", True), ("apart", False)):
        chosen = [ms for ms, ns in zip(steps_ms, trips_ns) if (ns < ours.near_ns) == together]
        median = f"median step {statistics.median(chosen):.1f} ms" if chosen else "no round"
        print(
            f"cores {name} (round trip {'under' if together else 'from'} {ours.near_ns:.0f} ns): {len(chosen)} rounds, {median}"
        )
    if len(steps_ms) > 2 and len(set(steps_ms)) > 1 and len(set(trips_ns)) > 1:
        print(
            f"correlation of the steps with the round trips: {statistics.correlation(steps_ms, trips_ns):.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
