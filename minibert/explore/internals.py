"""What the encoder computes on the way: each layer's attention weights and output.

One forward pass of the encoder itself, watched by hooks, so that what is shown is what the
model computes (the fused attention path included: the weights are recomputed from the same
queries and keys by :meth:`minibert.model.MultiHeadSelfAttention.weights`, the explicit
path's own code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minibert.errors import MinibertError
from minibert.model import Encoder
from minibert.tokenizer import Vocabulary, tokenize


@dataclass
class Internals:
    """What one forward pass went through.

    Attributes:
        hidden: ``num_layers + 1`` tensors (B, T, D): ``hidden[0]`` is the input of the first
            layer (word vectors plus positions), ``hidden[L]`` the output of layer L (the
            residual stream that the next layer reads, before the final LayerNorm).
        attention: ``num_layers`` tensors (B, H, T, T), float32: ``attention[L - 1][b, h, i, j]``
            is how much token i takes from token j in head h of layer L; each row sums to 1,
            padding columns are 0.
    """

    hidden: list[Tensor]
    attention: list[Tensor]


def record_internals(encoder: Encoder, input_ids: Tensor, padding_mask: Tensor | None = None) -> Internals:
    """Run ``encoder`` on input_ids (B, T) in eval mode, without gradients, and record its internals."""
    hidden: list[Tensor] = []
    attention: list[Tensor] = []

    def layer_input(layer, args):  # args: (x, attend) as EncoderLayer.forward receives them
        if not hidden:
            hidden.append(args[0])

    def layer_output(layer, args, output):
        hidden.append(output)

    def attention_input(attn, args):  # args: (the normalised x, attend)
        q, k, _ = attn.heads(args[0])
        attention.append(attn.weights(q, k, args[1] if len(args) > 1 else None))

    handles = []
    for layer in encoder.layers:
        handles += [
            layer.register_forward_pre_hook(layer_input),
            layer.register_forward_hook(layer_output),
            layer.attn.register_forward_pre_hook(attention_input),
        ]
    was_training = encoder.training
    try:
        with torch.no_grad():
            encoder.eval()  # no dropout: the weights a reader sees are the ones the model uses
            encoder(input_ids, padding_mask)
    finally:
        encoder.train(was_training)
        for handle in handles:
            handle.remove()
    return Internals(hidden, attention)


def encode_words(vocab: Vocabulary, text: str, seq_len: int) -> tuple[list[str], Tensor]:
    """The tokens of one sentence and their ids (1, T), refusing what the model cannot read.

    Words outside the vocabulary are read as ``<unk>`` (see :func:`unknown_tokens`).
    """
    tokens = tokenize(text)
    if not tokens:
        raise MinibertError(f"the text {text!r} has no words")
    if len(tokens) > seq_len:
        raise MinibertError(f"the text has {len(tokens)} tokens; this model reads at most {seq_len}")
    return tokens, torch.tensor([vocab.encode(tokens)])


def unknown_tokens(vocab: Vocabulary, tokens: list[str]) -> list[str]:
    """The tokens that the model reads as ``<unk>``."""
    return [token for token in tokens if token not in vocab.stoi]


def check_layer(layer: int, num_layers: int) -> int:
    """``layer`` if it is one of 0 (the input) to ``num_layers``, else a clear error."""
    if not 0 <= layer <= num_layers:
        raise MinibertError(
            f"--layer {layer} does not exist: this model has layers 1 to {num_layers} (0 is the input embeddings)"
        )
    return layer
