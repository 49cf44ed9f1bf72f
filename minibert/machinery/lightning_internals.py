"""Every use of a private part of Lightning, each behind one small function that says why it is needed.

Exact resume, a safe stop, the run's progress bar and the GPU's step need a few things Lightning
has no public call for: its loop's batch counters and their place in a checkpoint, its logger
connector, a logger's version before first use, its test for a local path, its progress bar's
refresh rule, the text of one of its warnings, and whether it logs the training step now running.
They are used nowhere else, so a Lightning release that changes one breaks one function here,
and ``tests/test_lightning_internals.py`` says which.
"""

from __future__ import annotations

import re
import warnings

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger

# The start of the warning Lightning's training epoch loop gives on a resume from the middle of an epoch.
MID_EPOCH_RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


def batches_trained_in_epoch(trainer: L.Trainer) -> int:
    """How many of the epoch's batches finished their training step, the one being checkpointed included.

    Where a resumed run picks up the epoch. Lightning keeps the count in its training loop's
    progress, which it saves in its own checkpoint but shows through no public property. It
    resets the count only when the next epoch starts: a checkpoint written after an epoch's end
    (``last.ckpt`` at the end of a run bounded by epochs) still holds the finished epoch's count,
    so an epoch that has not started counts 0.
    """
    if between_epochs(trainer):
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def between_epochs(trainer: L.Trainer) -> bool:
    """Whether the epoch ``trainer.current_epoch`` has not started: the previous one ended (at the end of a run)."""
    return trainer.fit_loop.epoch_progress.current.started <= trainer.current_epoch


def start_the_next_epoch_in(checkpoint: dict) -> None:
    """Make a checkpoint written between two epochs resume at the first batch of the next one.

    Lightning resets its training loop's counters of the epoch (batches, scheduler and
    optimiser steps) only when the next epoch starts. In a checkpoint written after an epoch's
    end and before the next (``last.ckpt`` at the end of a run bounded by epochs, written by
    ``SaveFinalStep`` and by Lightning itself), they still count the finished epoch; a run resumed from it, given more epochs,
    would take the next one as already trained and run it with no batch. This resets them
    as the start of an epoch does (``reset_on_run`` of each), in the checkpoint only.
    """
    loop = checkpoint["loops"]["fit_loop"]
    progress = [
        loop["epoch_loop.batch_progress"],
        loop["epoch_loop.scheduler_progress"],
        *loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"].values(),  # step, zero_grad
    ]
    for counters in progress:
        counters["current"] = dict.fromkeys(counters["current"], 0)
    loop["epoch_loop.batch_progress"]["is_last_batch"] = False
    loop["epoch_loop.val_loop.batch_progress"]["total"] = dict.fromkeys(
        loop["epoch_loop.val_loop.batch_progress"]["total"], 0
    )


def inside_train_batch_end(trainer: L.Trainer) -> bool:
    """Whether the current batch is trained but not yet done: Lightning is running ``on_train_batch_end``.

    Lightning counts a batch ``processed`` after its training step and ``completed`` after the
    ``on_train_batch_end`` hooks, where it writes its step checkpoints; it logs the step after both.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return progress.processed > progress.completed


def log_step_metrics_now(trainer: L.Trainer) -> None:
    """Log the current training step's metrics now, and skip Lightning's own logging of them that follows.

    Lightning has no public call for this: its private logger connector logs a step's metrics
    in ``update_train_step_metrics``, called once right after the ``on_train_batch_end`` hooks.
    That call is replaced, for this one step, by one that only puts the method back, so the
    step is logged once, not twice (the step's second checkpoint, ``last.ckpt``, finds it done).
    """
    connector = trainer._logger_connector
    # Already logged, for an earlier checkpoint of this step:
    if "update_train_step_metrics" in vars(connector):
        return
    connector.update_train_step_metrics()

    def skip_once() -> None:
        del connector.update_train_step_metrics  # the class's method again, from the next step on

    connector.update_train_step_metrics = skip_once


def set_version_if_unset(logger: Logger | None, version: int | str) -> None:
    """Make a TensorBoardLogger that has not chosen its ``version_N`` folder yet write into ``version``'s.

    The logger is built by the command line before the checkpoint is read, and a version can only
    be given to its constructor: left unset, it would pick a new folder on first use.
    """
    if isinstance(logger, TensorBoardLogger) and logger._version is None:
        logger._version = version


def is_local_path(path: str) -> bool:
    """Whether ``path`` is on a local disk rather than a remote store (``s3://``), as Lightning decides it."""
    return _is_local_file_protocol(path)


def progress_bar_due(bar: TQDMProgressBar, current: int, total: int | float | None) -> bool:
    """Whether Lightning's bar would redraw at ``current`` of ``total``: every ``refresh_rate`` steps, and at the end.

    :class:`minibert.progress.RunProgressBar` counts steps rather than batches, and redraws by the
    same rule as Lightning's own bar, which keeps it in a private method.
    """
    return bar._should_update(current, total)


def ignore_mid_epoch_resume_warning() -> None:
    """Silence Lightning's warning that a resume from the middle of an epoch is unreliable: here it is exact.

    Lightning looks for a resumable state on the DataLoader and, not finding it there, warns; the
    state is the data module's (see :class:`minibert.machinery.sampler.ResumableEpochs`). The filter
    matches that one message of that one category. ``warnings.filterwarnings`` replaces an equal
    filter rather than adding a second, so calling this on every resume leaves one in place.
    """
    warnings.filterwarnings(
        "ignore", message=re.escape(MID_EPOCH_RESUME_WARNING), category=PossibleUserWarning
    )


def step_metrics_logged(trainer: L.Trainer) -> bool:
    """Whether Lightning logs the training step now running: every ``log_every_n_steps`` steps, or when stopping.

    :class:`minibert.static_step.StaticStep` copies a step's metrics from the GPU to the host only
    then, once an interval rather than several times a step. Lightning decides it by a rule kept
    in its private logger connector, asked here from inside ``training_step``.
    """
    return trainer._logger_connector.should_update_logs
