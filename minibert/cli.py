"""The command line: ``minibert`` (also installed as ``lightning``) and ``python -m minibert``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's, configured by
``configs/*.yaml``. ``fit --ckpt_path last`` (or a path) continues a run where it stopped:
see :mod:`minibert.machinery.resume` for what is saved, and
:mod:`minibert.machinery.checkpoint` for the checks made before anything is loaded.
``export``, ``neighbors`` and ``fill-mask`` look into a trained checkpoint (:mod:`minibert.explore`).

A training run owns its checkpoint folder (:mod:`minibert.machinery.run_folder`): locked while it
trains, never taken over by a new run unless ``--overwrite true`` says so. Ctrl-C, SIGTERM and
SIGHUP stop it cleanly at any moment (:mod:`minibert.machinery.stopping`), and a failure of a
known kind (a full disk, memory) is one line (:mod:`minibert.machinery.failures`).
"""

from __future__ import annotations

import signal
import sys
import warnings

try:  # Ctrl-C in the seconds that these imports take: one line, not a traceback
    from pathlib import Path
    from typing import Any

    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
    from lightning.pytorch.utilities import rank_zero_info

    from minibert.data import EuroparlDataModule
    from minibert.errors import MinibertError, escape_what_cannot_be_printed, stop_quietly_on_closed_pipe
    from minibert.explore import commands as inspection
    from minibert.machinery.allocator import KeepFreedMemory
    from minibert.machinery.checkpoint import (
        SHAPE_ARGS,
        check_argument_names,
        check_checkpoint_file,
        check_resumable,
        check_same_settings,
        check_something_to_train,
        run_settings,
        use_atomic_checkpoints,
    )
    from minibert.machinery.denormals import flush_denormals
    from minibert.machinery.failures import explain, newest_checkpoint, quiet_threads_on_a_full_disk
    from minibert.machinery.files import atomic_write, check_output_folder, remove_stale_temporaries
    from minibert.machinery.options import parse_error, trainer_error
    from minibert.machinery.precision import choose_precision
    from minibert.machinery.resume import (
        LogsBeforeCheckpoint,
        NextEpochFromItsStart,
        ResumeState,
        SaveFinalStep,
        continue_logging_in,
        find_checkpoint,
    )
    from minibert.machinery.run_folder import NewRunGuard, RunLock, check_run_options, is_first_process
    from minibert.machinery.stopping import Interrupted, SaveOnInterrupt, StopSignals
    from minibert.module import MiniBert
    from minibert.progress import use_run_progress_bar
except KeyboardInterrupt:
    print("stopped: interrupted while starting; nothing was done", file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


class MiniBertCLI(LightningCLI):
    """LightningCLI whose model takes its vocabulary size and sequence length from the data.

    Args:
        signals: the command's handler of Ctrl-C, SIGTERM and SIGHUP, told where training is.
        args, kwargs: LightningCLI's.
    """

    def __init__(self, *args: Any, signals: StopSignals | None = None, **kwargs: Any) -> None:
        self.signals = signals or StopSignals()
        self.trainer: Trainer | None = None
        self.run_locks: list[RunLock] = []
        # The checkpoint a resumed run starts from, and its step:
        self.resumed_from: tuple[Path, int] | None = None
        kwargs.setdefault("parser_kwargs", {"fit": {"trains": True}})  # --overwrite: fit's only
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        try:
            super().__init__(*args, **kwargs)
        except (MinibertError, Interrupted):
            raise
        except Exception as error:  # a full disk, memory, a killed worker: one line; anything else is a bug
            explained = explain(error, self.trainer, training_started=self.signals.phase != "starting")
            if explained is None:
                raise
            raise explained from None
        finally:
            for lock in self.run_locks:
                lock.release()
        if self.signals.received:  # after the last step: the run ended whole, and says so
            newest = newest_checkpoint(self.trainer)
            saved = f"; its newest checkpoint is {newest[0]} (step {newest[1]})" if newest else ""
            raise Interrupted(
                f"{signal.Signals(self.signals.received).name} received after the run's last step: "
                f"the run is complete{saved}",
                self.signals.received,
            )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.seq_len", "model.seq_len")
        # The vocabulary exists only once the corpus is read: the data module, instantiated
        # first, encodes it (or finds its cache) when asked its size, then the model is built.
        parser.link_arguments(
            "data", "model.vocab_size", compute_fn=EuroparlDataModule.vocab_len, apply_on="instantiate"
        )
        if getattr(parser, "trains", False):
            parser.add_argument(
                "--overwrite",
                type=bool,
                default=False,
                help="Start a new run in a checkpoint folder that holds one, deleting its checkpoints "
                "(without it, fit refuses; --ckpt_path last continues that run instead).",
            )

    def init_parser(self, trains: bool = False, **kwargs: Any) -> LightningArgumentParser:
        # Raise on a bad option rather than print the whole usage: parse_arguments says it in one line.
        parser = super().init_parser(exit_on_error=False, **kwargs)
        parser.trains = trains  # fit's parser: add_arguments_to_parser gives it --overwrite
        return parser

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
        """Clean the data folder of what killed runs left; pick the precision of a run whose config names none.

        A run whose config names no precision trains in bfloat16 where the hardware computes in it natively.
        """
        data_dir = (
            (self.config[self.subcommand].get("data") or {}).get("data_dir") if self.subcommand else None
        )
        if data_dir and is_first_process():
            for folder in (Path(data_dir), Path(data_dir) / "cache"):
                remove_stale_temporaries(folder)
        if self.subcommand != "fit":  # scoring stays in float32, comparable from run to run
            return
        trainer = self.config["fit"]["trainer"]
        if trainer.get("precision") is None:
            trainer["precision"], why = choose_precision(trainer.get("accelerator") or "auto")
            rank_zero_info(
                f"precision: {trainer['precision']}, as {why}; choose with --trainer.precision 32-true or bf16-mixed"
            )
        # Under bf16-mixed the weights stay float32, as the model summary then counts them: its
        # warning that it cannot size bf16-mixed and "uses 32 bits instead" is true of bf16-true only.
        warnings.filterwarnings(
            "ignore", message="Precision bf16-mixed is not supported by the model summary"
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
        """Take the run's checkpoint folder; write checkpoints atomically, show the whole run's progress; on resume, check the checkpoint and log into the run's own folder."""
        use_atomic_checkpoints(self.trainer)
        use_run_progress_bar(self.trainer)
        config = self.config_init["fit"]
        ckpt_path = config.get("ckpt_path")
        folders = sorted(
            {folder for folder, what in output_folders(self.trainer, "fit") if what == "checkpoint folder"}
        )
        check_run_options(overwrite=bool(config.get("overwrite")), resuming=bool(ckpt_path))
        if is_first_process():  # under DDP the first process guards the folder for all
            self.take_folders(folders)
        if not ckpt_path:
            self.trainer.callbacks.insert(0, NewRunGuard(folders, overwrite=bool(config.get("overwrite"))))
        settings = run_settings(self.config["fit"])
        for callback in self.trainer.callbacks:
            if isinstance(callback, ResumeState):
                callback.settings = settings
        path = find_checkpoint(self.trainer, ckpt_path)
        if path is None:  # a fresh run, or 'best'/'hpc', or 'last' before any checkpoint exists
            if ckpt_path == "last":
                rank_zero_info(
                    f"--ckpt_path last: no checkpoint in {', '.join(map(str, folders))}; a new run starts"
                )
                config["ckpt_path"] = None
            return
        checkpoint = check_resumable(
            path, {**self.model.hparams, **self.requested_shape}, self.datamodule.vocab
        )
        continue_logging_in(self.trainer.logger, checkpoint)
        check_same_settings(checkpoint, settings, path, getattr(self.trainer.logger, "log_dir", None))
        check_something_to_train(checkpoint, path, self.trainer.max_steps, self.trainer.max_epochs)
        self.config_init["fit"]["ckpt_path"] = str(path)  # Lightning loads the file just checked
        self.resumed_from = (path, checkpoint.get("global_step", 0))
        for callback in self.trainer.callbacks:
            if isinstance(callback, SaveRunConfig):
                callback.resumed_at = self.resumed_from[1]

    def take_folders(self, folders: list[Path]) -> None:
        """Lock the run's checkpoint folders, and remove what killed runs left in them and in the log folder."""
        for folder in folders:
            self.run_locks.append(RunLock(folder))
            self.run_locks[-1].acquire()
            remove_stale_temporaries(folder)
        for folder, what in output_folders(self.trainer, "fit"):
            if what == "log folder" and folder.is_dir():
                remove_stale_temporaries(folder, recursive=True)
        # NewRunGuard says what matters, a run's checkpoints; the folder's .lock and .gitkeep are none.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

    def after_fit(self) -> None:
        """A resumed run that trained no step is no success: one line says so (Lightning ends it with exit code 0)."""
        if self.resumed_from is not None and self.signals.received is None:
            path, step = self.resumed_from
            if self.trainer.global_step <= step:
                raise MinibertError(
                    f"the run resumed from {path} at step {step} trained no step: Lightning found its limits reached "
                    "(trainer.max_steps, max_epochs or max_time); continue it with larger ones and --ckpt_path last"
                )


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run's log folder: written whole, and never over the one the run started with.

    A resumed run logs into its run's folder: its own settings go beside the first ones, in
    ``config.resumed-at-step-N.yaml``. ``--overwrite`` is saved as false, so that a run started
    again from a saved config never deletes checkpoints unasked.
    """

    resumed_at: int | None = None  # the step a resumed run starts from, set by the command line

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        log_dir = trainer.log_dir  # on every process: it broadcasts the folder
        if self.already_saved or log_dir is None or not trainer.is_global_zero:
            return
        path = Path(log_dir) / self.config_filename
        if path.exists():
            path = path.with_name(f"config.resumed-at-step-{self.resumed_at or 0}.yaml")
        config = self.config.clone()
        if "overwrite" in config:
            config["overwrite"] = False
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, encoding="utf-8") as file:
            file.write(self.parser.dump(config, skip_none=False))
        self.already_saved = True


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
    """Run a command; a problem with the user's input is printed as one line, exit code 2.

    Every command prints what the terminal cannot encode as escapes, and stops quietly
    (exit code 141) when the reader of its output has gone: see :mod:`minibert.errors`.
    """
    argv = sys.argv[1:] if args is None else args
    escape_what_cannot_be_printed()
    signals = StopSignals()
    try:
        if argv and argv[0] in inspection.COMMANDS:
            inspection.main(argv)
        else:
            signals.install()
            quiet_threads_on_a_full_disk()
            flush_denormals()  # before PyTorch starts its threads, so that they flush too
            MiniBertCLI(
                MiniBert,
                EuroparlDataModule,
                signals=signals,
                # Added to every run, whatever callbacks the config lists: the first five make
                # resuming exact, the last makes CPU steps faster.
                trainer_defaults={
                    "callbacks": [
                        ResumeState(),
                        SaveOnInterrupt(signals),
                        SaveFinalStep(),
                        LogsBeforeCheckpoint(),
                        NextEpochFromItsStart(),
                        KeepFreedMemory(),
                    ]
                },
                args=args,
            )
        sys.stdout.flush()  # a reader gone (| head -1) is found here, not when Python exits
    except BrokenPipeError:
        stop_quietly_on_closed_pipe()
    except MinibertError as error:
        say(f"error: {error}", error.hint)
        sys.exit(2)
    except Interrupted as stop:
        say(f"stopped: {stop}")
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # an inspection command (training takes its signals itself)
        say("stopped: interrupted before training started; nothing was saved")
        sys.exit(128 + signal.SIGINT)
    finally:
        signals.restore()


def say(*lines: str | None) -> None:
    """Print the command's last lines on stderr, which may be gone (a closed terminal, a closed pipe)."""
    try:
        for line in lines:
            if line:
                print(line, file=sys.stderr, flush=True)
    except OSError:
        pass
