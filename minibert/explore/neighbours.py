"""Nearest neighbours by cosine similarity: the one search behind ``neighbors``, words in context,
purity@k and analogies.

Cosine similarity compares directions, not lengths: every vector is scaled to length 1, and
the similarity of two vectors is then their dot product, from -1 (opposite) to 1 (the same
direction). One matrix product scores every query against every row at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from minibert.tokenizer import Vocabulary


def nearest(
    queries: Tensor, vectors: Tensor, k: int, specials: int = 0, excluded: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of vectors (N, D) closest to each of queries (Q, D) by cosine similarity, best first.

    Args:
        queries: (Q, D) the vectors whose neighbours are wanted.
        vectors: (N, D) the candidates.
        k: neighbours per query; fewer when fewer rows are left.
        specials: rows ``0 .. specials - 1`` (the special tokens) are never neighbours.
        excluded: (Q, E) rows that are never neighbours of their query: the word itself, say.

    Returns:
        ``(scores, rows)``, both (Q, k): the similarities and the rows they belong to.
    """
    unit_queries = F.normalize(queries.detach().float(), dim=-1)  # (Q, D), rows of length 1
    unit_vectors = F.normalize(vectors.detach().float(), dim=-1)  # (N, D)
    similarity = unit_queries @ unit_vectors.T  # (Q, N) cosine similarities
    left_out = torch.zeros_like(similarity, dtype=torch.bool)  # (Q, N)
    left_out[:, :specials] = True
    if excluded is not None:
        left_out.scatter_(1, excluded, True)
    similarity.masked_fill_(left_out, -torch.inf)
    candidates = len(vectors) - max(left_out.sum(dim=-1).tolist(), default=0)  # left to every query
    top = similarity.topk(min(k, candidates), dim=-1)
    return top.values, top.indices


def nearest_words(matrix: Tensor, vocab: Vocabulary, word: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` ordinary words closest to ``word`` by cosine similarity, with their scores."""
    query = vocab.require(word)
    # Special tokens are not words to show, nor is the word itself.
    scores, rows = nearest(matrix[query][None], matrix, k, vocab.num_specials, torch.tensor([[query]]))
    return [(vocab.itos[i], s) for s, i in zip(scores[0].tolist(), rows[0].tolist())]
