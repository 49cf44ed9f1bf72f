"""A checkpoint folder holds one run: a second run is refused while the first trains, a new run never replaces
an old one unasked, ``last`` is the newest whole checkpoint, and what killed processes left is cleaned up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, global_step, run_cli, script, wait_for_last_checkpoint

from minibert.cli import main
from minibert.errors import MinibertError
from minibert.machinery.files import atomic_write, host, owner, remove_stale_temporaries
from minibert.machinery.run_folder import RunLock

pytestmark = pytest.mark.slow  # runs are started, killed and resumed

FIT = ["fit", "--config", "configs/tiny.yaml", "--trainer.max_epochs", "-1"]


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- the lock ----------------------------------------------------------------------------------


def test_a_second_lock_on_a_folder_is_refused_with_its_holder(tmp_path):
    first = RunLock(tmp_path / "checkpoints")
    first.acquire()
    try:
        with pytest.raises(MinibertError, match=rf"is in use by another run \(process {os.getpid()}@"):
            RunLock(tmp_path / "checkpoints").acquire()
    finally:
        first.release()
    second = RunLock(tmp_path / "checkpoints")  # free again
    second.acquire()
    second.release()
    assert not (tmp_path / "checkpoints").exists()  # made for the lock, and nothing was written into it


HOLD_THE_LOCK = """
import sys, time
from minibert.machinery.run_folder import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_the_lock_of_a_killed_process_blocks_nothing(tmp_path):
    """kill -9 (or a reboot) leaves the .lock file, but not the lock: the next run takes it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(MinibertError, match=f"process {holder.pid}@"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    assert (tmp_path / ".lock").exists()
    started = time.monotonic()
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()
    assert time.monotonic() - started < 2


def test_two_runs_in_one_folder_the_second_is_refused_and_the_first_is_whole(workdir):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(
        [script("lightning"), *FIT, "--trainer.max_steps", "100000"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved = wait_for_last_checkpoint(first, workdir / "checkpoints", after_step=0)
    second = run_cli(*FIT, "--trainer.max_steps", "100000", cwd=workdir, check=False)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert (
        second.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: checkpoint folder {workdir / 'checkpoints'} is in use by another run (process {first.pid}@{host()}"
        )
    )
    assert first.poll() is None  # the first run went on, and stops when asked, saving
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert global_step(workdir / "checkpoints" / "last.ckpt") > saved
    assert not (workdir / "checkpoints" / ".lock").exists()


# --- a new run in a folder that holds one ----------------------------------------------------


def test_a_new_run_never_replaces_a_run_unasked(tmp_path, monkeypatch):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".gitkeep").touch()  # as in a fresh clone: an empty folder
    monkeypatch.chdir(tmp_path)
    sample = ["--data.corpus", str(REPO / "tests" / "data" / "sample.fr.txt")]
    main([*FIT, *sample, "--trainer.max_steps", "12"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.ckpt")}

    with pytest.raises(SystemExit) as refused:
        main([*FIT, *sample, "--trainer.max_steps", "12"])
    assert refused.value.code == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.ckpt")} == before

    # --overwrite true: the old checkpoints go when training starts, not before (a bad option deletes nothing).
    with pytest.raises(SystemExit):
        main(
            [*FIT, *sample, "--trainer.max_steps", "12", "--overwrite", "true", "--data.batch_size", "100000"]
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").glob("*.ckpt")} == before
    main([*FIT, *sample, "--trainer.max_steps", "5", "--overwrite", "true"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == [
        "epoch=0-step=5.ckpt",
        "last.ckpt",
    ]
    assert global_step(tmp_path / "checkpoints" / "last.ckpt") == 5
    # A config saved by that run starts no overwrite of its own.
    newest = max((tmp_path / "lightning_logs").iterdir(), key=lambda p: int(p.name.removeprefix("version_")))
    assert "overwrite: false" in (newest / "config.yaml").read_text()


# --- last: the newest whole checkpoint ---------------------------------------------------------

# In a fresh Python: the process writes half of its first last.ckpt, then is killed (kill -9).
KILLED_WRITING_LAST = """
import os, signal, sys
import torch
from minibert.cli import main
from minibert.machinery.checkpoint import AtomicCheckpointIO

write = AtomicCheckpointIO.save_checkpoint

def half_then_die(obj, file, **kwargs):
    file.write(b"PK\\x03\\x04 half a checkpoint")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def write_or_die(self, checkpoint, path, storage_options=None):
    if os.path.basename(path) == "last.ckpt":
        torch.save = half_then_die
    write(self, checkpoint, path, storage_options)

AtomicCheckpointIO.save_checkpoint = write_or_die
main(sys.argv[1:])
"""


def test_killed_while_writing_the_first_last_ckpt_resumes_from_the_step_checkpoint(workdir, monkeypatch):
    args = [*FIT, "--trainer.max_steps", "14"]
    killed = subprocess.run(
        [sys.executable, "-c", f"print(__import__('os').getpid(), flush=True)\n{KILLED_WRITING_LAST}", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        f".last.ckpt.{killed_pid(killed)}.tmp",
        ".lock",
        "step=10.ckpt",
    ]

    monkeypatch.chdir(workdir)
    main([*args, "--ckpt_path", "last"])
    assert global_step(checkpoints / "last.ckpt") == 14
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "epoch=0-step=14.ckpt",
        "last.ckpt",
        "step=10.ckpt",
    ]
    config = (workdir / "lightning_logs" / "version_0" / "config.resumed-at-step-10.yaml").read_text()
    assert "ckpt_path: last" in config


def killed_pid(result: subprocess.CompletedProcess) -> str:
    """``PID@HOST`` of a process that printed its PID first."""
    return f"{result.stdout.split()[0]}@{host()}"


def test_last_passes_over_a_damaged_newest_checkpoint(tiny_run, tmp_path, monkeypatch, capsys):
    for name in ("configs", "tests", "data", "lightning_logs"):
        shutil.copytree(tiny_run / name, tmp_path / name)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy2(tiny_run / "checkpoints" / "step=80.ckpt", tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short by a copy")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # step 80 of 84: the run's max_steps is below
        main(["fit", "--config", "configs/tiny.yaml", "--trainer.max_steps", "50", "--ckpt_path", "last"])
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: nothing to train: the run in {tmp_path / 'checkpoints' / 'step=80.ckpt'} is at step 80"
        )
    )


def test_a_run_ending_on_a_validation_step_has_one_last_ckpt(workdir):
    """quick.yaml's recipe: a checkpoint at every validation, the last step one of them."""
    config = workdir / "every_20.yaml"
    config.write_text(
        "trainer:\n  val_check_interval: 20\n  check_val_every_n_epoch: null\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {dirpath: checkpoints, save_last: true}\n"
    )
    run_cli(*FIT, "--config", str(config), "--trainer.max_steps", "40", cwd=workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").glob("last*")) == ["last.ckpt"]
    run_cli(*FIT, "--config", str(config), "--trainer.max_steps", "60", "--ckpt_path", "last", cwd=workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert global_step(workdir / "checkpoints" / "last.ckpt") == 60


def test_every_config_keeps_one_last_ckpt():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert text.count("save_last: true") == text.count("enable_version_counter: false"), path.name


# --- what killed processes left --------------------------------------------------------------


def test_temporaries_of_dead_processes_go_and_those_of_live_ones_stay(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    leftovers = [
        f".last.ckpt.{dead}.tmp",  # an older version's name: the PID only
        f".last.ckpt.{dead}@{host()}.tmp",
        f".vocab.json.{dead}@{host()}.tmp",
    ]
    kept = [
        f".last.ckpt.{alive}@{host()}.tmp",  # a process at work
        f".last.ckpt.{dead}@another-machine.tmp",  # a disk shared with another machine: not ours to judge
        ".gitkeep",
        "last.ckpt",
        "notes.1234.txt",
    ]
    for name in leftovers + kept:
        (tmp_path / name).write_text("x")
    cache = tmp_path / "cache"
    (cache / f"corpus.txt-abc.tmp-{dead}@{host()}-x1y2z3").mkdir(parents=True)
    (cache / f"corpus.txt-abc.tmp-{dead}@{host()}-x1y2z3" / f".train_tokens.npy.{dead}@{host()}.tmp").touch()
    (cache / f"corpus.txt-abc.damaged-{dead}").mkdir()
    (cache / f"corpus.txt-abc.tmp-{alive}@{host()}-k9").mkdir()
    old = cache / "corpus.txt-def.tmp-q8w7e6r5"  # an older version's: no owner, untouched for an hour
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (cache / "corpus.txt-ghi.tmp-a1b2c3d4").mkdir()  # no owner, just made: may be at work
    removed = remove_stale_temporaries(tmp_path) + remove_stale_temporaries(cache)
    assert sorted(p.name for p in removed) == sorted(
        [*leftovers, f"corpus.txt-abc.tmp-{dead}@{host()}-x1y2z3", f"corpus.txt-abc.damaged-{dead}", old.name]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "cache"])
    assert sorted(p.name for p in cache.iterdir()) == [
        f"corpus.txt-abc.tmp-{alive}@{host()}-k9",
        "corpus.txt-ghi.tmp-a1b2c3d4",
    ]


def test_atomic_writes_name_their_writer(tmp_path):
    with atomic_write(tmp_path / "a.txt") as file:
        assert Path(file.name).name == f".a.txt.{owner()}.tmp"
        file.write("a")
    assert owner() == f"{os.getpid()}@{host()}" and all(c.isalnum() or c == "-" for c in host())


def test_a_run_removes_what_a_killed_run_left(tiny_run, tmp_path, monkeypatch):
    for name in ("configs", "tests", "data", "checkpoints", "lightning_logs"):
        shutil.copytree(tiny_run / name, tmp_path / name)
    dead = dead_pid()
    leftovers = [
        tmp_path / "checkpoints" / f".last.ckpt.{dead}.tmp",
        tmp_path
        / "lightning_logs"
        / "version_0"
        / "projector"
        / "epoch_1"
        / f".vectors.tsv.{dead}@{host()}.tmp",
        tmp_path / "data" / f".europarl-v7.fr-en.fr.{dead}@{host()}.tmp",
        tmp_path / "data" / "cache" / f"sample.fr.txt-0123.tmp-{dead}@{host()}-abcd",
    ]
    for path in leftovers:
        path.write_text("half") if path.suffix == ".tmp" else path.mkdir()
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "configs/tiny.yaml", "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert [path for path in leftovers if path.exists()] == []
    assert global_step(tmp_path / "checkpoints" / "last.ckpt") == 126  # the third epoch trained
