"""Shared fixtures: paths, a command-line runner, and a tiny trained run reused by many tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from minibert.machinery.checkpoint import check_checkpoint_file

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SAMPLE_CORPUS = TEST_DATA / "sample.fr.txt"
SHARED_DATA = REPO.parent / "shared" / "data"
EUROPARL_30K = SHARED_DATA / "europarl" / "europarl30k.fr.txt"


def script(name: str) -> str:
    """The console script installed beside this Python (``lightning`` or ``minibert``)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name) or name


def run_cli(
    *args: str, cwd: Path, command: str = "lightning", check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the installed command line in ``cwd`` and return its result (text output)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [script(command), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def run_step_benchmark(name: str, *options: str, data_dir: Path) -> subprocess.CompletedProcess:
    """``benchmarks/<name>`` (levers.py, placement.py) on a tiny model and the fixture corpus, one warm-up step."""
    tiny = ("--embed-dim", "16", "--num-heads", "2", "--num-layers", "1", "--ff-dim", "32", "--batch-size", "8")  # fmt: skip
    command = [sys.executable, str(REPO / "benchmarks" / name), *options, "--warmup", "1"]
    command += ["--corpus", str(TEST_DATA / "sample.fr.txt"), "--data-dir", str(data_dir), *tiny]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh working directory holding the configs and the fixture corpus, like a clone."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "tests" / "data").mkdir(parents=True)
    shutil.copy(SAMPLE_CORPUS, tmp_path / "tests" / "data")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``lightning fit --config configs/tiny.yaml`` run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("tiny_run")
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "tests" / "data").mkdir(parents=True)
    shutil.copy(SAMPLE_CORPUS, root / "tests" / "data")
    run_cli("fit", "--config", "configs/tiny.yaml", cwd=root)
    return root


def requires_shared(path: Path):
    """Tests on the real corpus run where ../shared exists (CI, developers) and say so elsewhere."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not here (fresh clone without ../shared)")


def global_step(path: Path) -> int:
    """The step a checkpoint file was saved at (checked whole first)."""
    return check_checkpoint_file(path)["global_step"]


def wait_for_last_checkpoint(
    process: subprocess.Popen,
    folder: Path,
    after_step: int,
    timeout: float = 240,
    while_waiting: Callable[[], None] = lambda: None,
) -> int:
    """Wait until ``last.ckpt`` holds a step later than ``after_step``; that step.

    A run's ``step=N.ckpt`` lives only until the next one replaces it, a few milliseconds on a
    fast machine, so waiting for one by name can miss it; ``last.ckpt`` stays."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = folder / "last.ckpt"
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen and stamp is not None:
            seen = stamp
            if (step := global_step(last)) > after_step:
                return step
        if process.poll() is not None:
            stderr = process.communicate()[1] or ""
            raise AssertionError(f"fit ended before a new checkpoint:\n{stderr[-3000:]}")
        while_waiting()
        time.sleep(0.05)
    process.kill()  # before anything reads its output: a run left going would make that wait for its end
    process.wait()
    raise AssertionError("no new checkpoint in time")
