"""CPU training: compute with denormal floats as zeros (flush-to-zero), so that a run does not slow down as it goes.

Some of AdamW's moments shrink geometrically: a feed-forward unit whose ReLU has stopped firing
gets zero gradients, and its two moments are multiplied by beta1 and beta2 at every step until
they fall below float32's smallest normal number (1.2e-38). x86 CPUs compute with such denormal
numbers through microcode, dozens of times slower. At base.yaml's step 6,000 up to a quarter of
some layers' moments were denormal, and AdamW's update of all the moments took twice as long as
with them read as zeros (16 ms against 7 on one thread; docs/benchmarks.md), a cost that grows
as more units fall silent. With the CPU told to read and write them as zeros, an update changes
by less than 1e-30.

The setting belongs to each thread, and a thread copies it from the one that starts it: it is
set before the first operation that starts PyTorch's OpenMP threads, at the start of a command.
"""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Have this thread, and the threads it starts from now on, flush denormal floats to zero.

    False where the CPU has no such mode (PyTorch knows it on x86 with SSE3).
    """
    return torch.set_flush_denormal(True)
