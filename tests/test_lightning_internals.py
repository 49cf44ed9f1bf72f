"""Each private part of Lightning that minibert uses still exists and does what its function expects.

A Lightning release that renames, moves or reorders one of them fails here, naming the function
of ``minibert/machinery/lightning_internals.py`` to change, rather than somewhere deep in a resume.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import lightning as L
import lightning.pytorch.loops.training_epoch_loop
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from minibert.machinery.lightning_internals import (
    MID_EPOCH_RESUME_WARNING,
    batches_trained_in_epoch,
    between_epochs,
    ignore_mid_epoch_resume_warning,
    inside_train_batch_end,
    is_local_path,
    log_step_metrics_now,
    progress_bar_due,
    set_version_if_unset,
    start_the_next_epoch_in,
    step_metrics_logged,
)

STEPS = 4


class TinyModel(L.LightningModule):
    """One weight, a loss that differs at every step, logged at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = (self.weight * batch).sum()
        self.log("loss", loss.detach() + batch_idx)  # the step's own number, to tell the steps apart
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(2 * STEPS, 1), batch_size=2)


class RecordingLogger(Logger):
    """Every ``log_metrics`` call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def fit(callback: L.Callback, logger: Logger | bool = False) -> None:
    trainer = L.Trainer(
        max_steps=STEPS, logger=logger, callbacks=[callback], log_every_n_steps=1, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyModel())


def test_the_batch_counters_tell_a_batch_in_training_from_one_in_on_train_batch_end():
    seen = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(
                ("start", batch_idx, batches_trained_in_epoch(trainer), inside_train_batch_end(trainer))
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(
                ("end", batch_idx, batches_trained_in_epoch(trainer), inside_train_batch_end(trainer))
            )

    fit(Watch())
    expected = []
    for batch_idx in range(STEPS):
        expected += [("start", batch_idx, batch_idx, False), ("end", batch_idx, batch_idx + 1, True)]
    assert seen == expected


def test_after_an_epoch_the_counters_are_still_its_own_until_the_next_starts(tmp_path):
    """Where Lightning saves last.ckpt at the end of a run bounded by epochs: the counters, and their checkpoint keys."""
    seen = {}

    class AtTheEnd(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("during", between_epochs(trainer))

        def on_train_end(self, trainer, pl_module):
            seen["batches"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            seen["after"], seen["trained"] = between_epochs(trainer), batches_trained_in_epoch(trainer)
            trainer.save_checkpoint(tmp_path / "end.ckpt")

    trainer = L.Trainer(
        max_epochs=1, logger=False, callbacks=[AtTheEnd()], accelerator="cpu", default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyModel())
    assert seen == {"during": False, "batches": STEPS, "after": True, "trained": 0}
    checkpoint = torch.load(tmp_path / "end.ckpt", weights_only=True)
    loop = checkpoint["loops"]["fit_loop"]
    assert loop["epoch_loop.batch_progress"]["current"]["processed"] == STEPS
    start_the_next_epoch_in(checkpoint)
    assert loop["epoch_loop.batch_progress"]["current"] == dict.fromkeys(
        ["ready", "started", "processed", "completed"], 0
    )
    assert (
        loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["current"]["completed"]
        == 0
    )
    assert loop["epoch_loop.batch_progress"]["total"]["processed"] == STEPS  # the run's totals stay


def test_step_metrics_logged_in_on_train_batch_end_are_logged_once_and_at_once():
    logger = RecordingLogger()
    logged_inside = []

    class LogNow(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            log_step_metrics_now(trainer)
            log_step_metrics_now(trainer)  # a second checkpoint of the same step: nothing more
            logged_inside.append([step for step, metrics in logger.calls if "loss" in metrics])

    fit(LogNow(), logger)
    losses = [(step, metrics["loss"]) for step, metrics in logger.calls if "loss" in metrics]
    assert losses == [(step, float(step)) for step in range(STEPS)]  # every step once, with its own value
    assert logged_inside == [
        list(range(step + 1)) for step in range(STEPS)
    ]  # already on the logger in the hook


def test_step_metrics_logged_says_in_training_step_which_steps_the_logger_gets():
    logger = RecordingLogger()
    said = []

    class Asking(TinyModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            said.append(step_metrics_logged(self.trainer))
            return super().training_step(batch, batch_idx)

    trainer = L.Trainer(
        max_steps=2 * STEPS, logger=logger, log_every_n_steps=3, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Asking())
    logged = [step for step, metrics in logger.calls if "loss" in metrics]
    assert logged == [2, 5]  # every third step
    assert [step for step, yes in enumerate(said) if yes] == logged


def test_lightning_logs_a_step_after_its_on_train_batch_end_hooks():
    """What log_step_metrics_now relies on: the connector's call comes after the hooks."""
    source = inspect.getsource(lightning.pytorch.loops.training_epoch_loop)
    hooks = source.index('call._call_callback_hooks(trainer, "on_train_batch_end"')
    assert source.index("trainer._logger_connector.update_train_step_metrics()", hooks) > hooks


def test_a_tensorboard_logger_without_a_version_takes_the_one_given(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path)
    set_version_if_unset(logger, 3)
    assert logger.version == 3
    assert logger.log_dir == str(tmp_path / "lightning_logs" / "version_3")


def test_a_tensorboard_logger_keeps_a_version_it_has(tmp_path):
    chosen = TensorBoardLogger(save_dir=tmp_path, version=5)
    set_version_if_unset(chosen, 3)
    assert chosen.version == 5
    used = TensorBoardLogger(save_dir=tmp_path, name="other")
    assert used.version == 0  # picked on first use
    set_version_if_unset(used, 3)
    assert used.version == 0
    set_version_if_unset(None, 3)  # a run without a logger


def test_local_paths_are_told_from_remote_ones(tmp_path):
    assert is_local_path(str(tmp_path / "last.ckpt"))
    assert is_local_path("checkpoints/last.ckpt")
    assert is_local_path(f"file://{tmp_path}/last.ckpt")
    assert not is_local_path("s3://bucket/checkpoints/last.ckpt")
    assert not is_local_path("memory://checkpoints/last.ckpt")


def test_the_progress_bar_redraws_every_refresh_rate_steps_and_at_the_end():
    bar = TQDMProgressBar(refresh_rate=5)
    assert [step for step in range(1, 13) if progress_bar_due(bar, step, 12)] == [5, 10, 12]
    bar.disable()
    assert not progress_bar_due(bar, 10, 12)


def test_lightning_still_gives_the_mid_epoch_resume_warning_that_is_silenced():
    """A reworded warning would show again on every resume: its text must be the one filtered."""
    source = inspect.getsource(lightning.pytorch.loops.training_epoch_loop)
    assert MID_EPOCH_RESUME_WARNING in source
    emitted = source[source.index(MID_EPOCH_RESUME_WARNING) :]
    assert emitted.index("category=PossibleUserWarning") < emitted.index(")\n")  # in the same call


def test_only_the_mid_epoch_resume_warning_is_silenced_and_by_one_filter():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ignore_mid_epoch_resume_warning()
        ignore_mid_epoch_resume_warning()  # every resume calls it
        rank_zero_warn(
            f"{MID_EPOCH_RESUME_WARNING} and your dataloader is not resumable.", category=PossibleUserWarning
        )
        rank_zero_warn("another warning", category=PossibleUserWarning)
        warnings.warn(f"{MID_EPOCH_RESUME_WARNING}, from elsewhere", UserWarning, stacklevel=1)
        ours = [f for f in warnings.filters if f[1] is not None and f[1].pattern.startswith("You")]
    assert [str(w.message) for w in caught] == [
        "another warning",
        f"{MID_EPOCH_RESUME_WARNING}, from elsewhere",
    ]
    assert len(ours) == 1
