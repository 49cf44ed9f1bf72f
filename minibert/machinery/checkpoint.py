"""Checkpoints: written whole or not at all, and checked before anything is loaded from them.

A file that is missing, a directory, truncated or not a checkpoint at all, a checkpoint made for
another corpus, vocabulary or model shape, and a resumed run whose settings differ from those
it was trained with, each stop the command with one line that names the file and what is
wrong, before a single weight is loaded or a step is run.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from minibert.errors import MinibertError
from minibert.machinery.files import atomic_write, os_error_in
from minibert.machinery.lightning_internals import epochs_trained, is_local_path
from minibert.model import EncoderConfig
from minibert.tokenizer import Vocabulary

# The encoder's fields that a checkpoint's weights are bound to: all but those that only
# matter to a model trained from scratch.
SHAPE_ARGS = tuple(field.name for field in fields(EncoderConfig) if field.name not in ("dropout", "init_std"))

# Where a checkpoint holds what minibert adds to Lightning's own (minibert.machinery.resume.ResumeState).
CHECKPOINT_KEY = "minibert_resume"

# What a resumed run may set otherwise than the run it continues: where files are, how fast the
# data is read, what is only measured. Every other data.* and model.* setting, the seed and these
# trainer options change the training itself: a batch size moves the position in the epoch, and
# the optimiser keeps the learning rate and betas it was saved with whatever model.lr now says.
FREE_SETTINGS = {
    "data.corpus",  # checked through the vocabulary: a moved file is fine, another corpus is not
    "data.data_dir",
    "data.download_url",
    "data.test_corpus",
    "data.vocab_from",
    "data.num_workers",
    "data.persistent_workers",
    "data.val_mask_prob",
    "model.fast",  # the same numbers, computed faster
    "model.top_k",
}
TRAINER_SETTINGS = (
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "devices",
    "num_nodes",
    "limit_train_batches",
    "overfit_batches",
)

# Model arguments renamed since older checkpoints were written: old name -> today's.
RENAMED_ARGS = {"fused_attention": "fast"}


def model_arguments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's arguments saved in a checkpoint, under today's names.

    LightningCLI's own entries (``_instantiator``, ...) are left out: they are not arguments.
    """
    saved = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    return {RENAMED_ARGS.get(k, k): v for k, v in saved.items()}


def check_argument_names(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse, in one line, an older checkpoint whose model arguments LightningCLI would fail to parse."""
    old = [
        f"model.{name} (now model.{RENAMED_ARGS[name]})"
        for name in checkpoint.get("hyper_parameters", {})
        if name in RENAMED_ARGS
    ]
    if old:
        raise MinibertError(
            f"checkpoint {path} was written by an older minibert, with {', '.join(old)}: `fit --ckpt_path last` "
            "still continues its run, and `python -m minibert evaluate` and the other inspection commands read it"
        )


def check_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (tensors memory-mapped, nothing copied into a model) or say what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise MinibertError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise MinibertError(
            f"checkpoint {path} is a directory; give a .ckpt file (checkpoints/last.ckpt, or 'last')"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError):
        # PyTorch's own messages are long and speak of zip archives and mmap: say it plainly.
        size = path.stat().st_size
        raise MinibertError(
            f"checkpoint {path} ({size:,} bytes) is damaged: truncated, or not a checkpoint file at all"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MinibertError(f"checkpoint {path} holds no model weights: not a checkpoint written by minibert")
    return checkpoint


def checkpoint_vocabulary(path: str | Path) -> Vocabulary:
    """The vocabulary saved in a checkpoint, or one line saying why there is none."""
    checkpoint = check_checkpoint_file(path)
    if "vocabulary" not in checkpoint:
        raise MinibertError(
            f"checkpoint {path} holds no vocabulary: not a checkpoint written by minibert's training"
        )
    return Vocabulary.from_dict(checkpoint["vocabulary"])


def compatibility_problem(
    checkpoint: dict[str, Any], model_args: dict[str, Any], vocabulary: Vocabulary | None
) -> str | None:
    """What differs between a checkpoint and the model and data built now, in words, or None.

    Args:
        checkpoint: a checkpoint as :func:`check_checkpoint_file` returns it.
        model_args: the model's arguments as configured for this run.
        vocabulary: the data module's vocabulary.
    """
    if vocabulary is not None and "vocabulary" in checkpoint:
        saved_words, words = Vocabulary.from_dict(checkpoint["vocabulary"]).itos, vocabulary.itos
    else:
        saved_words = words = []
    if saved_words != words:
        if len(saved_words) != len(words):
            return (
                f"the checkpoint's vocabulary has {len(saved_words):,} words, the data module built "
                f"{len(words):,} (a different corpus or data.vocab_size)"
            )
        first = next(i for i, (a, b) in enumerate(zip(saved_words, words)) if a != b)
        return (
            f"the checkpoint's vocabulary differs from the data module's from word {first:,} on "
            f"({saved_words[first]!r} vs {words[first]!r}): a different corpus"
        )
    saved_args = checkpoint.get("hyper_parameters", {})
    for name in SHAPE_ARGS:
        if name in saved_args and name in model_args and saved_args[name] != model_args[name]:
            return f"model.{name}: the checkpoint was trained with {saved_args[name]}, this run asks for {model_args[name]}"
    return None


def check_resumable(
    path: str | Path, model_args: dict[str, Any], vocabulary: Vocabulary | None
) -> dict[str, Any]:
    """The checkpoint a run resumes from, read and found to fit the model and data built now, or one line saying why not."""
    checkpoint = check_checkpoint_file(path)
    problem = compatibility_problem(checkpoint, model_args, vocabulary)
    if problem:
        raise MinibertError(f"cannot resume from {path}: {problem}")
    return checkpoint


def run_settings(config: Any) -> dict[str, Any]:
    """The settings of a ``fit`` config (jsonargparse's namespace) that make the run what it is (see ``FREE_SETTINGS``)."""
    flat = dict(config.items(branches=False))
    names = [name for name in flat if name.startswith(("data.", "model.")) and name not in FREE_SETTINGS]
    names += ["seed_everything", *(f"trainer.{name}" for name in TRAINER_SETTINGS)]
    # Plain values (lists for tuples, text for paths): what a checkpoint can hold and load safely.
    return json.loads(json.dumps({name: flat.get(name) for name in sorted(names)}, default=str))


def check_same_settings(
    checkpoint: dict[str, Any], settings: dict[str, Any], path: str | Path, log_dir: str | None = None
) -> None:
    """Refuse, in one line, a resumed run whose settings differ from those its checkpoint was trained with.

    Args:
        checkpoint: a checkpoint as :func:`check_checkpoint_file` returns it.
        settings: :func:`run_settings` of this run.
        path: where it was read, for the message.
        log_dir: the run's log folder, where its ``config.yaml`` is.
    """
    saved = checkpoint.get(CHECKPOINT_KEY, {}).get("settings") or {}  # none in older checkpoints
    changed = [
        f"{name}: the run was trained with {saved[name]}, this run asks for {settings[name]}"
        for name in sorted(saved.keys() & settings.keys())
        if saved[name] != settings[name]
    ]
    if changed:
        config = Path(log_dir or "") / "config.yaml"
        where = f" (they are in {config})" if log_dir and config.is_file() else ""
        raise MinibertError(
            f"cannot resume from {path}: {'; '.join(changed)}; a resumed run keeps the settings it was "
            f"trained with{where}: drop the change, or start a new run with --overwrite true"
        )


def check_something_to_train(
    checkpoint: dict[str, Any], path: str | Path, max_steps: int, max_epochs: int | None
) -> None:
    """Refuse, in one line, a resumed run that would stop before its first step, its step or epoch limit already reached.

    Lightning would end such a run at once, with an exit code of 0, and say only "`max_epochs=2` reached".
    """
    step, epochs = checkpoint.get("global_step", 0), epochs_trained(checkpoint)
    if max_steps != -1 and step >= max_steps:
        reached, option = f"is at step {step} and trainer.max_steps is {max_steps}", "--trainer.max_steps"
    elif epochs is not None and max_epochs not in (None, -1) and epochs >= max_epochs:
        reached = f"has trained {epochs} epoch(s) (step {step}) and trainer.max_epochs is {max_epochs}"
        option = "--trainer.max_epochs (-1: no limit)"
    else:
        return
    raise MinibertError(
        f"nothing to train: the run in {path} {reached}; continue it with a larger {option} and --ckpt_path last"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every local disk.

    Lightning (through fsspec) writes a checkpoint into the system's temporary folder, then
    moves it into place: a rename, atomic, when both are on one file system, but a copy when
    ``/tmp`` is another one (often a tmpfs), and a copy killed halfway leaves a truncated
    ``.ckpt``. Here the temporary file is written beside the checkpoint, flushed to the disk,
    then renamed over the old one: a reader sees the old file or the new one, never a part.
    A kill while writing leaves a hidden ``.NAME.PID.tmp`` file, never a broken ``.ckpt``
    (see :func:`minibert.machinery.files.atomic_write`).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not is_local_path(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb") as file:
                torch.save(checkpoint, file)
        except (OSError, RuntimeError) as error:
            cause = os_error_in(error)
            if cause is None:
                raise
            raise MinibertError(
                f"cannot write checkpoint {path} ({cause.strerror or cause}); the checkpoints already there are "
                "unchanged: free some space, then continue with the same command and --ckpt_path last"
            ) from None


def use_atomic_checkpoints(trainer: L.Trainer) -> None:
    """Write the run's checkpoints with :class:`AtomicCheckpointIO`, unless the config chose a writer of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
