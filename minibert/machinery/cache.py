"""Encode a corpus once into memory-mappable arrays.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from minibert.corpus import read_sentences
from minibert.errors import MinibertError
from minibert.machinery.files import atomic_write
from minibert.tokenizer import PUNCTUATION, UNK_ID, Vocabulary, tokenize_lines

# Bump when the cache layout, the corpus reader or the tokenizer changes (2: the record holds the
# files' sizes; 3: text composed to NFC, \r line ends and byte-order marks read as such).
CACHE_FORMAT = 3
RECORD = "settings.json"  # what the cache was built from, and the size of each of its other files
SPLITS = ("train", "val")
_CHUNK = 2_000  # sentences tokenized at once: fast, and bounded in memory
_BLOCK = 1 << 20  # tokens remapped at once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    """Everything besides the corpus file that changes the cache's content."""

    vocab_size: int
    min_freq: int
    max_sentences: int | None
    val_fraction: float
    seed: int


def cache_key(corpus: Path, settings: CacheSettings, vocab: Vocabulary | None = None) -> str:
    """A name that changes whenever the corpus file (or files), the tokenizer, a setting or a given vocabulary changes."""
    blob = json.dumps([CACHE_FORMAT, PUNCTUATION, _identity(corpus), asdict(settings)], sort_keys=True)
    if vocab is not None:
        blob += vocab_fingerprint(vocab)
    return f"{corpus.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def vocab_fingerprint(vocab: Vocabulary) -> str:
    """A short hash of the vocabulary's words in order: the same words give the same ids."""
    return hashlib.sha256("\n".join(vocab.itos).encode()).hexdigest()[:16]


def _identity(corpus: Path) -> list[tuple[str, int, int]]:
    """Path, size and modification time of every file of ``corpus``: any edit changes it."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file()) if corpus.is_dir() else [corpus]
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def build_cache(
    corpus: Path, settings: CacheSettings, cache_dir: Path, vocab: Vocabulary | None = None
) -> None:
    """Tokenize, split, count and encode ``corpus`` into ``cache_dir``.

    ``vocab``, when given (a checkpoint's), encodes the corpus instead of the vocabulary
    counted on its training split.

    Words get provisional ids in order of first appearance while the text streams by,
    so memory holds one int32 per token and one dict entry per distinct word, never
    all the sentences as strings. Once the split is known, the vocabulary is counted
    on the training sentences only and the provisional ids are remapped in one step.
    """
    provisional: dict[str, int] = {}
    tokens, offsets = _encode_stream(
        corpus, settings.max_sentences, lambda t: provisional.setdefault(t, len(provisional))
    )
    lengths = np.diff(offsets)
    is_val = split_mask(len(lengths), settings.val_fraction, settings.seed)
    # All counts minus the validation ones: no copy of the (large) training part is needed.
    val_tokens = tokens[np.repeat(is_val, lengths)]
    train_counts = np.bincount(tokens, minlength=len(provisional)) - np.bincount(
        val_tokens, minlength=len(provisional)
    )
    del val_tokens

    words = list(provisional)
    provisional.clear()  # its words are in the list now: free the dict
    if vocab is None:
        vocab = Vocabulary.from_counts(
            dict(zip(words, train_counts.tolist())), settings.vocab_size, settings.min_freq
        )
    remap = np.fromiter((vocab.stoi.get(w, UNK_ID) for w in words), np.int32, len(words))
    for block in range(0, len(tokens), _BLOCK):  # provisional ids -> vocabulary ids, in place
        tokens[block : block + _BLOCK] = remap[tokens[block : block + _BLOCK]]
    encoded = tokens

    arrays = {}
    for split, selected in zip(SPLITS, (~is_val, is_val)):
        arrays[f"{split}_tokens"], arrays[f"{split}_offsets"] = _select_sentences(encoded, offsets, selected)
    _write_atomically(cache_dir, arrays, vocab, {"corpus": str(corpus), **asdict(settings)})


def key_for_test_corpus(test_corpus: Path, vocab: Vocabulary) -> str:
    """The name of a test corpus's cache: its identity and the vocabulary that encodes it."""
    blob = json.dumps([CACHE_FORMAT, PUNCTUATION, _identity(test_corpus), vocab_fingerprint(vocab)])
    return f"test-{test_corpus.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def build_test_corpus_cache(test_corpus: Path, vocab: Vocabulary, cache_dir: Path) -> None:
    """Encode all of ``test_corpus`` with the training ``vocab`` into one ``test`` split."""
    tokens, offsets = _encode_stream(test_corpus, None, lambda t: vocab.stoi.get(t, UNK_ID))
    _write_atomically(
        cache_dir, {"test_tokens": tokens, "test_offsets": offsets}, None, {"test_corpus": str(test_corpus)}
    )


def _encode_stream(
    corpus: Path, max_sentences: int | None, token_id: Callable[[str], int]
) -> tuple[np.ndarray, np.ndarray]:
    """All tokens of ``corpus`` as ids given by ``token_id``, (N,) int32, and sentence offsets, (S + 1,) int64.

    The text is tokenized ``_CHUNK`` sentences at a time, so only one chunk of strings
    is alive at once.
    """
    token_chunks: list[np.ndarray] = []
    length_chunks: list[np.ndarray] = []
    for sentences in _chunks(islice(read_sentences(corpus), max_sentences), _CHUNK):
        tokenized = tokenize_lines("\n".join(sentences))
        length_chunks.append(np.fromiter(map(len, tokenized), np.int64, len(tokenized)))
        flat = [token for sentence in tokenized for token in sentence]
        token_chunks.append(np.fromiter(map(token_id, flat), np.int32, len(flat)))
    if not length_chunks:
        raise MinibertError(f"corpus {corpus} has no sentences (it is empty or holds only blank lines)")
    offsets = np.zeros(sum(map(len, length_chunks)) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(length_chunks), out=offsets[1:])
    return np.concatenate(token_chunks), offsets


def _write_atomically(
    cache_dir: Path, arrays: dict[str, np.ndarray], vocab: Vocabulary | None, settings: dict
) -> None:
    """Write a cache into a temporary directory, then rename it to ``cache_dir`` if that is still absent.

    A reader therefore sees a complete cache or none. When another process (a DDP rank, a
    second run) finished the same cache first, its copy is kept: same key, same content.
    A write that fails (a full disk) leaves nothing behind and is said in one line.
    """
    tmp = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".tmp-", dir=cache_dir.parent))
        for name, array in arrays.items():
            with atomic_write(tmp / f"{name}.npy", "wb") as file:
                np.save(file, array)
        if vocab is not None:
            vocab.save(tmp / "vocab.json")
        files = {path.name: path.stat().st_size for path in sorted(tmp.iterdir())}
        with atomic_write(tmp / RECORD, encoding="utf-8") as file:
            file.write(json.dumps({**settings, "files": files}, indent=1))
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


def _select_sentences(
    tokens: np.ndarray, offsets: np.ndarray, selected: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)[selected]
    keep = np.repeat(selected, np.diff(offsets))
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    return tokens[keep], new_offsets


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
