"""benchmarks/throughput.py: the products of a step, found by the profiler and counted."""

from __future__ import annotations

import torch
from conftest import REPO


def test_products_alone_finds_and_counts_every_product_of_a_step(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import throughput

    x, project = torch.randn(4, 3), torch.randn(5, 2)
    weight, bias = torch.randn(3, 5, requires_grad=True), torch.randn(5, requires_grad=True)

    def step(batch: None, index: int) -> None:
        # forward: addmm (4 x 3 @ 3 x 5) and mm (4 x 5 @ 5 x 2); backward: the addmm's output
        # gradient (4 x 2 @ 2 x 5) and the weight's (3 x 4 @ 4 x 5); the bias's is a sum.
        (torch.addmm(bias, x, weight) @ project).sum().backward()

    seconds, flops, count = throughput.products_alone(step, [None], "cpu", repeats=1)
    assert count == 4
    assert flops == 2 * (4 * 3 * 5 + 4 * 5 * 2 + 4 * 2 * 5 + 3 * 4 * 5)
    assert seconds > 0


def test_the_cores_round_trip_is_measured_or_refused(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import ctypes
    import os

    import throughput

    nanoseconds = throughput.core_round_trip_ns(rounds=20_000)
    if len(os.sched_getaffinity(0)) >= 2:
        assert 1 < nanoseconds < 100_000  # a cache line between two cores: tens to hundreds of ns
    else:
        assert nanoseconds is None
    round_trip = throughput.CORE_LATENCY.get().core_round_trip_ns
    round_trip.restype = ctypes.c_double
    assert round_trip(0, 1023, ctypes.c_long(10)) == -1  # no such core: refused, not hung
    assert throughput.round_trip().endswith((" ns", "not measured"))
