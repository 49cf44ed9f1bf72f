"""How a command stops on Ctrl-C (SIGINT), ``kill`` (SIGTERM) or a closed terminal (SIGHUP), whenever it comes.

One handler (:class:`StopSignals`) takes the three signals for the whole command, and what it
does depends on where the command is:

- **starting** (reading the corpus, building the model, Lightning's set-up and sanity check):
  stop at once; nothing was trained, and nothing already written is changed (every file is
  written whole or not at all);
- **training**: finish the step in progress, save ``last.ckpt`` and stop (:class:`SaveOnInterrupt`);
- **finished** (after the last step: the final checkpoint, the logs' last flush): let the
  run end whole, then say that it was complete when the signal came.

Each ends with ``stopped: ...`` and the shell's exit code for the signal: 128 + its number (130 for
Ctrl-C, 143 for SIGTERM, 129 for SIGHUP). When the terminal is gone (SIGHUP), what would be
written to it goes to ``/dev/null``: a write to a closed terminal fails, and would stop the run
before it saves.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L

from minibert.machinery.resume import save_last

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """The command stopped on a signal; the command line says what was saved, and exits."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class StopSignals:
    """The handler of SIGINT, SIGTERM and SIGHUP from the command's start to its end (see the module's doc)."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.received: int | None = None
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take the three signals (again, where Lightning replaced the handler of SIGTERM with its own)."""
        for number in STOP_SIGNALS:
            previous = signal.signal(number, self._handle)
            self._previous.setdefault(number, previous)

    def restore(self) -> None:
        """Give the signals back to the handlers they had before :meth:`install`."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker, forked with this handler: its parent decides
            return
        if number == signal.SIGHUP:
            quiet_closed_terminal()
        if self.phase == "starting":
            raise Interrupted(
                f"{signal.Signals(number).name} received before training started: nothing was trained, and "
                "no file already written was changed; run the same command again",
                number,
            )
        self.received = self.received or number


def quiet_closed_terminal() -> None:
    """Send what the command prints to ``/dev/null`` where it went to a terminal, which a SIGHUP says is gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        if os.isatty(fd):
            os.dup2(devnull, fd)
    os.close(devnull)


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C, SIGTERM or SIGHUP during training, finish the current step, save ``last.ckpt`` and stop.

    The signal only raises a flag (:class:`StopSignals`): stopping between two steps, never inside
    one, keeps the weights, the optimiser and the data position consistent (if the signal comes
    with the run's last step, the run simply ends). Under DDP the flag is shared by all processes
    at every step, so they all stop after the same step.

    Args:
        signals: the command's handler, told here when training starts and ends.
    """

    def __init__(self, signals: StopSignals | None = None) -> None:
        self._own_signals = signals is None  # used without the command line: its handlers go with training
        self.signals = signals or StopSignals()
        self._stop: Interrupted | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Replaces Lightning's own SIGTERM handler too: this one saves before stopping.
        self.signals.install()
        self.signals.phase = "training"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signals.phase = "finished"

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._own_signals:
            self.signals.restore()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        received = self.signals.received
        if self._stop is None and trainer.strategy.reduce_boolean_decision(received is not None, all=False):
            path = save_last(trainer)
            number = received or signal.SIGTERM  # another process of a DDP run got it
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
