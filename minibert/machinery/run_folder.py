"""A checkpoint folder holds one run: locked while that run trains, and never taken over by a new run unasked.

Two ``fit`` commands started in the same folder would write the same ``checkpoints/``, one run's
files replacing the other's. :class:`RunLock` lets one run at a time train there: the second one
stops at once and says which process holds the folder. The lock is the operating system's
(``flock``) on a hidden ``.lock`` file: it goes with its process, so a run killed with ``kill -9``,
or a machine that rebooted, leaves nothing that blocks the next run.

A new run (``fit`` without ``--ckpt_path``) in a folder that holds a run's checkpoints would
replace them: :class:`NewRunGuard` refuses, and says how to continue that run or to replace it
(``--overwrite true``, like Hugging Face's ``overwrite_output_dir``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from minibert.errors import MinibertError
from minibert.machinery.files import host, is_running, owner

try:
    import fcntl
except ImportError:  # Windows: no lock, the folder is not guarded
    fcntl = None

LOCK_FILE = ".lock"
ORPHANS_WAIT = 10.0  # seconds to wait for a dead run's DataLoader workers, which share its lock, to exit


class RunLock:
    """The lock of a run's checkpoint folder, held from before training starts until the command ends.

    Args:
        folder: the checkpoint folder (created if missing).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._file = None
        self._made: list[Path] = []

    def acquire(self) -> None:
        """Take the lock, or say in one line which run holds it."""
        if fcntl is None:
            return
        # Folders made here go again with the lock if the run wrote nothing into them.
        self._made = [path for path in (self.folder, *self.folder.parents) if not path.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + ORPHANS_WAIT
        while self._file is None:
            file = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip()
                file.close()
                pid, _, rest = holder.partition(" ")
                # A run killed with kill -9 can leave its DataLoader workers for a few seconds, holding its lock.
                if not holder_is_running(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise MinibertError(
                    f"checkpoint folder {self.folder} is in use by another run (process {pid or '?'}{rest and ', ' + rest}): "
                    "two runs in one folder would replace each other's checkpoints; wait for it to end, or stop it, "
                    "then run this command again"
                ) from None
            try:
                same_file = os.fstat(file.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # its holder removed it as we opened it: try the new one
                file.close()
                continue
            file.seek(0)
            file.truncate()
            file.write(f"{owner()} started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
            file.flush()
            self._file = file

    def release(self) -> None:
        """Remove the lock file and let the lock go (the process's end lets it go too, however it ends)."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None
            for folder in self._made:
                try:
                    folder.rmdir()
                except OSError:  # not empty: the run wrote into it
                    break


def is_first_process() -> bool:
    """Whether this is the first process of a run (the only one, without DDP), which alone writes checkpoints.

    Known before Lightning sets up the processes: from the variables that its launcher, torchrun
    and SLURM give each one (``rank_zero_only.rank``), and the node's rank.
    """
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


def holder_is_running(pid_at_host: str) -> bool:
    """Whether the process named in a lock file (``PID@HOST``) is running; one of another machine is taken to be."""
    pid, _, machine = pid_at_host.partition("@")
    return not pid.isdigit() or (machine not in ("", host())) or is_running(int(pid))


def checkpoints_in(folder: str | Path) -> list[Path]:
    """The checkpoints a folder holds, newest first: its ``*.ckpt`` (hidden files such as ``.gitkeep`` do not count)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("*.ckpt") if not path.name.startswith(".")]
    return sorted(found, key=lambda path: path.stat().st_mtime_ns, reverse=True)


def check_run_options(overwrite: bool, resuming: bool) -> None:
    """``--overwrite true`` starts a new run in place of the old one, ``--ckpt_path`` continues a run: not both."""
    if overwrite and resuming:
        raise MinibertError(
            "--overwrite true starts a new run in place of the old one, --ckpt_path continues a run: give one of them"
        )


class NewRunGuard(L.Callback):
    """A new run (no ``--ckpt_path``) refuses a checkpoint folder that holds a run, or replaces that run on ``--overwrite true``.

    The check comes once the data is read, so that a bad option is said first, and the
    checkpoints of ``--overwrite true`` are deleted only when training starts: a run stopped by
    any error before then has deleted nothing.

    Args:
        folders: the run's checkpoint folders.
        overwrite: ``--overwrite``.
    """

    def __init__(self, folders: list[Path], overwrite: bool) -> None:
        self.folders, self.overwrite = folders, overwrite

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        problem = None if self.overwrite or not trainer.is_global_zero else self.problem()
        problem = trainer.strategy.broadcast(problem)  # every process stops, not the first alone
        if problem:
            raise MinibertError(problem)

    def problem(self) -> str | None:
        """What is wrong with starting a new run in these folders, or None."""
        for folder in self.folders:
            if found := checkpoints_in(folder):
                names = ", ".join(path.name for path in found[:3]) + (", ..." if len(found) > 3 else "")
                return (
                    f"checkpoint folder {folder} already holds a run ({names}): continue it with --ckpt_path last, "
                    "or replace it with --overwrite true (its checkpoints are deleted, its logs kept)"
                )
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.overwrite and trainer.is_global_zero):
            return
        found = [path for folder in self.folders for path in checkpoints_in(folder)]
        for path in found:
            path.unlink()
        if found:
            rank_zero_info(
                f"--overwrite true: deleted the {len(found)} checkpoint(s) of the run held in {self.folders[0]}"
            )
