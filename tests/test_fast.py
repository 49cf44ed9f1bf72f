"""minibert.fast computes what minibert.model computes: the same outputs, gradients and dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minibert import fast, model
from minibert.fast import (
    COMPILE_FROM_ELEMENTS,
    ROW_MULTIPLE,
    CpuDropout,
    CpuLayerNorm,
    FastEncoder,
    FastEncoderLayer,
    FusedSelfAttention,
    TiedEmbedding,
    c_dropout,
    compiled_dropout_scale,
    dropout_scale,
    random_words,
)
from minibert.fused_loss import WeightGradient
from minibert.machinery.c_library import CLibrary, SwitchedOff
from minibert.model import Encoder, EncoderConfig, MultiHeadSelfAttention

D, H, F_DIM, V, T = 16, 4, 32, 50, 7


def twins(**options) -> tuple[Encoder, FastEncoder]:
    """A plain and a fast encoder with the same weights (drawn from the same seed)."""
    config = EncoderConfig(
        **{
            **dict(
                vocab_size=V,
                seq_len=T,
                embed_dim=D,
                num_heads=H,
                num_layers=3,
                ff_dim=F_DIM,
                dropout=0.0,
                init_std=0.2,
            ),
            **options,
        }
    )
    torch.manual_seed(0)
    plain = Encoder(config)
    torch.manual_seed(0)
    fast = FastEncoder(config)
    return plain, fast


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (4, T), padding (B, T) with two pads in one row and all but one in another, scored rows (B, T)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (4, T), generator=generator)
    padding = torch.zeros(4, T, dtype=torch.bool)
    padding[1, -2:] = True
    padding[2, 1:] = True
    rows = (torch.rand(4, T, generator=generator) < 0.3) & ~padding
    return ids.masked_fill(padding, 0), padding, rows


def test_both_encoders_hold_the_same_weights_under_the_same_names():
    plain, fast = twins()
    assert plain.state_dict().keys() == fast.state_dict().keys()
    for name, value in plain.state_dict().items():
        assert torch.equal(value, fast.state_dict()[name]), name
    assert {type(m) for m in fast.modules()} >= {
        CpuDropout,
        FusedSelfAttention,
        CpuLayerNorm,
        FastEncoderLayer,
    }
    plain_classes = {nn.Dropout, MultiHeadSelfAttention, nn.LayerNorm, model.EncoderLayer}
    assert not plain_classes & {type(m) for m in fast.modules()}


@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("tied", [False, True])
def test_same_outputs_and_gradients_within_1e_6(layers, mode, tied):
    # Training mode without dropout: the fused kernel and the last layer on scored rows only.
    # Tied, without the head in the loss: the word embeddings' gradient alone, made dense.
    plain, fast = twins(num_layers=layers, tie_embeddings=tied)
    plain.train(mode == "train")
    fast.train(mode == "train")
    ids, padding, rows = batch()
    N = int(rows.sum())
    weights = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    outputs = []
    for encoder in (plain, fast):
        hidden = encoder(ids, padding, scored=rows)[:N]  # (N, D): the fast one pads the rows on a CPU
        (hidden * weights).mean().backward()  # a loss that depends on every output, of order one
        outputs.append((hidden.detach(), {name: p.grad for name, p in encoder.named_parameters()}))
    (plain_out, plain_grads), (fast_out, fast_grads) = outputs
    assert plain_out.shape == (N, D)
    torch.testing.assert_close(fast_out, plain_out, atol=1e-6, rtol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_tied_embeddings_add_their_gradient_into_the_heads(monkeypatch, precision):
    plain, fast = twins(tie_embeddings=True, vocab_size=5000)  # a vocabulary the fused head compiles for
    ids, padding, rows = batch()
    labels = ids[rows]  # (N,)
    taken = []  # where each gradient the embeddings took from the head lies, or None
    take = WeightGradient.take

    def take_and_note(self):
        grad = take(self)
        taken.append(None if grad is None else grad.data_ptr())
        return grad

    monkeypatch.setattr(WeightGradient, "take", take_and_note)
    grads = []
    for encoder in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss, _ = encoder.loss_and_ranks(encoder(ids, padding, scored=rows), labels)
        loss.backward()
        grads.append({name: p.grad for name, p in encoder.named_parameters()})
    assert isinstance(fast.token_embedding, TiedEmbedding) and len(taken) == 1 and taken[0] is not None
    # The weight's .grad is the head's gradient itself, the embeddings' rows added in: no copy.
    assert fast.token_embedding.weight.grad.data_ptr() == taken[0]
    tolerance = dict(atol=1e-6, rtol=0) if precision == "32-true" else dict(atol=2e-3, rtol=2e-2)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **tolerance, msg=name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cpu_layer_norm_computes_pytorchs_in_the_dtype_of_the_next_product(bias, precision):
    bf16 = precision == "bf16-mixed"
    torch.manual_seed(0)
    norm = nn.LayerNorm(D, bias=bias)
    nn.init.normal_(norm.weight)
    if bias:
        nn.init.normal_(norm.bias)
    x = torch.randn(3, T, D, requires_grad=True)
    weights = torch.randn(3, T, D)
    results = []
    for norm_class in (nn.LayerNorm, CpuLayerNorm):
        norm.__class__ = norm_class
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = norm(x)
        product_input = y.to(torch.bfloat16) if bf16 else y  # what autocast's next product reads
        loss = (product_input.float() * weights).sum()
        results.append((y.dtype, product_input, torch.autograd.grad(loss, [x, *norm.parameters()])))
    (plain_dtype, plain_y, plain_grads), (fast_dtype, fast_y, fast_grads) = results
    assert plain_dtype == torch.float32 and fast_dtype == (torch.bfloat16 if bf16 else torch.float32)
    step = dict(rtol=8e-3, atol=1e-6) if bf16 else dict(rtol=0, atol=1e-5)  # one bf16 step, or float32's
    torch.testing.assert_close(fast_y.float(), plain_y.float(), **step)
    for fast_grad, plain_grad in zip(fast_grads, plain_grads):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-5, atol=1e-5)


def test_without_a_c_compiler_layer_norm_is_pytorchs(monkeypatch):
    monkeypatch.setattr(fast, "layer_norm_library", SwitchedOff())
    norm, x = nn.LayerNorm(D), torch.randn(3, T, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = norm(x)
        norm.__class__ = CpuLayerNorm
        got = norm(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_residual_dropout_in_one_pass_computes_the_two_passes_bit_for_bit(monkeypatch, precision):
    # The same seeds drawn, the same rounding: outputs and gradients equal, not just close.
    one_pass = fast._CResidualDropout.apply
    calls = []
    monkeypatch.setattr(fast._CResidualDropout, "apply", lambda *args: calls.append(1) or one_pass(*args))
    _, encoder = twins(dropout=0.3)
    ids, padding, rows = batch()
    weights = torch.randn(4, T, D)
    results = []
    for layer_class in (FastEncoderLayer, model.EncoderLayer):
        for layer in encoder.layers:
            layer.__class__ = layer_class
        encoder.zero_grad()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            hidden = encoder(ids, padding)
        (hidden.float() * weights).sum().backward()
        results.append(
            (hidden.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None])
        )
    assert len(calls) == 2 * len(encoder.layers)  # both blocks of each layer, in the first run only
    (one_pass, one_pass_grads), (two_passes, two_passes_grads) = results
    assert torch.equal(one_pass, two_passes)
    assert len(one_pass_grads) == len(two_passes_grads) > 30  # every layer's weights
    assert all(torch.equal(a, b) for a, b in zip(one_pass_grads, two_passes_grads))


def test_without_rows_the_fast_encoder_gives_every_position():
    plain, fast = twins()
    ids, padding, _ = batch()
    torch.testing.assert_close(fast(ids, padding), plain(ids, padding), atol=1e-6, rtol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_cpu_attention_drops_what_the_plain_steps_with_cpu_dropout_drop(with_mask):
    # attention.c draws its dropout from the seed that CpuDropout would draw, element for element.
    plain, fast = twins(dropout=0.2)
    for module in plain.modules():
        if type(module) is nn.Dropout:
            module.__class__ = CpuDropout
    ids, padding, _ = batch()
    mask = padding if with_mask else None
    torch.manual_seed(3)
    ours = fast.train()(ids, mask)  # no rows: the last feed-forward draws for every position
    torch.manual_seed(3)
    torch.testing.assert_close(plain.train()(ids, mask), ours, atol=1e-6, rtol=0)


# --- attention.c against the explicit steps ------------------------------------------------------


def attention_twins(
    dropout: float, embed_dim: int = 16, heads: int = 4
) -> tuple[FusedSelfAttention, MultiHeadSelfAttention]:
    """A FusedSelfAttention and a plain MultiHeadSelfAttention (with CpuDropout) of the same weights."""
    config = EncoderConfig(vocab_size=V, seq_len=T, embed_dim=embed_dim, num_heads=heads, dropout=dropout)
    torch.manual_seed(0)
    plain = MultiHeadSelfAttention(config)
    plain.attn_dropout.__class__ = CpuDropout
    fused = MultiHeadSelfAttention(config)
    fused.load_state_dict(plain.state_dict())
    fused.__class__, fused.attn_dropout.__class__ = FusedSelfAttention, CpuDropout
    return fused, plain


def attend_and_grad(module: nn.Module, x: torch.Tensor, attend, precision: torch.dtype):
    """The module's output on x (B, T, D) and the gradients of x and of its weights, under autocast for bfloat16."""
    x = x.clone().requires_grad_()
    torch.manual_seed(3)  # the dropout's seed
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
        out = module.train()(x, attend)
    out.float().backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    return out.float(), [x.grad] + [p.grad.float() for p in module.parameters()]


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("seq_len", [7, 8])  # 8: each head's T T weights start a 64-bit random word
@pytest.mark.parametrize(
    "embed_dim, heads",
    [(16, 4), (64, 4), (80, 4), (12, 4)],
    ids=[
        "heads of 4",
        "heads of 16",
        "heads of 20",
        "heads of 3",
    ],  # a tile is 16 wide: part of one, one, one and a part
)
def test_c_attention_computes_the_explicit_steps(precision, with_mask, seq_len, embed_dim, heads):
    # 5 sequences x 4 heads: one group of 16 lanes and one of 4, whose 12 empty lanes are never written.
    fused, plain = attention_twins(dropout=0.3, embed_dim=embed_dim, heads=heads)
    assert fused.c_applies(torch.zeros(1, seq_len, embed_dim)), "every head size goes through attention.c"
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, seq_len, embed_dim, generator=generator)
    attend = None
    if with_mask:  # (B, 1, 1, T): padded keys, and a row whose only key is the first
        padding = torch.zeros(5, seq_len, dtype=torch.bool)
        padding[1, -3:], padding[4, 1:] = True, True
        attend = model.attention_mask(padding)
    fused_out, fused_grads = attend_and_grad(fused, x, attend, precision)
    assert fast.attention_library.get() is not None, "cc builds attention.c on this machine"
    plain_out, plain_grads = attend_and_grad(plain, x, attend, precision)
    # In bfloat16 the explicit steps round the scores and weights to bfloat16; attention.c keeps
    # float32 between its loads and stores. Both sum in their own order, so their difference grows
    # with the values summed: it is measured against each tensor's largest value.
    atol, rtol = (1e-6, 1e-5) if precision == torch.float32 else (3e-2, 3e-2)
    for ours, theirs in zip([fused_out, *fused_grads], [plain_out, *plain_grads]):
        torch.testing.assert_close(ours, theirs, atol=atol * theirs.abs().max().item(), rtol=rtol)


def test_c_attention_without_avx512_computes_the_same(tmp_path, monkeypatch):
    # Where the CPU has no AVX-512, transpose_tile (cpu_math.h) is a plain loop: built here without it.
    compiler = tmp_path / "cc-without-avx512"
    compiler.write_text('#!/bin/sh\nexec cc "$@" -mno-avx512f\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    fused, _ = attention_twins(dropout=0.3, embed_dim=80, heads=4)  # heads of 20: a whole tile and a part
    x = torch.randn(5, T, 80, generator=torch.Generator().manual_seed(4))
    results = []
    for library in (fast.attention_library, CLibrary(fast.attention_library.source)):
        monkeypatch.setattr(fast, "attention_library", library)
        for precision in (torch.float32, torch.bfloat16):
            results.append(attend_and_grad(fused, x, None, precision))
            fused.zero_grad()
    assert fast.attention_library.get() is not None, "built without AVX-512"
    for (with_out, with_grads), (without_out, without_grads) in zip(results[:2], results[2:]):
        torch.testing.assert_close(without_out, with_out, atol=1e-6, rtol=0)
        for a, b in zip(without_grads, with_grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# --- CpuDropout against nn.Dropout --------------------------------------------------------------


@pytest.mark.parametrize("dropout_class", [nn.Dropout, CpuDropout])
def test_dropout_zeroes_the_share_asked_for_and_keeps_the_mean(dropout_class):
    dropout = dropout_class(0.1).train()
    torch.manual_seed(0)
    out = dropout(torch.ones(1000, 1000))
    share = round(0.1 * 2**15) / 2**15 if dropout_class is CpuDropout else 0.1  # 3277 / 2^15 = 0.100006
    assert (out == 0).float().mean().item() == pytest.approx(share, abs=1e-3)  # 3.3 standard deviations
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - share)))  # survivors scaled exactly
    assert out.mean().item() == pytest.approx(1.0, abs=1e-3)


def test_dropout_draws_uniform_bits_everywhere():
    # Each 64-bit draw feeds four neighbouring elements: each quarter must drop alike.
    dropout = CpuDropout(0.5).train()
    torch.manual_seed(0)
    dropped = dropout(torch.ones(400_000)).view(-1, 4) == 0  # (100_000, 4)
    torch.testing.assert_close(dropped.float().mean(0), torch.full((4,), 0.5), atol=5e-3, rtol=0)


def test_dropped_elements_are_independent_of_their_neighbours():
    # nn.Dropout's are; four elements share one 64-bit draw here, cut into disjoint bits.
    torch.manual_seed(0)
    dropped = (CpuDropout(0.5).train()(torch.ones(400_000)) == 0).float().view(-1, 4)
    both = (dropped[:, :-1] * dropped[:, 1:]).mean().item()  # P(two neighbours both dropped)
    assert both == pytest.approx(0.25, abs=5e-3)


def test_dropout_backward_uses_the_forward_mask_and_is_seeded():
    dropout = CpuDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)  # 64 * 33 is not a multiple of 4
    torch.manual_seed(5)
    out = dropout(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach() / x.detach())  # the gradient is the mask times the scale
    torch.manual_seed(5)
    torch.testing.assert_close(dropout(x), out)
    assert not torch.equal(dropout(x), out)  # a new draw, a new mask


def splitmix64(state: int) -> int:
    """SplitMix64's output for one state, by the reference's unsigned 64-bit arithmetic."""
    mask = 2**64 - 1
    z = (state * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed", [0, 12345, -(2**62), 2**62 - 3])
def test_random_words_are_splitmix64_of_the_counters(seed):
    words = random_words(torch.tensor(seed), 5)
    expected = [splitmix64((seed + i) % 2**64) for i in range(5)]
    assert [w % 2**64 for w in words.tolist()] == expected  # int64 read as unsigned


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_dropout_factors_are_the_uncompiled_ones(dtype):
    n = COMPILE_FROM_ELEMENTS + 3  # what CpuDropout compiles; not a multiple of 4
    seed = torch.tensor(7)
    compiled = compiled_dropout_scale(seed, n, 3277, dtype)
    assert not compiled_dropout_scale.failed
    assert torch.equal(compiled, dropout_scale(seed, n, 3277, dtype))
    assert compiled.dtype == dtype and set(compiled.unique().tolist()) == {
        0.0,
        torch.tensor(2**15 / (2**15 - 3277), dtype=dtype).item(),
    }


@pytest.mark.parametrize("seed", [7, -(2**62)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_c_loop_drops_what_dropout_scale_drops_bit_for_bit(dtype, seed):
    n = 3 * 4096 + 3  # across the C loop's chunks of 4,096 elements; not a multiple of 4
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = c_dropout(x, seed, 3277)
    assert fast.c_library.get() is not None, "cc builds fast.c on this machine"
    assert got.dtype == dtype and torch.equal(got, x * dropout_scale(torch.tensor(seed), n, 3277, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_a_c_compiler_dropout_draws_the_same_masks(monkeypatch, dtype):
    x = torch.randn(5, 300, dtype=dtype, requires_grad=True)
    results = []
    for library in (fast.c_library, SwitchedOff()):  # fast.c's loop, then PyTorch's
        monkeypatch.setattr(fast, "c_library", library)
        torch.manual_seed(3)
        out = CpuDropout(0.25).train()(x)
        (grad,) = torch.autograd.grad(out, x, torch.arange(1500.0).view(5, 300).to(dtype))
        results.append((out, grad))
    (c_out, c_grad), (torch_out, torch_grad) = results
    assert torch.equal(c_out, torch_out) and torch.equal(c_grad, torch_grad)
    assert (c_out == 0).any() and c_grad.dtype == dtype


def test_dropout_is_the_identity_in_eval_mode_or_at_zero():
    x = torch.randn(8, 8)
    assert CpuDropout(0.5).eval()(x) is x
    assert CpuDropout(0.0).train()(x) is x


def test_the_scored_rows_are_padded_to_a_few_shapes_and_the_padding_counts_for_nothing():
    """oneDNN compiles a kernel for every new shape: on a CPU the rows come in multiples of ROW_MULTIPLE."""
    plain, fast = twins(num_layers=2)
    ids, padding, rows = batch()
    N = int(rows.sum())
    hidden = fast(ids, padding, scored=rows)
    assert hidden.shape == (ROW_MULTIPLE, D) and N < ROW_MULTIPLE
    labels = ids[rows]  # (N,)
    fast_loss, fast_ranks = fast.loss_and_ranks(hidden, labels)
    plain_loss, plain_ranks = plain.loss_and_ranks(plain(ids, padding, scored=rows), labels)
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-6, rtol=0)
    assert torch.equal(fast_ranks, plain_ranks)
