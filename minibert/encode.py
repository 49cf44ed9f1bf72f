"""From text to token ids, once: read, split, count, encode, store.

The first steps of the data path (:mod:`minibert.data` strings them all together):

1. read: the corpus's sentences stream in (:mod:`minibert.corpus`) and are cut into words
   (:mod:`minibert.tokenizer`); each word gets a provisional id, in order of first appearance;
2. split: a fixed share of the sentences, chosen by the seed, is held out for validation;
3. count: the words of the training sentences, which make the vocabulary
   (:meth:`minibert.tokenizer.Vocabulary.from_counts`);
4. encode: every provisional id becomes its word's id in the vocabulary;
5. store: the arrays of both splits are written once into ``data_dir/cache/`` and memory-mapped
   from then on (:mod:`minibert.machinery.cache`, which only keeps them).

Steps 1 to 4 stream: memory holds one int32 per token and one entry per distinct word, never all
the sentences as strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from minibert.corpus import read_sentences
from minibert.errors import MinibertError
from minibert.machinery.cache import write_cache
from minibert.tokenizer import UNK_ID, Vocabulary, tokenize_lines

SPLITS = ("train", "val")
_CHUNK = 2_000  # sentences tokenized at once: fast, and bounded in memory
_BLOCK = 1 << 20  # tokens re-encoded at once


@dataclass(frozen=True)
class EncodingSettings:
    """Every option besides the corpus that changes its encoded arrays (and so the name of their cache)."""

    vocab_size: int
    min_freq: int
    max_sentences: int | None
    val_fraction: float
    seed: int


# --- 1. read -------------------------------------------------------------------------------------


def read_token_ids(
    corpus: Path, max_sentences: int | None, token_id: Callable[[str], int]
) -> tuple[np.ndarray, np.ndarray]:
    """Every token of ``corpus`` as the id ``token_id`` gives it, (N,) int32, and where each sentence starts, (S + 1,) int64.

    The text is tokenized ``_CHUNK`` sentences at a time, so only one chunk of strings is alive
    at once. Sentence ``s`` is ``tokens[offsets[s] : offsets[s + 1]]``.
    """
    token_chunks: list[np.ndarray] = []
    length_chunks: list[np.ndarray] = []
    for sentences in _chunks(islice(read_sentences(corpus), max_sentences), _CHUNK):
        tokenized = tokenize_lines("\n".join(sentences))  # one list of words per sentence
        length_chunks.append(np.fromiter(map(len, tokenized), np.int64, len(tokenized)))
        flat = [token for sentence in tokenized for token in sentence]
        token_chunks.append(np.fromiter(map(token_id, flat), np.int32, len(flat)))
    if not length_chunks:
        raise MinibertError(f"corpus {corpus} has no sentences (it is empty or holds only blank lines)")
    offsets = np.zeros(sum(map(len, length_chunks)) + 1, dtype=np.int64)  # (S + 1,)
    np.cumsum(np.concatenate(length_chunks), out=offsets[1:])
    return np.concatenate(token_chunks), offsets


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


# --- 2. split ------------------------------------------------------------------------------------


def split_mask(num_sentences: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which sentences are validation sentences, (S,) bool: a fixed share, chosen by ``seed``.

    The split is by sentence, before any window is cut: no validation sentence is ever trained on.
    """
    is_val = np.zeros(num_sentences, dtype=bool)
    num_val = round(num_sentences * val_fraction)
    is_val[np.random.default_rng(seed).permutation(num_sentences)[:num_val]] = True
    return is_val


# --- 3. count ------------------------------------------------------------------------------------


def count_training_words(
    tokens: np.ndarray, offsets: np.ndarray, is_val: np.ndarray, num_words: int
) -> np.ndarray:
    """How often each word occurs in the training sentences, (W,) int64, indexed by provisional id.

    All counts minus the validation ones: no copy of the (large) training part is needed.
    """
    val_tokens = tokens[np.repeat(is_val, np.diff(offsets))]  # (N_val,)
    return np.bincount(tokens, minlength=num_words) - np.bincount(val_tokens, minlength=num_words)


# --- 4. encode -----------------------------------------------------------------------------------


def encode(tokens: np.ndarray, words: list[str], vocab: Vocabulary) -> np.ndarray:
    """Turn provisional ids into vocabulary ids, in place, (N,) int32; a word outside the vocabulary becomes ``<unk>``.

    ``words[i]`` is the word of provisional id ``i``. One lookup per distinct word, then one
    vectorised step per block of tokens: no second array of N tokens is made.
    """
    remap = np.fromiter((vocab.stoi.get(w, UNK_ID) for w in words), np.int32, len(words))  # (W,)
    for block in range(0, len(tokens), _BLOCK):
        tokens[block : block + _BLOCK] = remap[tokens[block : block + _BLOCK]]
    return tokens


def select_sentences(
    tokens: np.ndarray, offsets: np.ndarray, selected: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of the ``selected`` sentences, (N',) int32, and their offsets, (S' + 1,) int64."""
    lengths = np.diff(offsets)[selected]  # (S',)
    keep = np.repeat(selected, np.diff(offsets))  # (N,) bool: the tokens of the selected sentences
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    return tokens[keep], new_offsets


def encode_corpus(
    corpus: Path, settings: EncodingSettings, vocab: Vocabulary | None = None
) -> tuple[dict[str, np.ndarray], Vocabulary]:
    """Steps 1 to 4: the token and offset arrays of both splits (``train_tokens``, ``val_offsets``, ...), and the vocabulary.

    Args:
        corpus: a sentence-per-line file (plain or ``.gz``), a raw session file or a folder of them.
        settings: the options that shape the arrays.
        vocab: a vocabulary to encode with (a checkpoint's), instead of the one counted on
            the training split.
    """
    # Provisional ids in order of first appearance, while the text streams by: the vocabulary
    # can only be counted once the split is known, and the split once every sentence is read.
    provisional: dict[str, int] = {}
    tokens, offsets = read_token_ids(
        corpus, settings.max_sentences, lambda word: provisional.setdefault(word, len(provisional))
    )  # (N,), (S + 1,)
    is_val = split_mask(len(offsets) - 1, settings.val_fraction, settings.seed)  # (S,)
    train_counts = count_training_words(tokens, offsets, is_val, len(provisional))  # (W,)
    words = list(provisional)
    provisional.clear()  # its words are in the list now: free the dict
    if vocab is None:
        vocab = Vocabulary.from_counts(
            dict(zip(words, train_counts.tolist())), settings.vocab_size, settings.min_freq
        )
    encode(tokens, words, vocab)
    arrays = {}
    for split, selected in zip(SPLITS, (~is_val, is_val)):
        arrays[f"{split}_tokens"], arrays[f"{split}_offsets"] = select_sentences(tokens, offsets, selected)
    return arrays, vocab


# --- 5. store ------------------------------------------------------------------------------------


def build_cache(
    corpus: Path, settings: EncodingSettings, cache_dir: Path, vocab: Vocabulary | None = None
) -> None:
    """Encode ``corpus`` (:func:`encode_corpus`) and store its arrays and vocabulary in ``cache_dir``, whole or not at all."""
    arrays, vocab = encode_corpus(corpus, settings, vocab)
    write_cache(cache_dir, arrays, {"corpus": str(corpus), **asdict(settings)}, vocab)


def build_test_corpus_cache(test_corpus: Path, vocab: Vocabulary, cache_dir: Path) -> None:
    """Encode all of ``test_corpus`` with the training ``vocab`` into one ``test`` split, stored in ``cache_dir``."""
    tokens, offsets = read_token_ids(test_corpus, None, lambda word: vocab.stoi.get(word, UNK_ID))
    write_cache(
        cache_dir, {"test_tokens": tokens, "test_offsets": offsets}, {"test_corpus": str(test_corpus)}
    )
