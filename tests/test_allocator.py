"""KeepFreedMemory: a freed block of a step's logits' size is reused, not page-faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest

from minibert.machinery import allocator

# In a fresh process (malloc's settings are process-wide): the minor page faults of writing a
# 192 MiB block from malloc, freed and asked for again, as a step's logits are.
REFILL_FAULTS = """
import ctypes, resource, sys
from minibert.machinery.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
size, faults = 192 * 2**20, []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def refill_faults(mode: str) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", REFILL_FAULTS, mode], capture_output=True, text=True, check=True
    )
    return [int(n) for n in result.stdout.split()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_block_is_reused_instead_of_faulted_in_again():
    pages = 192 * 2**20 // 4096  # 49,152 pages of 4 KiB
    assert all(n >= pages for n in refill_faults("default"))  # glibc's default: fresh pages every time
    first, *again = refill_faults("keep")
    assert first > pages // 2 and again == [0, 0, 0]  # kept: the same pages again


def test_cpu_runs_keep_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    allocator.KeepFreedMemory().setup(trainer, None, "fit")
    assert calls == [True]
