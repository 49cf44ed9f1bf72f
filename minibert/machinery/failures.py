"""A run that fails for a known reason ends with one ``error:`` line, not a traceback: what happened, what is saved, what to do.

The reasons: a full disk (checkpoints, logs, caches), a DataLoader worker killed (most often by
the system, for want of memory), a model or a step that does not fit in memory, and a trainer
option that Lightning rejects only once the data is known (``val_check_interval`` larger than an
epoch). Nothing already written is damaged by any of them: every file minibert writes is written
whole or not at all, and the line names the newest checkpoint, from which ``--ckpt_path last``
continues. Any other exception is a bug, and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from minibert.errors import MinibertError
from minibert.machinery.checkpoint import check_checkpoint_file
from minibert.machinery.options import trainer_error
from minibert.machinery.run_folder import checkpoints_in

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_WORKER = re.compile(
    r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) (is killed by signal: \w+|exited unexpectedly)"
)
_ASKED = re.compile(r"[Tt]ried to allocate (\d+ bytes|[\d.]+ ?[KMGTP]i?B)")
_VAL_CHECK = re.compile(
    r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the training batches \((\d+)\)"
)


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and what it was raised from or during, down to the first :class:`MinibertError` (which says it all)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        if isinstance(error, MinibertError):
            break
        error = error.__cause__ or error.__context__
    return chain


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


def is_out_of_memory(error: BaseException) -> bool:
    message = str(error)
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in message or "out of memory" in message)
    )


def explain(error: BaseException, trainer: L.Trainer | None, training_started: bool) -> MinibertError | None:
    """One line for a failure of a known kind, or None: what happened first (a failure while cleaning up after it is not the news).

    Args:
        error: what the command raised.
        trainer: the run's trainer, None if the failure came before it was built.
        training_started: whether the run had begun its first step.
    """
    for cause in reversed(causes(error)):
        if isinstance(cause, MinibertError):
            return cause
        if is_disk_full(cause):
            return MinibertError(
                f"no space left on device{_writing(cause)}{_when(trainer, training_started)}; {_saved(trainer)}: "
                f"free some space, then {_how_to_go_on(trainer)}"
            )
        if match := _WORKER.search(str(cause)):
            pids = match[1].strip()
            who = (
                f"DataLoader workers (processes {pids})"
                if "," in pids
                else f"a DataLoader worker (process {pids})"
            )
            return MinibertError(
                f"{who} {_ended(match[2])}"
                f"{_when(trainer, training_started)}, most often by the system for want of memory; {_saved(trainer)}: "
                f"{_how_to_go_on(trainer)}, with fewer --data.num_workers (0 reads the data in the main process)"
            )
        if is_out_of_memory(cause):
            asked = _ASKED.search(str(cause))
            asked = f" (one allocation of {_size(asked[1])})" if asked else ""
            if trainer is None:
                return MinibertError(
                    f"out of memory while building the model{asked}: nothing was written; choose a smaller model "
                    "(model.embed_dim, model.ff_dim, model.num_layers, data.vocab_size) and run again"
                )
            return MinibertError(
                f"out of memory{_when(trainer, training_started)}{asked}; {_saved(trainer)}: {_how_to_go_on(trainer)} "
                "where more memory is free, or start a new run with a smaller data.batch_size or model"
            )
        if option_error := _fit_option_error(cause):
            return option_error
    return None


def _ended(how: str) -> str:
    """PyTorch's "is killed by signal: Killed." as "was killed (signal: Killed)"."""
    if how.startswith("is killed by signal: "):
        return f"was killed (signal: {how.removeprefix('is killed by signal: ')})"
    return how


def _size(asked: str) -> str:
    """PyTorch's "4800000000 bytes" as "4.8 GB"; its "2.00 GiB" as it is."""
    if not asked.endswith(" bytes"):
        return asked
    size = int(asked.split()[0])
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return asked


def _fit_option_error(error: BaseException) -> MinibertError | None:
    """A trainer option that Lightning checks only once the training data is known, as one line."""
    if match := _VAL_CHECK.search(str(error)):
        asked, batches = match.groups()
        return MinibertError(
            f"trainer.val_check_interval={asked} is more than the {batches} training batches of an epoch; nothing was "
            f"trained: give at most {batches} (or a share of the epoch, such as 0.5), or count steps across epochs "
            "with --trainer.check_val_every_n_epoch null"
        )
    if isinstance(error, MisconfigurationException):
        return trainer_error(error, "fit")
    return None


def _writing(error: OSError) -> str:
    return f" (writing {error.filename})" if error.filename else ""


def _when(trainer: L.Trainer | None, training_started: bool) -> str:
    if trainer is None or not training_started:
        return " before training started"
    return f" at step {trainer.global_step}"


def newest_checkpoint(trainer: L.Trainer | None) -> tuple[Path, int] | None:
    """The newest whole checkpoint of the run's checkpoint folders, and its step."""
    folders = {
        Path(cb.dirpath)
        for cb in getattr(trainer, "checkpoint_callbacks", [])
        if getattr(cb, "dirpath", None)
    }
    for path in sorted((p for f in folders for p in checkpoints_in(f)), key=lambda p: -p.stat().st_mtime_ns):
        try:
            return path, check_checkpoint_file(path).get("global_step", 0)
        except MinibertError:
            continue
    return None


def _saved(trainer: L.Trainer | None) -> str:
    newest = newest_checkpoint(trainer)
    if newest is None:
        return "no checkpoint was saved, and no file already written was changed"
    path, step = newest
    return f"the newest checkpoint, {path} (step {step}), is whole"


def _how_to_go_on(trainer: L.Trainer | None) -> str:
    if newest_checkpoint(trainer) is None:
        return "run the same command again"
    return "continue with the same command and --ckpt_path last"


def _thread_failed(arguments: threading.ExceptHookArgs) -> None:
    if not is_disk_full(arguments.exc_value):
        threading.__excepthook__(arguments)


def quiet_threads_on_a_full_disk() -> None:
    """A thread that fails on a full disk (TensorBoard's writer) says nothing: the command says it, once, in one line."""
    threading.excepthook = _thread_failed
