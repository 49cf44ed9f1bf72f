"""Keep the arrays of an encoded corpus on disk, and hand them back memory-mapped.

How a corpus becomes these arrays is the lesson's (:mod:`minibert.data`); this file only stores them.
A cache directory holds, for each split, a flat ``int32`` array of token ids
(``{split}_tokens.npy``) and the start of every sentence in it (``{split}_offsets.npy``,
one more entry than sentences), plus the vocabulary built from the training split
(``vocab.json``, with the word counts). Its name is a hash of everything that changes
its content, so a changed file or setting gets a cache of its own. A test corpus gets a
cache of its own too, encoded with the training vocabulary (``test_tokens.npy``, ...).

A cache checks itself when opened (:func:`ensure_cache`): its record, ``settings.json``, holds
the size of every other file, so one cut short (an interrupted copy, a full disk) or edited
by hand is found, and the cache is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from minibert.errors import MinibertError
from minibert.machinery.files import atomic_write

CACHE_FORMAT = 2  # bump when the cache layout or the tokenizer changes (2: the record holds the files' sizes)
RECORD = "settings.json"  # what the cache was built from, and the size of each of its other files
VOCAB_FILE = "vocab.json"

log = logging.getLogger(__name__)


class Saveable(Protocol):
    """What the cache asks of a vocabulary: to write itself into a file (:class:`minibert.tokenizer.Vocabulary`)."""

    def save(self, path: Path) -> None: ...


def cache_key(
    corpus: Path, settings: dict[str, Any], tokenizer: str, vocab_words: Sequence[str] | None = None
) -> str:
    """A name that changes whenever the corpus file (or files), the tokenizer, a setting or a given vocabulary changes.

    Args:
        corpus: the corpus file or folder.
        settings: every other option that changes the encoded arrays.
        tokenizer: what defines the tokenizer (its punctuation characters).
        vocab_words: the vocabulary that encodes the corpus, when it is given rather than counted.
    """
    blob = json.dumps([CACHE_FORMAT, tokenizer, _identity(corpus), settings], sort_keys=True)
    if vocab_words is not None:
        blob += _fingerprint(vocab_words)
    return f"{corpus.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def key_for_test_corpus(test_corpus: Path, tokenizer: str, vocab_words: Sequence[str]) -> str:
    """The name of a test corpus's cache: its identity, the tokenizer and the vocabulary that encodes it."""
    blob = json.dumps([CACHE_FORMAT, tokenizer, _identity(test_corpus), _fingerprint(vocab_words)])
    return f"test-{test_corpus.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _fingerprint(words: Sequence[str]) -> str:
    """A short hash of a vocabulary's words in order: the same words give the same ids."""
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]


def _identity(corpus: Path) -> list[tuple[str, int, int]]:
    """Path, size and modification time of every file of ``corpus``: any edit changes it."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file()) if corpus.is_dir() else [corpus]
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def write_cache(
    cache_dir: Path, arrays: dict[str, np.ndarray], record: dict[str, Any], vocab: Saveable | None = None
) -> None:
    """Write a cache into a temporary directory, then rename it to ``cache_dir`` if that is still absent.

    A reader therefore sees a complete cache or none. When another process (a DDP rank, a
    second run) finished the same cache first, its copy is kept: same key, same content.
    A write that fails (a full disk) leaves nothing behind and is said in one line.

    Args:
        cache_dir: where the cache goes.
        arrays: the arrays to store, each as ``{name}.npy``.
        record: what the cache was built from, saved in ``settings.json`` with the files' sizes.
        vocab: the vocabulary, saved as ``vocab.json`` (a test corpus's cache has none).
    """
    tmp = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".tmp-", dir=cache_dir.parent))
        for name, array in arrays.items():
            with atomic_write(tmp / f"{name}.npy", "wb") as file:
                np.save(file, array)
        if vocab is not None:
            vocab.save(tmp / VOCAB_FILE)  # a plain write is enough: the whole folder is renamed below
        files = {path.name: path.stat().st_size for path in sorted(tmp.iterdir())}
        with atomic_write(tmp / RECORD, encoding="utf-8") as file:
            file.write(json.dumps({**record, "files": files}, indent=1))
        try:
            os.rename(tmp, cache_dir)  # fails when cache_dir exists (it is never an empty directory)
        except OSError:
            if not cache_dir.is_dir():
                raise
    except OSError as error:
        raise MinibertError(
            f"cannot write the cache {cache_dir} ({error.strerror or error}); nothing was left half-written: "
            "free some space, or choose another data.data_dir, and run again"
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_cache(cache_dir: Path, build: Callable[[], None]) -> None:
    """Build the cache in ``cache_dir`` with ``build`` if it is missing, or again if it is damaged."""
    if cache_dir.exists():
        problem = cache_problem(cache_dir)
        if problem is None:
            return
        log.warning(f"the cache {cache_dir} is damaged ({problem}); building it again")
        _discard(cache_dir, problem)
    build()


def cache_problem(cache_dir: Path) -> str | None:
    """What is wrong with a cache on disk (its record unreadable, a file missing or of another size), or None."""
    record = cache_dir / RECORD
    try:
        files = json.loads(record.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{record} is missing or unreadable"
    for name, size in files.items():
        path = cache_dir / name
        actual = path.stat().st_size if path.is_file() else None
        if actual is None:
            return f"{path} is missing"
        if actual != size:
            return f"{path} has {actual:,} bytes, its record says {size:,}"
    return None


def _discard(cache_dir: Path, problem: str) -> None:
    """Move a damaged cache out of the way in one rename (a process may still read it), then delete it."""
    trash = cache_dir.with_name(f"{cache_dir.name}.damaged-{os.getpid()}")
    try:
        os.rename(cache_dir, trash)
    except FileNotFoundError:  # another process (a DDP rank) moved it first
        return
    except OSError as error:
        raise MinibertError(
            f"the cache {cache_dir} is damaged ({problem}) and cannot be removed ({error.strerror}): delete it and run again"
        ) from None
    shutil.rmtree(trash, ignore_errors=True)


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped token and offset arrays of one split: every process (and DataLoader worker) shares the pages."""
    return (
        np.load(cache_dir / f"{split}_tokens.npy", mmap_mode="r"),
        np.load(cache_dir / f"{split}_offsets.npy", mmap_mode="r"),
    )
