"""What a run needs beyond Lightning's own checkpoint to be resumed exactly, and to be stopped safely.

Lightning's checkpoint holds the weights, the optimiser and scheduler, the loops' counters
and the training loader's state (where the epoch's shuffle had got to, see
:class:`minibert.machinery.sampler.ResumableLoader`). Added here:

- the random state, which dropout draws from, and the TensorBoard version folder
  (:class:`ResumeState`, which also hands the loader its state where Lightning misses it);
- a checkpoint when the run is interrupted with Ctrl-C or ``kill`` (:class:`SaveOnInterrupt`),
  and one after the run's last step (:class:`SaveFinalStep`);
- a checkpoint written between two epochs starts the next one at its first batch
  (:class:`NextEpochFromItsStart`).

And a checkpoint implies its logs (:class:`LogsBeforeCheckpoint`): a run killed right after one
resumes from it, so every metric of the steps it holds must already be on disk.

The command line adds these callbacks to every run (see :mod:`minibert.cli`) and, before a
resumed run, finds the checkpoint that ``--ckpt_path`` names (:func:`find_checkpoint`) and logs
into that run's folder (:func:`continue_logging_in`).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from minibert.machinery.lightning_internals import (
    inside_train_batch_end,
    load_training_loader_state,
    log_step_metrics_now,
    set_version_if_unset,
    start_the_next_epoch_in,
)

CHECKPOINT_KEY = "minibert_resume"


class ResumeState(L.Callback):
    """Save the random state and the logger's version in every checkpoint; restore the random state on resume.

    The random state is put back at the start of training, after the sanity-check validation
    and everything else that runs between loading a checkpoint and the first step. So is the
    training loader's state, in the one case where Lightning does not hand it over itself
    (:func:`~minibert.machinery.lightning_internals.load_training_loader_state`).
    """

    def __init__(self) -> None:
        self._random_state: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        random_state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            random_state["cuda"] = torch.cuda.get_rng_state_all()
        version = trainer.logger.version if trainer.logger is not None else None
        checkpoint[CHECKPOINT_KEY] = {"random_state": random_state, "logger_version": version}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._random_state = checkpoint.get(CHECKPOINT_KEY, {}).get("random_state")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        load_training_loader_state(trainer)
        if self._random_state is None:
            return
        torch.set_rng_state(self._random_state["torch"])
        if "cuda" in self._random_state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._random_state["cuda"])
        self._random_state = None


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the command line says where, and exits."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C (SIGINT) or SIGTERM, finish the current training step, save ``last.ckpt`` and stop.

    The signal only raises a flag: stopping between two steps, never inside one, keeps the
    weights, the optimiser and the data position consistent (if the signal comes with the
    run's last step, the run simply ends). Under DDP the flag is shared by all processes at
    every step, so they all stop after the same step.
    """

    def __init__(self) -> None:
        self._received: int | None = None
        self._stop: Interrupted | None = None
        self._previous_handlers: dict[int, Any] = {}

    def _note(self, signal_number: int, frame: Any) -> None:
        self._received = signal_number

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Replaces Lightning's own SIGTERM handler too: this one saves before stopping.
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[number] = signal.signal(number, self._note)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stop is None and trainer.strategy.reduce_boolean_decision(
            self._received is not None, all=False
        ):
            path = save_last(trainer)
            number = self._received or signal.SIGTERM  # another process of a DDP run got it
            self._stop = Interrupted(
                f"{signal.Signals(number).name} received: stopped after step {trainer.global_step} and saved {path}; "
                "continue with the same command and --ckpt_path last",
                number,
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Stopped here rather than just after saving, so that the last step's metrics are logged too.
        if self._stop is not None:
            raise self._stop


class SaveFinalStep(L.Callback):
    """Save ``last.ckpt`` after the run's last step: the one that reaches ``trainer.max_steps``, or the last epoch's.

    ModelCheckpoint saves every N steps or after a validation; when the run's last step is not
    one of those, the last steps would be trained and then lost (Lightning saves ``last.ckpt``
    at the end of training only if it never saved one before). A run with checkpointing turned
    off (``trainer.enable_checkpointing: false``) saves nothing.
    """

    def __init__(self) -> None:
        self._saved_step = -1  # the global step of the newest checkpoint this run wrote

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.checkpoint_callback is not None and 0 < trainer.max_steps <= trainer.global_step:
            save_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run bounded by epochs ends here, after its last epoch's end (see NextEpochFromItsStart).
        if trainer.checkpoint_callback is not None and self._saved_step < trainer.global_step:
            save_last(trainer)


def save_last(trainer: L.Trainer) -> Path:
    """Save ``last.ckpt`` between two steps, where Lightning saves its step checkpoints, so it resumes like one of them."""
    path = checkpoint_dir(trainer) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    trainer.save_checkpoint(path)
    return path


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where the run's ModelCheckpoint writes (``checkpoints/`` in the configs)."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath is not None:
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class NextEpochFromItsStart(L.Callback):
    """A checkpoint written between two epochs resumes at the next epoch's first batch.

    ``last.ckpt`` at the end of a run bounded by epochs is written there; see
    :func:`~minibert.machinery.lightning_internals.start_the_next_epoch_in` for why it needs this.
    """

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == "fit":
            start_the_next_epoch_in(checkpoint, trainer)


class LogsBeforeCheckpoint(L.Callback):
    """Before a checkpoint is written, hand the step's metrics to the loggers and flush them to disk.

    Lightning writes step checkpoints in ``on_train_batch_end``, *before* it logs that step's
    metrics. A run killed between the two (``kill -9``, on a busy machine) resumes after the
    step, whose loss would then never reach TensorBoard: so that step is logged here first.
    """

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.training and inside_train_batch_end(trainer):
            log_step_metrics_now(trainer)
        for logger in trainer.loggers:
            logger.save()  # TensorBoard's flushes its event file


# --- what the command line does before a resumed run starts -------------------------------------


def find_checkpoint(trainer: L.Trainer, ckpt_path: str | None) -> Path | None:
    """The file that ``--ckpt_path`` names: 'last' is the newest last*.ckpt of the run's checkpoint folders.

    None for a fresh run, for 'best' and 'hpc' (Lightning finds those itself), and for 'last'
    before any checkpoint exists.
    """
    if not ckpt_path or ckpt_path in ("best", "hpc"):
        return None
    if ckpt_path != "last":
        return Path(ckpt_path)
    folders = {
        Path(cb.dirpath)
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint) and cb.dirpath
    }
    found = [
        path for folder in folders for path in folder.glob(f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}*.ckpt")
    ]
    return max(found, key=lambda path: path.stat().st_mtime_ns, default=None)


def continue_logging_in(logger: Logger | None, checkpoint: dict[str, Any]) -> None:
    """Log the resumed run into the version folder of the run that saved ``checkpoint``, so its curves go on there."""
    version = checkpoint.get(CHECKPOINT_KEY, {}).get("logger_version")
    if version is not None:
        set_version_if_unset(logger, version)
