"""Word-level tokenizer and vocabulary.

The tokenizer is the reference one: lower-case, put spaces around each punctuation
character of ``,?;.:/*!+-()[]{}"'&``, split on white space. Punctuation marks stay
as tokens of their own, so ``l'Union`` becomes ``["l", "'", "union"]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from minibert.errors import MinibertError

PUNCTUATION = ",?;.:/*!+-()[]{}\"'&"
_PUNCTUATION_RE = re.compile("([" + re.escape(PUNCTUATION) + "])")

# Special tokens have fixed ids at the start of every vocabulary.
PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIAL_TOKENS = (PAD, UNK, MASK)
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2


def tokenize_lines(text: str) -> list[list[str]]:
    """Tokenize many sentences at once, one per line of ``text``.

    Lower-casing and the punctuation regex run once over the whole text, which is
    much faster than calling :func:`tokenize` sentence by sentence.
    """
    spaced = _PUNCTUATION_RE.sub(r" \1 ", text.lower())
    return [line.split() for line in spaced.split("\n")]


def tokenize(text: str) -> list[str]:
    """Return the reference tokens of one sentence.

    >>> tokenize("L'Union a voté à 1.5 % (M. Evans).")
    ['l', "'", 'union', 'a', 'voté', 'à', '1', '.', '5', '%', '(', 'm', '.', 'evans', ')', '.']
    """
    return _PUNCTUATION_RE.sub(r" \1 ", text.lower()).split()


class Vocabulary:
    """A fixed list of words: ``<pad>``, ``<unk>``, ``<mask>``, then words by falling frequency.

    Args:
        words: the ordinary words, most frequent first (special tokens excluded).
        counts: how often each word occurs in the training split, same order as ``words``.
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int]) -> None:
        if len(words) != len(counts):
            raise ValueError("words and counts must have the same length")
        self.itos: list[str] = [*SPECIAL_TOKENS, *words]
        self.counts: list[int] = [0] * len(SPECIAL_TOKENS) + [int(c) for c in counts]
        self.stoi: dict[str, int] = {word: i for i, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique and differ from the special tokens")

    @classmethod
    def from_counts(cls, counts: dict[str, int], vocab_size: int, min_freq: int = 1) -> Vocabulary:
        """Keep the ``vocab_size - 3`` most frequent words seen at least ``min_freq`` times.

        Ties are broken alphabetically, so the same counts always give the same vocabulary.
        """
        if vocab_size <= len(SPECIAL_TOKENS):
            raise MinibertError(
                f"data.vocab_size={vocab_size} leaves no room for words: it counts the "
                f"{len(SPECIAL_TOKENS)} special tokens {', '.join(SPECIAL_TOKENS)}, so it must be at least "
                f"{len(SPECIAL_TOKENS) + 1}"
            )
        ranked = sorted(
            ((word, n) for word, n in counts.items() if n >= min_freq and word not in SPECIAL_TOKENS),
            key=lambda item: (-item[1], item[0]),
        )[: vocab_size - len(SPECIAL_TOKENS)]
        return cls([w for w, _ in ranked], [n for _, n in ranked])

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def num_specials(self) -> int:
        return len(SPECIAL_TOKENS)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(token, UNK_ID) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def require(self, word: str) -> int:
        """The id of ``word``, or a clear error when it is outside the vocabulary."""
        if word not in self.stoi:
            raise MinibertError(f"'{word}' is not in the vocabulary ({len(self)} words): try another word")
        return self.stoi[word]

    # Plain lists only, so a checkpoint that holds the vocabulary loads with weights_only=True.
    def to_dict(self) -> dict[str, list]:
        return {"words": self.itos[self.num_specials :], "counts": self.counts[self.num_specials :]}

    @classmethod
    def from_dict(cls, state: dict[str, list]) -> Vocabulary:
        return cls(state["words"], state["counts"])

    def save(self, path: str | Path) -> None:
        # A plain write: the cache writes it into a temporary folder that it renames whole (machinery/cache.py).
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
