"""The command line: ``minibert`` (also installed as ``lightning``) and ``python -m minibert``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's, configured by
``configs/*.yaml``. ``fit --ckpt_path last`` (or a path) continues a run where it stopped:
see :mod:`minibert.machinery.resume` for what is saved, and
:mod:`minibert.machinery.checkpoint` for the checks made before anything is loaded.
``export``, ``neighbors`` and ``fill-mask`` look into a trained checkpoint (:mod:`minibert.explore`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from minibert.data import EuroparlDataModule
from minibert.errors import MinibertError
from minibert.explore import commands as inspection
from minibert.machinery.allocator import KeepFreedMemory
from minibert.machinery.checkpoint import (
    SHAPE_ARGS,
    check_argument_names,
    check_checkpoint_file,
    check_resumable,
    use_atomic_checkpoints,
)
from minibert.machinery.files import check_output_folder
from minibert.machinery.options import parse_error, trainer_error
from minibert.machinery.precision import choose_precision
from minibert.machinery.resume import (
    Interrupted,
    LogsBeforeCheckpoint,
    NextEpochFromItsStart,
    ResumeState,
    SaveFinalStep,
    SaveOnInterrupt,
    continue_logging_in,
    find_checkpoint,
)
from minibert.module import MiniBert
from minibert.progress import use_run_progress_bar


class MiniBertCLI(LightningCLI):
    """LightningCLI whose model takes its vocabulary size and sequence length from the data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.seq_len", "model.seq_len")
        # The vocabulary exists only once the corpus is read: the data module, instantiated
        # first, encodes it (or finds its cache) when asked its size, then the model is built.
        parser.link_arguments(
            "data", "model.vocab_size", compute_fn=EuroparlDataModule.vocab_len, apply_on="instantiate"
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Raise on a bad option rather than print the whole usage: parse_arguments says it in one line.
        return super().init_parser(exit_on_error=False, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = sys.argv[1:] if args is None else args
        check_config_files(argv)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise parse_error(str(error), argv if isinstance(argv, list) else None) from None
        subcommand = self.config.get("subcommand")
        command = self.config[subcommand] if subcommand else self.config
        # Right after parsing, LightningCLI reads the model's arguments from a checkpoint given
        # by path and puts them in place of the config's: check the file first, and keep the
        # shape the config asked for, so that a different one is reported rather than replaced.
        ckpt_path = command.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            check_argument_names(check_checkpoint_file(ckpt_path), ckpt_path)
            # Scoring with a trained model uses the model's own vocabulary: no training corpus needed.
            if (
                subcommand in ("validate", "test", "predict")
                and command.get("data")
                and not command["data"].get("vocab_from")
            ):
                command["data"]["vocab_from"] = ckpt_path
        model = command.get("model")
        self.requested_shape = {
            name: model.get(name) for name in SHAPE_ARGS if model and model.get(name) is not None
        }

    def before_instantiate_classes(self) -> None:
        """A run whose config names no precision trains in bfloat16 where the hardware computes in it natively."""
        if self.subcommand != "fit":  # scoring stays in float32, comparable from run to run
            return
        trainer = self.config["fit"]["trainer"]
        if trainer.get("precision") is None:
            trainer["precision"], why = choose_precision(trainer.get("accelerator") or "auto")
            rank_zero_info(
                f"precision: {trainer['precision']}, as {why}; choose with --trainer.precision 32-true or bf16-mixed"
            )

    def instantiate_classes(self) -> None:
        """The data module, the model (its size linked from the data module's vocabulary), then the trainer."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            # jsonargparse wraps what the vocabulary link raised (a corpus that does not exist, say):
            # the user's error stays one line.
            if isinstance(error.__cause__, MinibertError):
                raise error.__cause__ from None
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, its options checked by Lightning and its output folders by us, before any work starts."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, RuntimeError) as error:
            raise trainer_error(error, self.subcommand) from None  # Lightning's checks of its options
        for folder, what in output_folders(trainer, self.subcommand):
            check_output_folder(folder, what)
        return trainer

    def before_fit(self) -> None:
        """Write checkpoints atomically, show the whole run's progress; on resume, check the checkpoint and log into the run's own folder."""
        use_atomic_checkpoints(self.trainer)
        use_run_progress_bar(self.trainer)
        path = find_checkpoint(self.trainer, self.config_init["fit"].get("ckpt_path"))
        if path is None:  # a fresh run, or 'best'/'hpc', or 'last' before any checkpoint exists
            return
        checkpoint = check_resumable(
            path, {**self.model.hparams, **self.requested_shape}, self.datamodule.vocab
        )
        self.config_init["fit"]["ckpt_path"] = str(path)  # Lightning loads the file just checked
        continue_logging_in(self.trainer.logger, checkpoint)


def output_folders(trainer: Trainer, subcommand: str | None) -> list[tuple[Path, str]]:
    """The folders a command writes into: every logger's, and the checkpoint folders when it trains."""
    folders = []
    if subcommand in (None, "fit"):
        folders += [
            (Path(cb.dirpath), "checkpoint folder")
            for cb in trainer.checkpoint_callbacks
            if getattr(cb, "dirpath", None)
        ]
    for logger in trainer.loggers:
        folder = getattr(logger, "root_dir", None) or logger.save_dir  # TensorBoard's: save_dir/name
        if folder:
            folders.append((Path(folder), "log folder"))
    return folders


def check_config_files(args: Any) -> None:
    """A missing or empty ``--config`` file in one line, not after the whole usage text."""
    if not isinstance(args, (list, tuple)):
        return
    paths = [value for flag, value in zip(args, args[1:]) if flag == "--config"]
    paths += [arg.removeprefix("--config=") for arg in args if arg.startswith("--config=")]
    for path in map(Path, paths):
        if not path.is_file():
            raise MinibertError(f"config file {path} does not exist")
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise MinibertError(f"config file {path} is empty")


def main(args: list[str] | None = None) -> None:
    """Run a command; a problem with the user's input is printed as one line, exit code 2."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in inspection.COMMANDS:
            inspection.main(argv)
        else:
            MiniBertCLI(
                MiniBert,
                EuroparlDataModule,
                save_config_kwargs={"overwrite": True},
                # Added to every run, whatever callbacks the config lists: the first five make
                # resuming exact, the last makes CPU steps faster.
                trainer_defaults={
                    "callbacks": [
                        ResumeState(),
                        SaveOnInterrupt(),
                        SaveFinalStep(),
                        LogsBeforeCheckpoint(),
                        NextEpochFromItsStart(),
                        KeepFreedMemory(),
                    ]
                },
                args=args,
            )
    except MinibertError as error:
        print(f"error: {error}", file=sys.stderr)
        if error.hint:
            print(error.hint, file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # before training started (reading the corpus, say): nothing to save
        print("stopped: interrupted before training started; nothing was saved", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
