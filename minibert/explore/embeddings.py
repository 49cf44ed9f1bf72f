"""Which word vectors to look at: the input embeddings or the output layer's rows, of the most frequent words."""

from __future__ import annotations

from torch import Tensor, nn

from minibert.tokenizer import Vocabulary


def embedding_matrix(encoder: nn.Module, source: str) -> Tensor:
    """The (V, D) matrix to look at: ``input`` word embeddings, or the ``output`` head's rows.

    With tied embeddings the head's weight *is* the input matrix, so both give the same numbers.
    """
    if source == "input":
        return encoder.token_embedding.weight
    if source == "output":
        return encoder.lm_head.weight
    raise ValueError(f"embedding source must be 'input' or 'output', not {source!r}")


def top_word_ids(vocab: Vocabulary, top_k: int) -> list[int]:
    """Ids of the ``top_k`` most frequent ordinary words (all of them when ``top_k`` is 0)."""
    first = vocab.num_specials
    last = len(vocab) if top_k == 0 else min(len(vocab), first + top_k)
    return list(range(first, last))  # the vocabulary is ordered by falling frequency
