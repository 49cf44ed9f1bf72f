"""Every use of a private part of Lightning, each behind one small function that says why it is needed.

Exact resume, a safe stop, the run's progress bar and the GPU's step need a few things Lightning
has no public call for: the training loader's saved state where Lightning forgets to hand it
over, its loop's counters and their place in a checkpoint (to start the next epoch, and to
count the epochs trained), its logger connector, a logger's version before first use, its test
for a local path, its progress bar's refresh rule, and whether it logs the training step now
running.
They are used nowhere else, so a Lightning release that changes one breaks one function here,
and ``tests/test_lightning_internals.py`` says which.
"""

from __future__ import annotations

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger


def load_training_loader_state(trainer: L.Trainer) -> None:
    """Hand the training loader the state saved in the checkpoint, when Lightning built the loader too early to do it.

    Lightning gives a resumed run's training loader its saved state (``load_state_dict``) only
    when it builds the loader at the start of training. A loader built before the checkpoint is
    read never gets it: ``trainer.estimated_stepping_batches``, which the LightningModule reads in
    ``configure_optimizers`` to size its learning-rate schedule, builds it there in a run
    bounded by epochs (Lightning issue #20550, open in 2.6). The state then waits in the fit
    loop, where no public call reaches it; this runs Lightning's own loading of it. It does
    nothing when Lightning loaded it already, when there is none (a fresh run), and when the
    checkpoint's epoch had ended (a run bounded by epochs then starts the next one whole).
    """
    trainer.fit_loop._load_combined_loader_states()


def start_the_next_epoch_in(checkpoint: dict, trainer: L.Trainer) -> None:
    """If ``checkpoint`` is written between two epochs, make a run resumed from it start the next one at its first batch.

    Lightning resets its training loop's counters of the epoch (batches, scheduler and
    optimiser steps) only when the next epoch starts. In a checkpoint written after an epoch's
    end and before the next (``last.ckpt`` at the end of a run bounded by epochs, written by
    ``SaveFinalStep`` and by Lightning itself), they still count the finished epoch; a run with
    ``max_steps`` set, resumed from it and given more epochs, takes them for the next epoch's,
    and runs that epoch with no batch. This resets them as the start of an epoch does
    (``reset_on_run`` of each), in the checkpoint only. The training loader's state cannot do
    it: it says which batch comes next, not how many Lightning's loop counts as done.

    No public property tells a checkpoint written after an epoch's end from one written in the
    next epoch (``current_epoch`` is the same in both; the epoch's progress is private), and the
    counters exist only in Lightning's own part of the checkpoint.
    """
    if trainer.fit_loop.epoch_progress.current.started > trainer.current_epoch:
        return  # inside an epoch, or at its end (on_train_epoch_end): Lightning resumes those right
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


def epochs_trained(checkpoint: dict) -> int | None:
    """How many epochs a checkpoint's run had trained whole, as Lightning's loop will count them on resume; None if unknown.

    Lightning counts an epoch done (``processed``) at its end. A checkpoint written after an
    epoch's last batch but before its end (a step checkpoint, or ``last.ckpt`` when ``max_steps``
    falls on that batch) still counts it as running, yet a run resumed from it trains none of
    its batches: it only ends that epoch. Such an epoch is counted here, as the loop will once
    resumed. The counters exist only in Lightning's own part of the checkpoint.
    """
    try:
        loop = checkpoint["loops"]["fit_loop"]
        epochs, batches = loop["epoch_progress"]["current"], loop["epoch_loop.batch_progress"]
        after_last_batch = batches["is_last_batch"] and epochs["started"] > epochs["processed"]
        return epochs["processed"] + int(after_last_batch)
    except (KeyError, TypeError):
        return None


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


def step_metrics_logged(trainer: L.Trainer) -> bool:
    """Whether Lightning logs the training step now running: every ``log_every_n_steps`` steps, or when stopping.

    :class:`minibert.static_step.StaticStep` copies a step's metrics from the GPU to the host only
    then, once an interval rather than several times a step. Lightning decides it by a rule kept
    in its private logger connector, asked here from inside ``training_step``.
    """
    return trainer._logger_connector.should_update_logs
