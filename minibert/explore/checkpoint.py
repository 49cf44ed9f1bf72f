"""A trained checkpoint, read for looking inside: the model, in eval mode on the CPU, and its vocabulary.

Everything the inspection commands need is inside the ``.ckpt``: the weights, the
hyper-parameters that rebuild the model, and the vocabulary that the data module saved
beside them. So they work on any checkpoint without the training corpus.
"""

from __future__ import annotations

from pathlib import Path

from minibert.errors import MinibertError
from minibert.machinery.checkpoint import check_checkpoint_file, model_arguments
from minibert.module import MiniBert
from minibert.tokenizer import Vocabulary

# Where the configs' ModelCheckpoint callbacks write (``dirpath: checkpoints``).
CHECKPOINT_FOLDER = Path("checkpoints")


def resolve_checkpoint(path: str | Path) -> Path:
    """``--ckpt_path``: a file, or ``last``, the newest ``last*.ckpt`` in ``checkpoints/``, as ``fit --ckpt_path last`` finds it.

    A folder is refused (:func:`load_checkpoint`), naming the ``last*.ckpt`` inside it if it holds one.
    """
    path = Path(path)
    if str(path) == "last":
        found = newest_last(CHECKPOINT_FOLDER)
        if found is None:
            raise MinibertError(
                f"--ckpt_path last: there is no last*.ckpt in {CHECKPOINT_FOLDER.resolve()}: "
                "run the command where `fit` ran, or give the checkpoint's path"
            )
        return found
    if path.is_dir() and newest_last(path):
        raise MinibertError(
            f"checkpoint {path} is a directory; give a .ckpt file, such as {newest_last(path)}"
        )
    return path


def newest_last(folder: Path) -> Path | None:
    """The newest ``last*.ckpt`` of a folder: Lightning names a second ``last.ckpt`` there ``last-v1.ckpt``."""
    found = list(folder.glob("last*.ckpt")) if folder.is_dir() else []
    return max(found, key=lambda file: file.stat().st_mtime_ns, default=None)


def load_checkpoint(path: str | Path) -> tuple[MiniBert, Vocabulary]:
    """The model of a checkpoint, in eval mode on the CPU, and its vocabulary."""
    checkpoint = check_checkpoint_file(path)
    missing = [
        key for key in ("hyper_parameters", "vocabulary") if key not in checkpoint
    ]  # state_dict: checked already
    if missing:
        raise MinibertError(f"checkpoint {path} is not a minibert checkpoint: it has no {', '.join(missing)}")
    try:
        model = MiniBert(**model_arguments(checkpoint))
        model.load_state_dict(checkpoint["state_dict"])
        vocab = Vocabulary.from_dict(checkpoint["vocabulary"])
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise MinibertError(
            f"checkpoint {path} does not fit this version of minibert: {_first_line(error)}"
        ) from error
    if len(vocab) != model.config.vocab_size:
        raise MinibertError(
            f"checkpoint {path} holds {len(vocab)} words for a model of {model.config.vocab_size}"
        )
    model.vocab = vocab
    return model.eval(), vocab


def _first_line(error: BaseException) -> str:
    """The error's type and first sentence: torch's messages go on for many lines."""
    text = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
