"""Attention maps: where each token of a sentence looks, in every layer and head, as a picture.

The grid has one row a layer and one column a head. In each small map, row i is the token
that looks (the query) and column j the token it looks at (the key); the colour is the
attention weight, from 0 (dark) to 1 (bright), the same scale in every map. The weights are
the encoder's own (:func:`minibert.explore.internals.record_internals`).

    lightning attention --ckpt_path checkpoints/last.ckpt "la commission a voté le rapport ." --out attention.png
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from minibert.explore.figures import require_matplotlib
from minibert.explore.internals import encode_words, record_internals, unknown_tokens
from minibert.model import Encoder
from minibert.tokenizer import Vocabulary

UNKNOWN_MARK = "*"  # after a word the model reads as <unk>


def attention_maps(encoder: Encoder, vocab: Vocabulary, text: str, seq_len: int) -> tuple[list[str], Tensor]:
    """The labels of the sentence's tokens and its attention weights (L, H, T, T).

    A word outside the vocabulary is labelled with a trailing ``*``: the model read ``<unk>``.
    """
    tokens, input_ids = encode_words(vocab, text, seq_len)  # (1, T)
    device = next(encoder.parameters()).device
    attention = record_internals(encoder, input_ids.to(device)).attention  # L x (1, H, T, T)
    unknown = set(unknown_tokens(vocab, tokens))
    labels = [token + UNKNOWN_MARK if token in unknown else token for token in tokens]
    return labels, torch.cat(attention).cpu()  # (L, H, T, T)


def draw_attention(weights: Tensor, labels: Sequence[str], title: str):
    """A matplotlib Figure of the (L, H, T, T) weights: layers as rows, heads as columns.

    Token labels are written once per row of maps (the queries, on the left) and once per
    column (the keys, at the bottom), so that they stay readable in large grids.
    """
    figure_class = require_matplotlib()
    num_layers, num_heads, T, _ = weights.shape
    cell = max(1.6, 0.16 * T + 0.8)  # inches a map: room for T labels of 7-point text
    figure = figure_class(figsize=(num_heads * cell + 1.6, num_layers * cell + 1.2), layout="constrained")
    grid = figure.subplots(num_layers, num_heads, squeeze=False)
    for layer in range(num_layers):
        for head in range(num_heads):
            axes = grid[layer, head]
            image = axes.imshow(
                weights[layer, head].float().numpy(),
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                interpolation="nearest",
            )
            axes.set_xticks(range(T), labels if layer == num_layers - 1 else [], rotation=90, fontsize=7)
            axes.set_yticks(range(T), labels if head == 0 else [], fontsize=7)
            if layer == 0:
                axes.set_title(f"head {head + 1}", fontsize=9)
            if head == 0:
                axes.set_ylabel(f"layer {layer + 1}", fontsize=9)
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention weight")
    figure.suptitle(f"{title}\nrow: the token that looks; column: where it looks", fontsize=10)
    return figure
