"""A map of words: their vectors drawn in two dimensions (``export --png``), each point labelled, coloured by group.

The two dimensions are the vectors' two main axes of variance (PCA over the drawn words
only): words the model treats alike land near each other. A groups file (days, months,
countries...) picks the words and colours them; without one, the most frequent words are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from minibert.errors import MinibertError
from minibert.explore.embeddings import top_word_ids
from minibert.explore.figures import require_matplotlib, save_figure
from minibert.tokenizer import Vocabulary

PNG_NEEDS = "drawing a picture (--png)"


def picture_words(
    vocab: Vocabulary, groups: dict[str, list[str]] | None, top: int, groups_path: Path | None
) -> tuple[list[str], list[str]]:
    """The words to draw and their group names: the groups' words that the model knows, or the ``top`` most frequent."""
    if groups is None:
        words = vocab.decode(top_word_ids(vocab, top))
        return words, ["most frequent words"] * len(words)
    chosen = [(word, name) for name, words in groups.items() for word in words]
    left_out = [word for word, _ in chosen if word not in vocab.stoi]
    if left_out:
        print(f"not in the vocabulary, left out of the picture: {' '.join(left_out)}")
    kept = [(word, name) for word, name in chosen if word in vocab.stoi]
    if len(kept) < 2:
        raise MinibertError(f"groups file {groups_path}: fewer than 2 of its words are in the vocabulary")
    return [word for word, _ in kept], [name for _, name in kept]


def pca_2d(vectors: Tensor) -> Tensor:
    """The (N, D) vectors' coordinates on their two main axes of variance, (N, 2)."""
    centered = vectors.detach().float() - vectors.detach().float().mean(dim=0)  # (N, D)
    # pca_lowrank is randomised: a fixed seed draws the same map every time. Asking for a
    # few more axes than the two kept makes those two accurate.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, axes = torch.pca_lowrank(centered, q=min(6, *centered.shape), center=False)  # (D, q)
    return centered @ axes[:, :2]  # (N, 2)


def draw_map(
    png: str | Path, coords: Tensor, words: Sequence[str], groups: Sequence[str], title: str
) -> None:
    """Save a scatter plot of ``coords`` (N, 2), each point labelled with its word, coloured by group."""
    figure_class = require_matplotlib(PNG_NEEDS)
    figure = figure_class(figsize=(10, 8), layout="constrained")
    axes = figure.add_subplot()  # a bare Figure, not pyplot: no window, no global state
    for group in dict.fromkeys(groups):  # each group once, in order of first appearance
        rows = [i for i, g in enumerate(groups) if g == group]
        points = axes.scatter(coords[rows, 0], coords[rows, 1], s=14, label=group)
        for i in rows:
            axes.annotate(
                words[i],
                coords[i].tolist(),
                fontsize=7,
                color=points.get_facecolor()[0],
                xytext=(2, 2),
                textcoords="offset points",
            )
    axes.set(title=title, xlabel="first principal axis", ylabel="second principal axis")
    if len(set(groups)) > 1:
        axes.legend(fontsize=8, markerscale=1.5)
    save_figure(figure, png)
