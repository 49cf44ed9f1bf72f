"""Encode a corpus once into memory-mappable arrays.

A cache directory holds, for each split, a flat ``int32`` array of token ids
(``{split}_tokens.npy``) and the start of every sentence in it (``{split}_offsets.npy``,
one more entry than sentences), plus the vocabulary built from the training split
(``vocab.json``, with the word counts). Its name is a hash of everything that changes
its content, so a changed file or setting gets a cache of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from minibert.corpus import read_sentences
from minibert.errors import MinibertError
from minibert.tokenizer import PUNCTUATION, Vocabulary, tokenize_lines

CACHE_FORMAT = 1  # bump when the cache layout or the tokenizer changes
SPLITS = ("train", "val")
_CHUNK = 10_000  # sentences tokenized at once: fast, and bounded in memory


@dataclass(frozen=True)
class CacheSettings:
    """Everything besides the corpus file that changes the cache's content."""

    vocab_size: int
    min_freq: int
    max_sentences: int | None
    val_fraction: float
    seed: int


def cache_key(corpus: Path, settings: CacheSettings) -> str:
    """A name that changes whenever the corpus file (or files) or a setting changes."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file()) if corpus.is_dir() else [corpus]
    identity = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps([CACHE_FORMAT, PUNCTUATION, identity, asdict(settings)], sort_keys=True)
    return f"{corpus.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def build_cache(corpus: Path, settings: CacheSettings, cache_dir: Path) -> None:
    """Tokenize, split, count and encode ``corpus`` into ``cache_dir``.

    Words get provisional ids in order of first appearance while the text streams by,
    so memory holds one int32 per token and one dict entry per distinct word, never
    all the sentences as strings. Once the split is known, the vocabulary is counted
    on the training sentences only and the provisional ids are remapped in one step.
    The cache is written to a temporary directory and renamed when complete.
    """
    provisional: dict[str, int] = {}
    token_chunks: list[np.ndarray] = []
    lengths: list[int] = []
    for sentences in _chunks(islice(read_sentences(corpus), settings.max_sentences), _CHUNK):
        for tokens in tokenize_lines("\n".join(sentences)):
            token_chunks.append(np.fromiter((provisional.setdefault(t, len(provisional)) for t in tokens), np.int32, len(tokens)))
            lengths.append(len(tokens))
    if not lengths:
        raise MinibertError(f"corpus {corpus} has no sentences")

    tokens = np.concatenate(token_chunks)
    del token_chunks
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    is_val = split_mask(len(lengths), settings.val_fraction, settings.seed)
    sentence_of_token = np.repeat(np.arange(len(lengths)), lengths)
    train_counts = np.bincount(tokens[~is_val[sentence_of_token]], minlength=len(provisional))
    del sentence_of_token

    words = list(provisional)
    vocab = Vocabulary.from_counts(dict(zip(words, train_counts.tolist())), settings.vocab_size, settings.min_freq)
    remap = np.fromiter((vocab.stoi.get(w, 1) for w in words), np.int32, len(words))  # 1 = <unk>
    encoded = remap[tokens]

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".tmp-", dir=cache_dir.parent))
    try:
        for split, selected in zip(SPLITS, (~is_val, is_val)):
            split_tokens, split_offsets = _select_sentences(encoded, offsets, selected)
            np.save(tmp / f"{split}_tokens.npy", split_tokens)
            np.save(tmp / f"{split}_offsets.npy", split_offsets)
        vocab.save(tmp / "vocab.json")
        (tmp / "settings.json").write_text(json.dumps({"corpus": str(corpus), **asdict(settings)}, indent=1))
        _publish(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, cache_dir: Path) -> None:
    """Rename the finished ``tmp`` to ``cache_dir``, unless another process got there first.

    Processes started together (``torchrun``, one per GPU) may all build the same cache:
    the first rename wins, and renaming onto the existing, non-empty directory fails for
    the others, who drop their identical copy.
    """
    try:
        os.replace(tmp, cache_dir)
    except OSError:
        if not (cache_dir / "vocab.json").exists():
            raise
        shutil.rmtree(tmp)


def split_mask(num_sentences: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which sentences are validation sentences: a fixed share, chosen by ``seed``."""
    is_val = np.zeros(num_sentences, dtype=bool)
    num_val = round(num_sentences * val_fraction)
    is_val[np.random.default_rng(seed).permutation(num_sentences)[:num_val]] = True
    return is_val


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped token and offset arrays of one split."""
    return (
        np.load(cache_dir / f"{split}_tokens.npy", mmap_mode="r"),
        np.load(cache_dir / f"{split}_offsets.npy", mmap_mode="r"),
    )


def _select_sentences(tokens: np.ndarray, offsets: np.ndarray, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)[selected]
    keep = np.repeat(selected, np.diff(offsets))
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    return tokens[keep], new_offsets


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
