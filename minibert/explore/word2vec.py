"""Word vectors in word2vec's text format, which gensim's ``KeyedVectors.load_word2vec_format`` reads.

The first line is ``<number of words> <dimensions>``, then one line a word: the word and its
numbers, separated by single spaces. Tokens never hold white space (the tokenizer splits on
it), so every line reads back as one word and its vector.

    lightning export --ckpt_path checkpoints/last.ckpt --format word2vec --out vectors.txt
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from minibert.explore.projector import vector_rows
from minibert.machinery.files import atomic_write


def write_word2vec(path: str | Path, vectors: Tensor, words: Sequence[str]) -> None:
    """Write vectors (N, D) and their N words to ``path``, whole or not at all."""
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{vectors.shape[0]} vectors and {len(words)} words must match")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, encoding="utf-8", newline="\n") as file:
        file.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        file.write(vector_rows(vectors, " ", words))
