"""The terminal's progress bar for a whole run: steps done of ``max_steps``, steps per second, time left."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from minibert.machinery.lightning_internals import progress_bar_due

REDRAW_SECONDS = 0.5  # the bar redraws at most this often (and at the run's end)


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting the run's steps instead of the epoch's batches.

    Lightning's own bar starts again at every epoch, so its rate and time left are the
    epoch's; base.yaml has about 80 epochs. This one goes from the step the run (or the
    resumed run) starts at to ``trainer.max_steps``, so the time left is the whole run's, and
    the rate, steps per second, is averaged since the start (validation pauses included).
    A run bounded by epochs only (``max_steps: -1``) gets Lightning's bar.

    Lightning redraws its bar, reading every logged metric for it, at every step: 1.8 ms of a
    base.yaml step of 205 ms on 2 cores of an AMD EPYC, and a line per step where the output is a file.
    This one redraws at most every ``REDRAW_SECONDS``, and at the end.

    The command line uses it in place of Lightning's default bar (see :mod:`minibert.cli`).
    """

    drawn_at = -float("inf")  # time.monotonic() of the last redraw

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.max_steps > 0:
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step  # a resumed run's rate counts its own steps only
            bar.unit = "step"

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step, now = self.train_progress_bar, trainer.global_step, time.monotonic()
        soon = step < bar.total and now - self.drawn_at < REDRAW_SECONDS
        if progress_bar_due(self, step, bar.total) and not soon:
            bar.n, self.drawn_at = step, now
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also redraws the bar


def use_run_progress_bar(trainer: L.Trainer) -> None:
    """Show :class:`RunProgressBar` in place of Lightning's default bar; a bar the config chose stays."""
    bar = trainer.progress_bar_callback
    if type(bar) in (TQDMProgressBar, RichProgressBar):  # Lightning's default bar, not one the config chose
        trainer.callbacks[trainer.callbacks.index(bar)] = RunProgressBar()
