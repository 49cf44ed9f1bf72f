"""The encoder against references: hand-computed positions and torch.nn.TransformerEncoderLayer."""

from __future__ import annotations

import math

import pytest
import torch

from minibert.errors import MinibertError
from minibert.fast import FastEncoder, use_fast_kernels
from minibert.model import Encoder, EncoderConfig, EncoderLayer, sinusoidal_positions

D, H, F_DIM, V, T = 16, 4, 32, 50, 7


def config(**options) -> EncoderConfig:
    settings = dict(
        vocab_size=V, seq_len=T, embed_dim=D, num_heads=H, num_layers=2, ff_dim=F_DIM, dropout=0.0
    )
    return EncoderConfig(**{**settings, **options})


def small_encoder(encoder_class: type[Encoder] = Encoder, **options) -> Encoder:
    return encoder_class(config(**options)).eval()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences: no padding, two pads at the end, all padding but the first token."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, T), generator=generator)
    padding = torch.zeros(3, T, dtype=torch.bool)
    padding[1, -2:] = True
    padding[2, 1:] = True
    return ids.masked_fill(padding, 0), padding


# --- positional encoding ------------------------------------------------------------------


def test_positions_match_hand_computed_values():
    pe = sinusoidal_positions(3, 4)
    # D = 4: dims 0 and 1 use 10000^(0/4) = 1, dims 2 and 3 use 10000^(2/4) = 100.
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],  # pos 0: sin 0, cos 0, sin 0, cos 0
            [0.8414710, 0.5403023, 0.0099998, 0.9999500],  # pos 1: sin 1, cos 1, sin .01, cos .01
            [0.9092974, -0.4161468, 0.0199987, 0.9998000],  # pos 2: sin 2, cos 2, sin .02, cos .02
        ]
    )
    torch.testing.assert_close(pe, expected, atol=1e-6, rtol=0)


def test_positions_wavelengths_use_the_even_dimension_itself():
    # dim 6 of D = 8 is 2i = 6: pos / 10000^(6/8); the reference's bug gave 10000^(12/8).
    pe = sinusoidal_positions(50, 8)
    assert pe[37, 6].item() == pytest.approx(math.sin(37 / 10_000 ** (6 / 8)), abs=1e-6)
    assert pe[37, 7].item() == pytest.approx(math.cos(37 / 10_000 ** (6 / 8)), abs=1e-6)


def test_positions_are_a_buffer_not_a_parameter():
    encoder = small_encoder()
    assert "positions" in dict(encoder.named_buffers())
    assert not any("position" in name for name, _ in encoder.named_parameters())


# --- one layer against PyTorch's ---------------------------------------------------------


def torch_twin(layer: EncoderLayer, activation: str) -> torch.nn.TransformerEncoderLayer:
    """PyTorch's pre-norm layer holding a copy of ``layer``'s weights."""
    twin = torch.nn.TransformerEncoderLayer(
        D, H, F_DIM, dropout=0.0, activation=activation, batch_first=True, norm_first=True
    )
    pairs = {
        "self_attn.in_proj_weight": layer.attn.qkv.weight,  # both stack q, k, v in that order
        "self_attn.in_proj_bias": layer.attn.qkv.bias,
        "self_attn.out_proj.weight": layer.attn.out_proj.weight,
        "self_attn.out_proj.bias": layer.attn.out_proj.bias,
        "linear1.weight": layer.ff.up.weight,
        "linear1.bias": layer.ff.up.bias,
        "linear2.weight": layer.ff.down.weight,
        "linear2.bias": layer.ff.down.bias,
        "norm1.weight": layer.norm1.weight,
        "norm1.bias": layer.norm1.bias,
        "norm2.weight": layer.norm2.weight,
        "norm2.bias": layer.norm2.bias,
    }
    twin.load_state_dict({name: value.detach().clone() for name, value in pairs.items()})
    return twin.eval()


def random_layer(activation: str, fast: bool) -> EncoderLayer:
    torch.manual_seed(0)
    layer = EncoderLayer(config(activation=activation)).eval()
    if fast:
        use_fast_kernels(layer)
    with torch.no_grad():  # non-trivial norms and biases, so that every copied tensor matters
        for name, p in layer.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name and "weight" in name else 0.0))
    return layer


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("grad_enabled", [True, False], ids=["slow_path", "fast_path"])
def test_layer_equals_torch_transformer_encoder_layer(activation, fast, grad_enabled):
    layer = random_layer(activation, fast)
    twin = torch_twin(layer, activation)
    x = torch.randn(3, T, D)
    _, padding = batch()
    padding = padding.clone()
    padding[2] = False  # PyTorch's layer gives NaN on an all-padding row; ours is tested below
    padding[2, 3:] = True
    # Without autograd PyTorch takes its fused "fast path", which returns zeros at padded
    # positions; those are never used, so only real positions are compared.
    with torch.set_grad_enabled(grad_enabled):
        torch.testing.assert_close(layer(x), twin(x), atol=1e-5, rtol=0)
        ours = layer(x, ~padding[:, None, None, :])
        theirs = twin(x, src_key_padding_mask=padding)
    torch.testing.assert_close(ours[~padding], theirs[~padding], atol=1e-5, rtol=0)


# --- the padding mask, in the plain encoder and in the fast one ------------------------------


@pytest.mark.parametrize("encoder_class", [Encoder, FastEncoder], ids=["plain", "fast"])
def test_padding_gets_zero_attention_weight(encoder_class):
    # If padding had any weight, changing what sits there would change the real positions.
    encoder = small_encoder(encoder_class)
    ids, padding = batch()
    other = ids.masked_fill(padding, 7)
    real = ~padding
    torch.testing.assert_close(encoder(ids, padding)[real], encoder(other, padding)[real], atol=1e-6, rtol=0)
    assert not torch.allclose(encoder(ids)[real], encoder(other)[real], atol=1e-3)  # the check can fail


@pytest.mark.parametrize("encoder_class", [Encoder, FastEncoder], ids=["plain", "fast"])
def test_all_padding_row_gives_no_nan(encoder_class):
    encoder = small_encoder(encoder_class).train()
    ids = torch.randint(3, V, (2, T))
    padding = torch.zeros(2, T, dtype=torch.bool)
    padding[1] = True
    hidden = encoder(ids, padding)
    hidden[0].sum().backward()
    assert torch.isfinite(hidden).all()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("encoder_class", [Encoder, FastEncoder], ids=["plain", "fast"])
def test_all_false_padding_mask_changes_nothing(encoder_class):
    encoder = small_encoder(encoder_class)
    ids = torch.randint(3, V, (4, T))
    no_padding = torch.zeros(4, T, dtype=torch.bool)
    torch.testing.assert_close(encoder(ids, no_padding), encoder(ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_rows_keep_the_hidden_states_of_those_positions(layers):
    encoder = small_encoder(num_layers=layers)
    ids, padding = batch()
    rows = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    hidden = encoder(ids, padding, scored=rows)
    assert hidden.shape == (int(rows.sum()), D)
    torch.testing.assert_close(hidden, encoder(ids, padding)[rows], atol=0, rtol=0)


# --- gradients and options ------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_gradients_reach_every_parameter(tie):
    encoder = small_encoder(tie_embeddings=tie).train()
    ids, padding = batch()
    encoder.logits(encoder(ids, padding)).logsumexp(-1)[~padding].sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tie_embeddings_shares_one_matrix():
    untied, tied = small_encoder(), small_encoder(tie_embeddings=True)
    assert tied.lm_head.weight is tied.token_embedding.weight
    assert untied.lm_head.weight is not untied.token_embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == V * D


def test_bias_false_leaves_no_bias_anywhere():
    encoder = small_encoder(bias=False)
    names = [name for name, _ in encoder.named_parameters()]
    assert not [name for name in names if "bias" in name]
    assert any("norm" in name for name in names)  # LayerNorms keep their gain
    with_bias = small_encoder()
    assert sum(p.numel() for p in with_bias.parameters()) > sum(p.numel() for p in encoder.parameters())


def test_bert_initialisation_is_small_with_zero_biases():
    encoder = small_encoder(vocab_size=2000, init_std=0.02)
    assert encoder.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(
        (p == 0).all()
        for name, p in encoder.named_parameters()
        if name.endswith("bias") and "norm" not in name
    )
    default = small_encoder(vocab_size=2000, init_std=None)  # PyTorch's N(0, 1) embedding
    assert default.token_embedding.weight.std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("scale", [False, True])
def test_input_is_word_vector_plus_position(scale):
    encoder = small_encoder(num_layers=0, scale_embeddings=scale)  # only the final LayerNorm is left
    ids, _ = batch()
    words = encoder.token_embedding.weight[ids] * (math.sqrt(D) if scale else 1.0)
    expected = encoder.final_norm(words + sinusoidal_positions(T, D))
    torch.testing.assert_close(encoder(ids), expected)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(MinibertError, match="seq_len=7"):
        small_encoder()(torch.zeros(1, T + 1, dtype=torch.long))
    with pytest.raises(MinibertError, match="model.embed_dim=16 must be divisible by model.num_heads=3"):
        small_encoder(num_heads=3)
    with pytest.raises(MinibertError, match=r"model.dropout=1.0 must be in \[0, 1\)"):
        small_encoder(dropout=1.0)


# --- size of the reference model ------------------------------------------------------------


def test_base_parameter_count_matches_the_formula():
    v, d, layers, f = 40_003, 128, 8, 512
    embedding = v * d
    attention = (d * 3 * d + 3 * d) + (d * d + d)  # fused qkv + output projection
    feed_forward = (d * f + f) + (f * d + d)
    norms = 2 * (2 * d)  # two LayerNorms (gain + shift) per layer
    per_layer = attention + feed_forward + norms
    head = d * v + v
    expected = embedding + layers * per_layer + 2 * d + head  # + the final LayerNorm
    encoder = Encoder(
        EncoderConfig(
            vocab_size=v, seq_len=20, embed_dim=d, num_heads=8, num_layers=layers, ff_dim=f, dropout=0.1
        )
    )
    counted = sum(p.numel() for p in encoder.parameters())
    print(
        f"\nbase configuration: {counted:,} parameters (formula {expected:,}; {layers} layers x {per_layer:,}, embedding {embedding:,}, head {head:,})"
    )
    assert counted == expected == 11_867_203
