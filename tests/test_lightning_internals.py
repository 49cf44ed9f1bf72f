"""Each private part of Lightning that minibert uses still exists and does what its function expects.

A Lightning release that renames, moves or reorders one of them fails here, naming the function
of ``minibert/machinery/lightning_internals.py`` to change, rather than somewhere deep in a resume.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import lightning.pytorch.loops.training_epoch_loop
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from minibert.machinery.lightning_internals import (
    epochs_trained,
    inside_train_batch_end,
    is_local_path,
    load_training_loader_state,
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
            seen.append(("start", batch_idx, inside_train_batch_end(trainer)))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(("end", batch_idx, inside_train_batch_end(trainer)))

    fit(Watch())
    assert seen == [(hook, i, hook == "end") for i in range(STEPS) for hook in ("start", "end")]


def test_only_a_checkpoint_written_between_two_epochs_gets_the_next_epoch_s_counters(tmp_path):
    """Where Lightning saves last.ckpt at the end of a run bounded by epochs: the counters, and their checkpoint keys."""
    saved = {}

    class SaveAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                saved["mid-epoch"] = save(trainer, "mid")

        def on_train_epoch_end(self, trainer, pl_module):
            saved["epoch end"] = save(trainer, "epoch_end")

        def on_train_end(self, trainer, pl_module):
            saved["after the epoch"] = save(trainer, "after")

    def save(trainer: L.Trainer, name: str) -> dict:
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        checkpoint = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        start_the_next_epoch_in(checkpoint, trainer)
        return checkpoint["loops"]["fit_loop"]

    trainer = L.Trainer(
        max_epochs=1, logger=False, callbacks=[SaveAt()], accelerator="cpu", default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyModel())
    trained = {
        name: loop["epoch_loop.batch_progress"]["current"]["processed"] for name, loop in saved.items()
    }
    assert trained == {"mid-epoch": 2, "epoch end": STEPS, "after the epoch": 0}  # only the last one is reset
    after = saved["after the epoch"]
    assert after["epoch_loop.batch_progress"]["current"] == dict.fromkeys(
        ["ready", "started", "processed", "completed"], 0
    )
    assert (
        after["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["current"]["completed"]
        == 0
    )
    assert after["epoch_loop.batch_progress"]["total"]["processed"] == STEPS  # the run's totals stay


def test_epochs_trained_are_those_after_which_lightning_trains_no_step(tmp_path):
    """Resumed with max_epochs at the count, Lightning trains nothing; with one more, it trains."""
    paths = {}

    class SaveAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx in (1, STEPS - 1):  # mid-epoch, and after the epoch's last batch
                paths[f"batch {batch_idx}"] = save(trainer, f"batch_{batch_idx}")

        def on_train_epoch_end(self, trainer, pl_module):
            paths["epoch end"] = save(trainer, "epoch_end")

    def save(trainer: L.Trainer, name: str) -> str:
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        return str(tmp_path / f"{name}.ckpt")

    def steps_trained(path: str, max_epochs: int) -> int:
        trainer = L.Trainer(
            max_epochs=max_epochs, logger=False, accelerator="cpu", default_root_dir=tmp_path,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(TinyModel(), ckpt_path=path)
        return trainer.global_step - torch.load(path, weights_only=True)["global_step"]

    trainer = L.Trainer(
        max_epochs=1, logger=False, callbacks=[SaveAt()], accelerator="cpu", default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyModel())
    counted = {name: epochs_trained(torch.load(path, weights_only=True)) for name, path in paths.items()}
    assert counted == {"batch 1": 0, f"batch {STEPS - 1}": 1, "epoch end": 1}
    for name, path in paths.items():
        assert steps_trained(path, max_epochs=max(counted[name], 1)) == (
            STEPS - 2 if name == "batch 1" else 0
        ), name
        assert steps_trained(path, max_epochs=counted[name] + 1) > 0, name


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


class CountingLoader(DataLoader):
    """A training loader with a state, as minibert's: how many batches it handed out; records what it is given."""

    def __init__(self) -> None:
        super().__init__(torch.zeros(2 * STEPS, 1), batch_size=2)
        self.handed_out, self.given = 0, []

    def __iter__(self):
        for batch in super().__iter__():
            self.handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"handed_out": self.handed_out}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.given.append(state_dict)


class ScheduledModel(TinyModel):
    """Sizes its schedule with estimated_stepping_batches, as minibert's module does, and trains on a CountingLoader."""

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        total = (
            self.trainer.estimated_stepping_batches
        )  # builds the training loader in a run bounded by epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        self.loader = CountingLoader()
        return self.loader


def test_a_loader_built_before_the_checkpoint_is_read_gets_its_state_at_the_start_of_training(tmp_path):
    """Lightning issue #20550: in a run bounded by epochs, estimated_stepping_batches builds the loader too early."""

    class StopAfterTwoSteps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                trainer.should_stop = True

    class LoadAtTrainStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            given_before.extend(pl_module.loader.given)
            load_training_loader_state(trainer)

    def trainer(*callbacks: L.Callback) -> L.Trainer:
        return L.Trainer(
            max_epochs=2, logger=False, callbacks=list(callbacks), accelerator="cpu", default_root_dir=tmp_path,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip

    trainer(StopAfterTwoSteps()).fit(ScheduledModel())
    loops = torch.load(tmp_path / "mid.ckpt", weights_only=True)["loops"]["fit_loop"]
    assert loops["state_dict"]["combined_loader"] == [{"handed_out": 2}]  # Lightning saved the loader's state

    given_before: list[dict[str, int]] = []
    resumed = ScheduledModel()
    trainer(LoadAtTrainStart()).fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    assert given_before == []  # Lightning did not give it: when it does, load_training_loader_state can go
    assert resumed.loader.given == [{"handed_out": 2}]  # given once, before the first batch
    load_training_loader_state(resumed.trainer)  # nothing left to give: nothing happens
    assert resumed.loader.given == [{"handed_out": 2}]
