"""One speed lever of minibert, on and off, in one process: base.yaml's step, the two versions alternating.

    python benchmarks/levers.py --lever c_loops                      # bf16-mixed, 40 pairs
    python benchmarks/levers.py --lever kept_buffer --precision 32-true --pairs 20
    python benchmarks/levers.py --lever c_loops --keep-freed-memory  # as lightning fit runs

A shared machine's speed drifts (on this project's 2-core KVM guest the same step took from 154
to 256 ms within an hour), so two runs one after the other compare the hours as much as the
code. Here one model trains with the lever on and off in turn, step after step (the order flips
every pair), and the script prints each version's median step and the median of the paired
differences, which the drift mostly cancels. The levers are the switches of the speed code that
can be turned at run time:

- ``c_loops``: the four C files (``minibert/fused_loss.c``, ``minibert/fast.c``,
  ``minibert/attention.c`` and ``minibert/layer_norm.c``) against the PyTorch code they replace
  (torch.compile's loops for the block loss, compiled dropout factors, attention's explicit
  steps, PyTorch's LayerNorm and the cast after it);
- ``c_block_loss``, ``c_dropout`` (dropout, and the residual additions with it),
  ``c_attention`` and ``c_layer_norm``: each of them alone;
- ``kept_buffer``: the logits' gradient in memory kept from step to step (``KeptBuffer`` in
  ``minibert/machinery/allocator.py``) against a fresh block every step;
- ``tied_gradient``: the word embeddings' gradient added into the head's (``TiedEmbedding`` in
  ``minibert/fast.py``) against autograd's own sum of the two;
- ``clip_in_step``: gradient clipping's scaling done by AdamW's step
  (``minibert/machinery/clipping.py``) against ``clip_grad_norm_``'s own pass.

The model, data and recipe options are ``benchmarks/throughput.py``'s (base.yaml's step by
default). Needs the ``bench`` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from throughput import minibert_step_in_fit_setting, parse_step_script_args

from minibert import fast, fused_loss
from minibert.machinery import clipping
from minibert.machinery.c_library import SwitchedOff


class FreshBlock:
    """:class:`KeptBuffer`'s interface, with a new tensor every call."""

    def take(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_empty(rows, cols)


def switch(module, name: str, off_value: object) -> Callable[[bool], None]:
    """A switch that sets ``module.name`` to its own value (on) or to ``off_value`` (off)."""
    on_value = getattr(module, name)
    return lambda on: setattr(module, name, on_value if on else off_value)


def lever_switches() -> dict[str, Callable[[bool], None]]:
    c_block_loss = switch(fused_loss, "c_library", SwitchedOff())
    c_dropout = switch(fast, "c_library", SwitchedOff())
    c_attention = switch(fast, "attention_library", SwitchedOff())
    c_layer_norm = switch(fast, "layer_norm_library", SwitchedOff())
    return {
        "c_loops": lambda on: (c_block_loss(on), c_dropout(on), c_attention(on), c_layer_norm(on)),
        "c_block_loss": c_block_loss,
        "c_dropout": c_dropout,
        "c_attention": c_attention,
        "c_layer_norm": c_layer_norm,
        "kept_buffer": switch(fused_loss, "logits_gradient", FreshBlock()),
        "tied_gradient": switch(fast.TiedEmbedding, "add_into_head", False),
        "clip_in_step": switch(clipping, "fold_into_step", False),
    }


LEVERS = tuple(lever_switches())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--lever", choices=LEVERS, required=True)
    parser.add_argument("--pairs", type=int, default=40, help="timed steps of each version")
    ours, args = parse_step_script_args(parser, argv)
    step, batches = minibert_step_in_fit_setting(args)
    turn = lever_switches()[ours.lever]
    for on in (True, False):  # builds, compiles and first-shape kernels out of the timing
        turn(on)
        for i in range(args.warmup):
            step(batches[i % len(batches)], i)

    seconds: dict[bool, list[float]] = {True: [], False: []}
    for i in range(ours.pairs):
        for on in (True, False) if i % 2 == 0 else (False, True):
            turn(on)
            start = time.perf_counter()
            step(batches[i % len(batches)], i)
            seconds[on].append(time.perf_counter() - start)

    median = {version: statistics.median(times) * 1e3 for version, times in seconds.items()}
    paired = statistics.median(b - a for a, b in zip(seconds[True], seconds[False])) * 1e3
    print(
        f"lever {ours.lever}, {ours.precision}, {args.threads} threads, {ours.pairs} pairs, mask_prob {args.mask_prob}"
    )
    print("| version | median step ms | fastest ms |")
    print("| --- | ---: | ---: |")
    for name, version in (("off", False), ("on", True)):
        print(f"| {name} | {median[version]:.1f} | {min(seconds[version]) * 1e3:.1f} |")
    ratio = median[False] / median[True]
    print(f"off - on, median of the paired differences: {paired:.1f} ms; off / on: {ratio:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
