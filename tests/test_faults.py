"""A real ``lightning fit`` killed, stopped and resumed: nothing lost but the steps since the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minibert.cli import main
from minibert.machinery.checkpoint import AtomicCheckpointIO, check_checkpoint_file

MAX_STEPS = 50  # the tiny config: 34 steps an epoch, a step checkpoint every 10
FIT = [
    "fit",
    "--config",
    "configs/tiny.yaml",
    "--trainer.max_steps",
    str(MAX_STEPS),
    "--trainer.max_epochs",
    "-1",
]


def start(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [script("lightning"), *FIT, *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_last_checkpoint(
    process: subprocess.Popen, folder: Path, after_step: int, timeout: float = 240
) -> int:
    """Wait until ``last.ckpt`` holds a step later than ``after_step``; that step."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = folder / "last.ckpt"
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen and stamp is not None:
            seen = stamp
            if (step := global_step(last)) > after_step:
                return step
        assert process.poll() is None, (
            f"fit ended before a new checkpoint:\n{process.communicate()[1][-3000:]}"
        )
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no new checkpoint in time")


def global_step(path: Path) -> int:
    return check_checkpoint_file(path)["global_step"]


def test_killed_then_stopped_then_resumed_run_reaches_the_end(workdir, monkeypatch):
    checkpoints = workdir / "checkpoints"

    # 1. SIGKILL in the middle of training, once a step checkpoint exists.
    first = start(workdir)
    wait_for_last_checkpoint(first, checkpoints, after_step=0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    for path in checkpoints.glob("*.ckpt"):  # every checkpoint on disk is whole
        check_checkpoint_file(path)
    killed_at = global_step(checkpoints / "last.ckpt")
    assert killed_at >= 10 and killed_at % 10 == 0

    # 2. Resumed from last.ckpt, then SIGTERM: it finishes its step, saves, and says so.
    second = start(workdir, "--ckpt_path", "last")
    wait_for_last_checkpoint(second, checkpoints, after_step=killed_at)
    second.send_signal(signal.SIGTERM)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    stopped_at = global_step(checkpoints / "last.ckpt")
    assert last_line == (
        f"stopped: SIGTERM received: stopped after step {stopped_at} and saved {checkpoints / 'last.ckpt'}; "
        "continue with the same command and --ckpt_path last"
    )
    assert killed_at < stopped_at < MAX_STEPS

    # 3. Resumed again (in-process: the same code without the imports' seconds): it runs to
    # the end, logging into the same TensorBoard folder.
    monkeypatch.chdir(workdir)
    main([*FIT, "--ckpt_path", "last"])
    assert global_step(checkpoints / "last.ckpt") == MAX_STEPS
    logs = workdir / "lightning_logs"
    assert [p.name for p in logs.iterdir()] == ["version_0"]
    # Steps logged twice (after the kill's checkpoint, before the kill) are replaced by the resumed run's.
    steps = [event.step for event in EventAccumulator(str(logs / "version_0")).Reload().Scalars("train/loss")]
    assert sorted(set(steps)) == list(range(MAX_STEPS))
    print(
        f"killed after last.ckpt held step {killed_at}, resumed there; SIGTERM at step {stopped_at}; ended at {MAX_STEPS}"
    )


def test_a_write_that_dies_halfway_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 10}, path)
    before = path.read_bytes()

    def dies_halfway(obj, file, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as a Ctrl-C or a full disk would, in the middle of the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 20}, path)
    assert path.read_bytes() == before and check_checkpoint_file(path)["global_step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left either


def test_checkpoints_get_the_permissions_of_any_new_file(tmp_path):
    """Written through a temporary file, yet readable by whoever could read any other file of the user's."""
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 1}, tmp_path / "last.ckpt")
    (tmp_path / "plain.txt").write_text("a")  # made the ordinary way, through the umask
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


# Run in a fresh Python: the process kills itself the moment the step-10 checkpoint is on disk.
KILLED_AFTER_CHECKPOINT = """
import os, signal, sys
from minibert.cli import main
from minibert.machinery.checkpoint import AtomicCheckpointIO

write = AtomicCheckpointIO.save_checkpoint

def write_then_die(self, checkpoint, path, storage_options=None):
    write(self, checkpoint, path, storage_options)
    if checkpoint["global_step"] == 10:
        os.kill(os.getpid(), signal.SIGKILL)  # no exit handler, no buffer flushed: as kill -9 would

AtomicCheckpointIO.save_checkpoint = write_then_die
main(sys.argv[1:])
"""


def test_a_checkpoint_implies_its_logs(workdir):
    """Killed right after the step-10 checkpoint: the losses of steps 0..9 are already in the event file."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = [*FIT[:3], "--trainer.max_steps", "20"]
    result = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CHECKPOINT, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert global_step(workdir / "checkpoints" / "step=10.ckpt") == 10
    events = EventAccumulator(str(workdir / "lightning_logs" / "version_0")).Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == list(range(10))  # each step once: none missing, none logged twice
