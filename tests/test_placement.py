"""benchmarks/placement.py: base.yaml's step timed in rounds, each followed by the cores' round trip."""

from __future__ import annotations

import os

import pytest
from conftest import run_step_benchmark


@pytest.mark.slow
def test_the_script_times_rounds_and_sorts_them_by_the_round_trip(tmp_path):
    done = run_step_benchmark("placement.py", "--seconds", "0", "--round-steps", "2", data_dir=tmp_path)
    if len(os.sched_getaffinity(0)) < 2:  # nothing to measure: one line, no traceback
        assert done.returncode != 0 and done.stderr.strip().startswith("error: the round trip needs two")
        return
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bf16-mixed, ") and "rounds of 2 steps" in lines[0]
    assert lines[1] == "| seconds | step ms (median of the round) | round trip ns |"
    seconds, step_ms, round_trip_ns = (float(cell) for cell in lines[3].strip("| ").split(" | "))
    assert step_ms > 0 and 1 < round_trip_ns < 100_000
    together, apart = lines[4], lines[5]  # the one round is counted on one side of --near-ns
    assert together.startswith("cores together (round trip under 150 ns): ")
    assert apart.startswith("cores apart (round trip from 150 ns): ")
    assert ("1 rounds" in together) != ("1 rounds" in apart)
