"""Training commands compute with denormal floats as zeros, in every thread (minibert.machinery.denormals)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

# Run in a fresh process: the setting would stay with the test process's threads. The CLI class is
# replaced by a probe, so main() runs up to where training would start; the probe counts the
# denormal numbers that PyTorch's threads see as non-zero (a compare reads them as 0 under the mode).
PROBE = """
import torch
torch.set_num_threads(2)
import minibert.cli as cli

def probe(*args, **kwargs):
    denormal = torch.full((1_000_000,), 1e-40)  # split between the threads
    print(int((denormal != 0).sum()), int((denormal * 1e30 != 0).sum()))

cli.MiniBertCLI = probe
cli.main(["fit"])
"""


def run_probe(code: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.split()]


def test_a_training_command_flushes_denormals_in_every_thread():
    assert run_probe(PROBE) == [0, 0]


def test_the_probe_sees_denormals_without_it():
    without = PROBE.replace('cli.main(["fit"])', "probe()")
    assert run_probe(without) == [1_000_000, 1_000_000]
