"""CPU training: keep freed memory for the next step instead of giving it back to the kernel.

glibc's ``malloc`` serves every block above a threshold (at most 32 MB, adjusted as it goes)
with a fresh ``mmap`` and returns it to the kernel on ``free``. A training step over the
vocabulary allocates several such blocks: the logits of the scored positions, their
log-softmax and both gradients (about 100 MB each: base.yaml scores 1,024 positions a step
over a vocabulary of 23,562 words). Every step the kernel then hands out and zeroes those
pages again, one page fault each 4 KiB. Told to keep freed memory (``mallopt``: no ``mmap``
below 1 GiB, no trimming below 1 GiB), ``malloc`` reuses the same pages from one step to the
next. Measured on 2 CPU cores, base.yaml trains 1.20 times faster (docs/benchmarks.md), with
the same numbers; the process keeps its peak memory instead of returning it between steps.

The largest of those blocks, the (N, V) gradient of the logits that ``minibert/fused_loss.py``
keeps while it computes the head's gradients, is also kept by that code itself
(:class:`KeptBuffer`), so that a training loop without the command line's setting (a notebook,
``benchmarks/throughput.py``) does not fault it in afresh at every step either.
"""

from __future__ import annotations

import ctypes
import sys

import lightning as L
import torch
from torch import Tensor

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # 1 GiB: every block a step allocates


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed blocks; False where there is no glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's name; elsewhere an OSError
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))


class KeepFreedMemory(L.Callback):
    """Before a run on the CPU starts, :func:`keep_freed_memory` (GPU memory has its own allocator)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cpu":
            keep_freed_memory()


class KeptBuffer:
    """One block of CPU memory kept from one call to the next, for a large tensor that is only scratch.

    ``take`` returns a view of it, grown (and the old block freed) when a call needs more. The
    caller must not let the view outlive the call: the next call overwrites it. On other devices
    a fresh tensor is returned (a GPU's caching allocator already reuses its blocks).
    """

    def __init__(self) -> None:
        self.block: Tensor | None = None

    def take(self, rows: int, cols: int, like: Tensor) -> Tensor:
        """An uninitialised (rows, cols) tensor of ``like``'s dtype and device."""
        if like.device.type != "cpu":
            return like.new_empty(rows, cols)
        size = rows * cols
        if self.block is None or self.block.numel() < size or self.block.dtype != like.dtype:
            self.block = None  # the old block freed before the new one is asked for
            self.block = torch.empty(size, dtype=like.dtype)
        return self.block[:size].view(rows, cols)
