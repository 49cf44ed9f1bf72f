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
    column (the keys, at the bottom), so that they stay readable in large grids. The maps are
    one image, a mosaic with a blank line between them, on one pair of axes: drawing 64 axes
    of their own took 3 seconds a sentence, at every validation of a training run.
    """
    figure_class = require_matplotlib()
    from matplotlib import colormaps

    num_layers, num_heads, T, _ = weights.shape
    step = T + 1  # a map and the blank line after it
    mosaic = torch.full((num_layers * step - 1, num_heads * step - 1), float("nan"))
    for layer in range(num_layers):
        for head in range(num_heads):
            mosaic[layer * step : layer * step + T, head * step : head * step + T] = weights[layer, head]
    cell = max(1.6, 0.16 * T + 0.8)  # inches a map: room for T labels of 7-point text
    figure = figure_class(figsize=(num_heads * cell + 1.6, num_layers * cell + 1.2), layout="constrained")
    axes = figure.add_subplot()
    colours = colormaps["viridis"].with_extremes(bad="white")  # the blank lines between maps
    image = axes.imshow(mosaic.numpy(), vmin=0.0, vmax=1.0, cmap=colours, interpolation="nearest")
    columns = [head * step for head in range(num_heads)]  # where each map starts, across and down
    rows = [layer * step for layer in range(num_layers)]
    axes.set_xticks(
        [c + j for c in columns for j in range(T)], list(labels) * num_heads, rotation=90, fontsize=7
    )
    axes.set_yticks([r + i for r in rows for i in range(T)], list(labels) * num_layers, fontsize=7)
    middle = (T - 1) / 2
    heads = axes.secondary_xaxis("top")
    heads.set_xticks([c + middle for c in columns], [f"head {h + 1}" for h in range(num_heads)], fontsize=9)
    layers = axes.secondary_yaxis("right")
    layer_names = [f"layer {layer + 1}" for layer in range(num_layers)]
    layers.set_yticks([r + middle for r in rows], layer_names, fontsize=9, rotation=90, va="center")
    for side in (axes, heads, layers):
        side.tick_params(length=0)
        for spine in side.spines.values():
            spine.set_visible(False)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    figure.suptitle(f"{title}\nrow: the token that looks; column: where it looks", fontsize=10)
    return figure
