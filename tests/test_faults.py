"""A real ``lightning fit`` killed, stopped and resumed: nothing lost but the steps since the last checkpoint.

And every signal at every moment of a run, and every failure that is not a bug (memory, a killed
DataLoader worker, a full disk), end in one line that says what is saved and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import termios
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import global_step, script, wait_for_last_checkpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minibert.cli import main
from minibert.machinery.checkpoint import AtomicCheckpointIO, check_checkpoint_file
from minibert.machinery.failures import explain
from minibert.module import MiniBert
from minibert.windows import TokenWindows

pytestmark = pytest.mark.slow  # runs are started, signalled, killed and resumed

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


# --- signals at every moment of a run ----------------------------------------------------------


class SignalAt(L.Callback):
    """Sends this process a signal when Lightning calls ``hook``, as a person or the system would."""

    def __init__(self, hook: str, signal_name: str) -> None:
        self.hook, self.number = hook, signal.Signals[signal_name]
        setattr(self, hook, self.send)

    def send(self, *args, **kwargs) -> None:
        os.kill(os.getpid(), self.number)


def fit_in(workdir: Path, *args: str) -> None:
    """``lightning fit`` in-process, in ``workdir``."""
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        main([*FIT, *args])
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    ("hook", "name"), [("setup", "SIGINT"), ("on_sanity_check_start", "SIGTERM"), ("on_fit_start", "SIGHUP")]
)
def test_a_signal_before_the_first_step_stops_at_once_and_says_so(workdir, capsys, hook, name):
    handler_before = signal.getsignal(signal.SIGINT)  # ignored where pytest runs in the background
    with pytest.raises(SystemExit) as stop:
        fit_in(workdir, "--trainer.callbacks+=test_faults.SignalAt", f"--trainer.callbacks.hook={hook}",
               f"--trainer.callbacks.signal_name={name}")  # fmt: skip
    assert stop.value.code == 128 + signal.Signals[name]
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"stopped: {name} received before training started: nothing was trained, and no file already written "
        "was changed; run the same command again"
    )
    assert list((workdir / "checkpoints").glob("*.ckpt")) == []
    assert signal.getsignal(signal.SIGINT) is handler_before  # the command gave its signals back


def test_ctrl_c_after_the_last_step_lets_the_run_end_whole(workdir, capsys):
    with pytest.raises(SystemExit) as stop:
        fit_in(workdir, "--trainer.callbacks+=test_faults.SignalAt", "--trainer.callbacks.hook=on_train_end",
               "--trainer.callbacks.signal_name=SIGINT")  # fmt: skip
    assert stop.value.code == 128 + signal.SIGINT
    last = workdir / "checkpoints" / "last.ckpt"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped: SIGINT received after the run's last step: the run is complete; its newest checkpoint is {last} "
        f"(step {MAX_STEPS})"
    )
    assert global_step(last) == MAX_STEPS


# Ctrl-C in the seconds that importing torch and Lightning takes, before main() runs.
CTRL_C_WHILE_IMPORTING = """
import builtins, os, signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even where pytest runs in the background
real_import = builtins.__import__

def import_then_ctrl_c(name, *args, **kwargs):
    if name == "lightning.pytorch.cli":
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)

builtins.__import__ = import_then_ctrl_c
from minibert.cli import main
main()
"""


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING, "fit", "--config", "configs/tiny.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 128 + signal.SIGINT
    assert result.stderr == "stopped: interrupted while starting; nothing was done\n"


def test_sighup_saves_after_the_step_like_sigterm(workdir):
    run = start(workdir)
    wait_for_last_checkpoint(run, workdir / "checkpoints", after_step=0)
    run.send_signal(signal.SIGHUP)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGHUP, stderr[-3000:]
    stopped_at = global_step(workdir / "checkpoints" / "last.ckpt")
    assert stderr.strip().splitlines()[-1] == (
        f"stopped: SIGHUP received: stopped after step {stopped_at} and saved {workdir / 'checkpoints' / 'last.ckpt'}; "
        "continue with the same command and --ckpt_path last"
    )


def test_closing_the_terminal_saves_the_run(workdir):
    """The run's terminal closes (SIGHUP to it and its DataLoader workers): it saves, then exits 129."""
    master, terminal = os.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = ("--data.num_workers", "2", "--trainer.enable_progress_bar", "true")
    run = subprocess.Popen(
        [script("lightning"), *FIT, *args],
        cwd=workdir,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    os.set_blocking(master, False)

    def show_what_a_terminal_shows():  # unread, the progress bar would fill the terminal and block the run
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(master, 65536)

    saved = wait_for_last_checkpoint(
        run, workdir / "checkpoints", after_step=0, while_waiting=show_what_a_terminal_shows
    )
    os.close(master)  # the terminal is gone
    assert run.wait(timeout=120) == 128 + signal.SIGHUP
    assert global_step(workdir / "checkpoints" / "last.ckpt") >= saved
    for path in (workdir / "checkpoints").glob("*.ckpt"):
        check_checkpoint_file(path)


# --- failures that are one line: memory, a killed worker, a full disk ---------------------------

FAILURE_FIT = ("--trainer.max_steps", "30", "--trainer.num_sanity_val_steps", "0")


def kill_worker_after_step_10(windows, index):
    """TokenWindows.__getitem__ of a DataLoader worker that is killed (as the system's OOM killer would) after step 10."""
    if os.getpid() != MAIN_PID and Path("checkpoints/step=10.ckpt").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return GET_WINDOW(windows, index)


MAIN_PID, GET_WINDOW = os.getpid(), TokenWindows.__getitem__


def test_the_dataloader_message_names_one_worker_or_several():
    """PyTorch's two reports of dead workers, as minibert words them (no trainer: before training)."""
    one = explain(RuntimeError("DataLoader worker (pid 5120) is killed by signal: Killed. "), None, False)
    several = explain(
        RuntimeError("DataLoader worker (pid(s) 12588, 12589) exited unexpectedly"), None, False
    )
    assert str(one).startswith(
        "a DataLoader worker (process 5120) was killed (signal: Killed) before training"
    )
    assert str(several).startswith(
        "DataLoader workers (processes 12588, 12589) exited unexpectedly before training"
    )


def test_a_killed_dataloader_worker_is_one_line(workdir, monkeypatch, capsys):
    monkeypatch.setattr(TokenWindows, "__getitem__", kill_worker_after_step_10)
    with pytest.raises(SystemExit) as stop:
        fit_in(workdir, *FAILURE_FIT, "--data.num_workers", "2")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # PyTorch reports the death in one of two ways, whichever of its checks sees it first: its
    # SIGCHLD handler ("is killed by signal: Killed") or its wait for the next batch, which
    # names every dead worker ("pid(s) 12588, 12589 exited unexpectedly"; both workers die here).
    assert re.fullmatch(
        rf"error: (a DataLoader worker \(process \d+\) (was killed \(signal: Killed\)|exited unexpectedly)"
        rf"|DataLoader workers \(processes \d+(, \d+)+\) exited unexpectedly) at step \d+, "
        rf"most often by the system for want "
        rf"of memory; the newest checkpoint, {re.escape(str(workdir))}/checkpoints/\S+.ckpt \(step 10\), is whole: "
        r"continue with the same command and --ckpt_path last, with fewer --data.num_workers \(0 reads the data in the "
        r"main process\)",
        err.strip().splitlines()[-1],
    ), err[-2000:]


def out_of_memory_at_step_12(module, batch, batch_idx):
    if module.trainer.global_step == 12:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    return TRAINING_STEP(module, batch, batch_idx)


TRAINING_STEP = MiniBert.training_step


def test_out_of_memory_in_a_step_is_one_line(workdir, monkeypatch, capsys):
    monkeypatch.setattr(MiniBert, "training_step", out_of_memory_at_step_12)
    with pytest.raises(SystemExit) as stop:
        fit_in(workdir, *FAILURE_FIT)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: out of memory at step 12 (one allocation of 2.00 GiB); the newest checkpoint, "
        f"{workdir / 'checkpoints' / 'last.ckpt'} (step 10), is whole: continue with the same command and --ckpt_path "
        "last where more memory is free, or start a new run with a smaller data.batch_size or model"
    )


DISK = {"full_from_step": None}


class DiskFullFrom(L.Callback):
    """From a step on, TensorBoard's writes fail with ENOSPC (see full_log_disk)."""

    def __init__(self, step: int) -> None:
        DISK["full_from_step"] = step
        DISK["full"] = step == 0

    def on_train_batch_end(self, trainer, *args) -> None:
        DISK["full"] = trainer.global_step >= DISK["full_from_step"]


def full_log_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorBoard writes its event files through gfile: make them fail when DISK says so, after part of a write."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    for name in ("write", "append"):
        real = getattr(gfile.LocalFileSystem, name)

        def fails_when_full(self, filename, file_content, *args, _real=real, **kwargs):
            if DISK.get("full"):
                _real(self, filename, file_content[: len(file_content) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device")
            return _real(self, filename, file_content, *args, **kwargs)

        monkeypatch.setattr(gfile.LocalFileSystem, name, fails_when_full)


@pytest.mark.parametrize("step", [0, 12])
def test_a_full_log_disk_is_one_line_and_the_checkpoints_stay_whole(workdir, monkeypatch, capsys, step):
    full_log_disk(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        fit_in(
            workdir,
            *FAILURE_FIT,
            "--trainer.callbacks+=test_faults.DiskFullFrom",
            f"--trainer.callbacks.step={step}",
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err
    last = workdir / "checkpoints" / "last.ckpt"
    if step == 0:
        expected = (
            "error: no space left on device before training started; no checkpoint was saved, and no file already "
            "written was changed: free some space, then run the same command again"
        )
    else:
        stopped = re.search(r"at step (\d+);", err)[1]
        assert 12 <= int(stopped) <= 20
        expected = (
            f"error: no space left on device at step {stopped}; the newest checkpoint, {last} (step 10), is whole: "
            "free some space, then continue with the same command and --ckpt_path last"
        )
        assert global_step(last) == 10
    assert err.strip().splitlines()[-1] == expected
    for path in (workdir / "checkpoints").glob("*.ckpt"):
        check_checkpoint_file(path)
