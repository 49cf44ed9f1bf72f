"""Speed-ups of :mod:`minibert.model`: the same modules, weights and numbers, computed faster.

Not part of the lesson: read ``model.py`` first. Training uses :class:`FastEncoder` unless the
config says ``model.fast: false``; ``tests/test_fast.py`` checks that both compute the same
outputs and gradients. Seven changes, each measured at the base configuration on a CPU:

- :class:`CpuDropout`: cheaper random numbers for dropout on a CPU, drawn and applied in one C
  pass (``fast.c``) where a C compiler builds it (about a tenth of a step);
- :class:`FastEncoderLayer`: each residual addition and the dropout before it in one C pass
  (``fast.c``), the same numbers bit for bit;
- :class:`CpuLayerNorm`: LayerNorm in one C pass on a CPU (``layer_norm.c``), its output
  written in the dtype of the product that follows (bfloat16 under autocast);
- :class:`FusedSelfAttention`: attention's core in one kernel: PyTorch's fused one on a GPU, a
  C loop over 16 heads at once on a CPU (``attention.c``);
- :meth:`FastEncoder.forward`: the last layer's feed-forward runs on the scored positions only;
- :meth:`FastEncoder.loss_and_ranks`: the head and the loss together, a block of rows at a time
  (:mod:`minibert.fused_loss`, whose per-block loss is a C loop on a CPU);
- :class:`TiedEmbedding`: with tied embeddings, the word vectors' gradient added into the
  head's gradient of the same matrix, instead of into a zeroed (V, D) one of its own.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minibert.fused_loss import IGNORE_INDEX, CompiledOnce, WeightGradient, linear_cross_entropy
from minibert.machinery.c_library import C_DTYPES, CLibrary
from minibert.model import Encoder, EncoderConfig, EncoderLayer, MultiHeadSelfAttention

# SplitMix64's constants (Steele, Lea and Flood, 2014), as signed 64-bit integers.
GOLDEN_GAMMA, MIX_1, MIX_2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def random_words(seed: Tensor, count: int) -> Tensor:
    """``count`` pseudo-random 64-bit words (count,): SplitMix64 of the counters seed, seed + 1, ...

    Each word is a fixed mixing function of its counter alone, so the loop is a few vector
    instructions per word with no state between words (PyTorch's CPU generator, a Mersenne
    twister, draws its numbers one after the other: five times as long here).
    """
    z = (torch.arange(count, dtype=torch.int64, device=seed.device) + seed) * GOLDEN_GAMMA
    # ">>" shifts in sign bits on int64; the masks make the shifts logical, as SplitMix64's are.
    z = (z ^ ((z >> 30) & (2**34 - 1))) * MIX_1
    z = (z ^ ((z >> 27) & (2**37 - 1))) * MIX_2
    return z ^ ((z >> 31) & (2**33 - 1))


def dropout_scale(seed: Tensor, n: int, dropped: int, dtype: torch.dtype) -> Tensor:
    """(n,) dropout's factors in ``dtype``: 0 for a dropped element, else 2^15 / (2^15 - dropped).

    Each 64-bit word is cut into four 15-bit numbers (the low 15 bits of each 16-bit quarter),
    uniform in [0, 2^15): an element is dropped where its number is under ``dropped``.
    """
    bits = random_words(seed, (n + 3) // 4).view(torch.int16)[:n] & 0x7FFF  # (n,)
    return (bits >= dropped).to(dtype) * (2**15 / (2**15 - dropped))


compiled_dropout_scale = CompiledOnce(dropout_scale, dynamic=True)
COMPILE_FROM_ELEMENTS = 2**16  # smaller tensors draw uncompiled: compiling costs a few seconds once
c_library = CLibrary(Path(__file__).with_name("fast.c"))


def dropout_draw(p: float) -> tuple[Tensor, int]:
    """A dropout's seed, drawn from PyTorch's generator, and how many of the 2^15 numbers are dropped for ``p``."""
    return torch.randint(-(2**62), 2**62, ()), round(p * 2**15)


def dropout_factor(dropped: int, dtype: torch.dtype) -> float:
    """The survivors' factor 2^15 / (2^15 - dropped), rounded to ``dtype`` as PyTorch multiplies by it."""
    return torch.tensor(2**15 / (2**15 - dropped), dtype=dtype).item()


def c_dropout(x: Tensor, seed: int, dropped: int) -> Tensor:
    """``x * dropout_scale(seed, x.numel(), dropped, x.dtype).view(x.shape)`` in one pass, by ``fast.c``.

    The same numbers bit for bit, seven times as fast on 2 threads here (0.43 -> 0.06 ms for
    a (128, 20, 128) bfloat16 tensor): the words are drawn in vector loops, and no tensor of
    factors is written. ``x`` is float32 or bfloat16 on a CPU, and ``fast.c`` is built.
    """
    x = x.contiguous()
    out = torch.empty_like(x)
    c_library.call("dropout", x.dtype, x, out, *dropout_arguments(x.numel(), seed, dropped, x.dtype))
    return out


def dropout_arguments(n: int, seed: int, dropped: int, dtype: torch.dtype) -> tuple:
    """``fast.c``'s last arguments: n elements, the seed, the dropped count and the survivors' factor in ``dtype``."""
    factor = dropout_factor(dropped, dtype)
    return ctypes.c_int64(n), ctypes.c_int64(seed), ctypes.c_int32(dropped), ctypes.c_float(factor)


class _CDropout(torch.autograd.Function):
    """:func:`c_dropout` with its backward: the gradient times the same factors, drawn again from the seed."""

    @staticmethod
    def forward(ctx, x: Tensor, seed: int, dropped: int) -> Tensor:
        ctx.seed, ctx.dropped = seed, dropped  # nothing but the seed is kept for the backward
        return c_dropout(x, seed, dropped)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return c_dropout(grad, ctx.seed, ctx.dropped), None, None


class _CResidualDropout(torch.autograd.Function):
    """``residual + c_dropout(x, seed, dropped)``, float32, in one pass; the backward gives ``x`` its gradient in one too."""

    @staticmethod
    def forward(ctx, residual: Tensor, x: Tensor, seed: int, dropped: int) -> Tensor:
        residual, x = residual.contiguous(), x.contiguous()
        ctx.arguments = dropout_arguments(x.numel(), seed, dropped, x.dtype)
        ctx.dtype = x.dtype
        out = torch.empty_like(residual)
        c_library.call("residual_dropout", x.dtype, residual, x, out, *ctx.arguments)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        grad_x = grad.new_empty(grad.shape, dtype=ctx.dtype)
        c_library.call("dropout_of_float", ctx.dtype, grad, grad_x, *ctx.arguments)
        return grad, grad_x, None, None


def residual_dropout(residual: Tensor, x: Tensor, dropout: nn.Dropout) -> Tensor:
    """``residual + dropout(x)``: on a CPU in training, one C pass (``fast.c``) where :class:`CpuDropout` would make two.

    The same numbers bit for bit: the same seed is drawn from PyTorch's generator, the dropped
    ``x`` is rounded to its dtype before the addition in float32, and its gradient to that
    dtype before the dropout's factors. A pre-norm block's output is its float32 input plus
    its bfloat16 (under autocast) branch: PyTorch's dropout writes the branch, the addition
    reads it again, and on the way back autograd casts the gradient in a pass of its own.
    """
    applies = (
        dropout.training
        and dropout.p > 0
        and residual.device.type == "cpu"
        and residual.dtype == torch.float32
        and x.dtype in C_DTYPES
        and residual.shape == x.shape
        and not torch.compiler.is_compiling()
        and c_library.get() is not None
    )
    if not applies:
        return residual + dropout(x)
    seed, dropped = dropout_draw(dropout.p)  # as CpuDropout draws them
    return _CResidualDropout.apply(residual, x, int(seed), dropped)


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` (zero each element with probability ``p``, scale the rest by 1/(1-p)),
    with cheaper random numbers on CPU.

    PyTorch's CPU dropout draws one random number per element: at the base configuration
    that is about a tenth of a training step. Here each element gets a 15-bit number cut from
    a 64-bit word of :func:`random_words`, and is multiplied by its factor (:func:`dropout_scale`)
    in one C loop (:func:`c_dropout`), whose backward draws the factors again from the seed
    instead of keeping them; where ``fast.c`` cannot be built, the factors are made in one
    compiled loop (uncompiled for small tensors) and multiplied by. The words start from a seed
    drawn from PyTorch's generator, so ``torch.manual_seed`` and a resumed run's restored
    generator give the same dropout. An element is dropped with probability
    ``round(p * 2^15) / 2^15`` (within 2^-16 of ``p``) and the survivors are scaled by exactly
    the inverse of their share, so the expected output is still the input. On other devices,
    and inside ``torch.compile``, PyTorch's own dropout is used.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        seed, dropped = dropout_draw(self.p)
        if x.dtype in C_DTYPES and c_library.get() is not None:
            return _CDropout.apply(x, int(seed), dropped)
        make = compiled_dropout_scale if x.numel() >= COMPILE_FROM_ELEMENTS else dropout_scale
        scale = make(seed, x.numel(), dropped, x.dtype)  # (n,)
        return x * scale.view(x.shape)


layer_norm_library = CLibrary(Path(__file__).with_name("layer_norm.c"))


class _CLayerNorm(torch.autograd.Function):
    """LayerNorm over the last dimension by ``layer_norm.c``: float32 in, ``dtype`` out; float32 gradients."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, dtype: torch.dtype
    ) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # (..., D) -> (R, D)
        (R, D), stats = rows.shape, x.new_empty(2, rows.shape[0])  # mean and 1 / std of each row
        y = rows.new_empty(R, D, dtype=dtype)
        sizes = ctypes.c_int64(R), ctypes.c_int64(D)
        layer_norm_library.call(
            "layer_norm", dtype, rows, weight, bias, y, stats[0], stats[1], *sizes, ctypes.c_float(eps)
        )
        ctx.save_for_backward(rows, weight, stats)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        rows, weight, stats = ctx.saved_tensors
        grad_y = grad_y.reshape(rows.shape).contiguous()  # in the output's dtype, as the product gives it
        grad_x, grad_weight = torch.empty_like(rows), torch.empty_like(weight)
        grad_bias = torch.empty_like(weight) if ctx.has_bias else None
        sizes = ctypes.c_int64(rows.shape[0]), ctypes.c_int64(rows.shape[1])
        layer_norm_library.call(
            "layer_norm_backward", grad_y.dtype, rows, weight, stats[0], stats[1], grad_y, grad_x, grad_weight,
            grad_bias, *sizes,
        )  # fmt: skip
        return grad_x.view(ctx.shape), grad_weight, grad_bias, None, None


class CpuLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that, on a CPU, writes its output in the dtype of the product that follows.

    Under autocast, PyTorch normalises in float32 and the next linear layer casts the result to
    bfloat16, a second pass over it (and another for its gradient on the way back).
    ``layer_norm.c`` normalises a float32 row in float32 and writes it in bfloat16 at once; the
    backward reads the bfloat16 gradient. Elsewhere (another device, another dtype, inside
    torch.compile, no C compiler), PyTorch's.
    """

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        applies = (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and dtype in C_DTYPES
            and self.weight is not None
            and len(self.normalized_shape) == 1
            and not torch.compiler.is_compiling()
            and layer_norm_library.get() is not None
        )
        if not applies:
            return super().forward(x)
        return _CLayerNorm.apply(x, self.weight, self.bias, self.eps, dtype)


attention_library = CLibrary(Path(__file__).with_name("attention.c"))


class _CAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v with dropout on the weights, every head, by ``attention.c``: (B, T, 3D) -> (B, T, D).

    Only the projection's output is kept for the backward, which computes the weights and their
    dropout again from it and from the seed.
    """

    @staticmethod
    def forward(ctx, qkv: Tensor, attend: Tensor | None, heads: int, seed: int, dropped: int) -> Tensor:
        B, T, D = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        factor = dropout_factor(dropped, qkv.dtype)  # as CpuDropout's
        ctx.sizes = [ctypes.c_int64(n) for n in (B, T, heads, D // heads, seed)]
        ctx.dropout = ctypes.c_int32(dropped), ctypes.c_float(factor)
        ctx.save_for_backward(qkv, attend)
        y = qkv.new_empty(B, T, D)
        attention_library.call("attention", qkv.dtype, qkv, attend, None, y, *ctx.sizes, *ctx.dropout)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        qkv, attend = ctx.saved_tensors
        grad_y = grad_y.to(qkv.dtype).contiguous()
        grad_qkv = torch.empty_like(qkv)
        attention_library.call(
            "attention", qkv.dtype, qkv, attend, grad_y, grad_qkv, *ctx.sizes, *ctx.dropout
        )
        return grad_qkv, None, None, None, None


class FusedSelfAttention(MultiHeadSelfAttention):
    """The same attention in one kernel: PyTorch's fused one on a GPU, ``attention.c``'s on a CPU.

    On a GPU, ``F.scaled_dot_product_attention``: no (B, H, T, T) tensor kept. On a CPU,
    PyTorch's fused kernel has no path with dropout, and in bfloat16 it took 5 times as long as
    the explicit steps (docs/benchmarks.md); ``attention.c`` computes 16 (sequence, head) pairs
    at once, one in each lane of a vector, in float32, straight from the projection's output to
    the merged heads, and drops the weights that :class:`CpuDropout` would drop for the same
    seed. Where it cannot be built, the explicit steps of :class:`MultiHeadSelfAttention`.
    """

    def forward(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        if x.device.type == "cpu":
            if not self.c_applies(x):
                return super().forward(x, attend)
            qkv = self.qkv(x).contiguous()  # (B, T, 3D)
            seed, dropped = 0, 0
            if self.training and self.attn_dropout.p > 0:
                seed, dropped = dropout_draw(self.attn_dropout.p)  # as CpuDropout draws them
            keys = None if attend is None else attend[:, 0, 0, :].to(torch.uint8).contiguous()  # (B, T)
            y = _CAttention.apply(qkv, keys, self.num_heads, int(seed), dropped)  # (B, T, D)
            return self.out_proj(y)
        q, k, v = self.heads(x)  # 3 x (B, H, T, D/H)
        p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)  # (B, H, T, D/H)
        return self.merge_heads(y)  # (B, T, D)

    def c_applies(self, x: Tensor) -> bool:
        """Whether ``attention.c`` computes this call: bfloat16 or float32, outside torch.compile, built."""
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        return dtype in C_DTYPES and not torch.compiler.is_compiling() and attention_library.get() is not None


class _AddedIntoHead(torch.autograd.Function):
    """``F.embedding(input_ids, weight)``, whose backward adds its rows into the head's gradient of ``weight``.

    The head's backward (:func:`minibert.fused_loss.linear_cross_entropy`) comes first and leaves
    its gradient of the weight in ``head``; autograd does not use it before this backward is
    done, as both are gradients of the same weight. Where the head left none, the usual dense one.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, input_ids: Tensor, head: WeightGradient) -> Tensor:
        ctx.save_for_backward(input_ids)
        ctx.head, ctx.weight_shape = head, weight.shape
        return F.embedding(input_ids, weight)  # (B, T) -> (B, T, D)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (input_ids,) = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])  # (B*T, D), a row per token
        head_grad = ctx.head.take()
        if head_grad is None:
            return grad.new_zeros(ctx.weight_shape).index_add_(0, input_ids.flatten(), rows), None, None
        head_grad.index_add_(0, input_ids.flatten(), rows.to(head_grad.dtype))
        return None, None, None  # all of it is in the head's gradient


class TiedEmbedding(nn.Embedding):
    """``nn.Embedding`` whose weight is also the head's: on a CPU, its gradient goes into the head's.

    Autograd would otherwise make the embedding's gradient a zeroed (V, D) float32 matrix with
    a few thousand rows added in, then add it to the head's: two passes over 12 MB at base.yaml's
    sizes, where adding the rows into the head's gradient is a tenth of a millisecond. The step
    was 1.1 to 1.2 ms shorter in bfloat16 (paired, AMD EPYC). ``head_gradient`` is where
    :meth:`FastEncoder.loss_and_ranks` asks the head to leave it, made anew by each forward.
    """

    head_gradient: WeightGradient | None = None
    add_into_head = True  # benchmarks/levers.py turns it off

    def forward(self, input_ids: Tensor) -> Tensor:
        self.head_gradient = None
        if not self.add_into_head or input_ids.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(input_ids)
        self.head_gradient = WeightGradient()
        return _AddedIntoHead.apply(self.weight, input_ids, self.head_gradient)


class FastEncoderLayer(EncoderLayer):
    """:class:`minibert.model.EncoderLayer` whose residual additions take the dropout before them in one pass."""

    def attention_block(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        return residual_dropout(x, self.attn(self.norm1(x), attend), self.dropout)  # (B, T, D)

    def feed_forward_block(self, x: Tensor) -> Tensor:
        return residual_dropout(x, self.ff(self.norm2(x)), self.dropout)  # (..., D)


def use_fast_kernels(module: nn.Module) -> None:
    """Give every dropout, LayerNorm, attention and encoder layer inside ``module`` the faster class of this file.

    The modules keep their parameters and state_dict keys: only the class, which says how they
    compute, changes (both classes have the same attributes), so nothing is copied or re-drawn.
    """
    for inner in module.modules():
        if type(inner) is nn.Dropout:
            inner.__class__ = CpuDropout
        elif type(inner) is nn.LayerNorm:
            inner.__class__ = CpuLayerNorm
        elif type(inner) is EncoderLayer:
            inner.__class__ = FastEncoderLayer
        elif type(inner) is MultiHeadSelfAttention:
            inner.__class__ = FusedSelfAttention


class FastEncoder(Encoder):
    """:class:`minibert.model.Encoder`, with the speed-ups of this file.

    The plain encoder is built first, so the weights are drawn in the same order from the same
    random numbers; its dropout and attention modules then get the classes above, which hold
    the same parameters (and state_dict keys) and compute the same numbers by other kernels.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        use_fast_kernels(self)
        if config.tie_embeddings:
            self.token_embedding.__class__ = TiedEmbedding

    def forward(
        self, input_ids: Tensor, padding_mask: Tensor | None = None, scored: Tensor | None = None
    ) -> Tensor:
        """As :meth:`Encoder.forward`; with ``scored``, the last feed-forward runs on those N positions only.

        Every position is still a key and value of the last layer's attention, but its
        feed-forward and the final LayerNorm work on each position alone: at the base
        configuration, skipping the unscored 60% saves about a twentieth of a training step.
        """
        eager_cpu = (
            padding_mask is not None
            and padding_mask.device.type == "cpu"
            and not torch.compiler.is_compiling()
        )
        if eager_cpu and not padding_mask.any():
            # Packed training batches hold no padding: every layer's masked_fill would change
            # nothing (about a tenth of attention's time on a CPU). On a GPU, .any() would
            # wait for the device, and the fused kernel applies the mask at no cost; a compiled
            # graph cannot branch on the data.
            padding_mask = None
        if scored is None or not self.layers:
            return super().forward(input_ids, padding_mask, scored)
        x, attend = self.embed(input_ids, padding_mask)  # (B, T, D)
        for layer in self.layers[:-1]:
            x = layer(x, attend)
        last = self.layers[-1]
        x = pad_rows(last.attention_block(x, attend)[scored])  # (B, T, D) -> (N, D) -> (N', D)
        return self.final_norm(last.feed_forward_block(x))  # (N', D)

    def loss_and_ranks(self, hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """As :meth:`Encoder.loss_and_ranks`, without writing the whole (N, V) logits (:mod:`minibert.fused_loss`).

        ``hidden`` may hold padding rows after the N scored ones (:func:`pad_rows`): they get
        the label ``IGNORE_INDEX``, which counts for nothing, and no rank.
        """
        N = labels.shape[0]
        labels = F.pad(labels, (0, hidden.shape[0] - N), value=IGNORE_INDEX)  # (N',)
        head = self.token_embedding.head_gradient if isinstance(self.token_embedding, TiedEmbedding) else None
        loss, ranks = linear_cross_entropy(
            hidden, self.lm_head.weight, self.lm_head.bias, labels, weight_gradient=head
        )
        return loss, ranks[:N]


ROW_MULTIPLE = 64  # on a CPU, the scored rows are padded to a multiple of this


def pad_rows(x: Tensor) -> Tensor:
    """Zero rows after the N rows of ``x`` (N, D), up to a multiple of ``ROW_MULTIPLE``, on a CPU: (N', D).

    On a CPU, PyTorch multiplies bfloat16 matrices with oneDNN, which compiles a kernel for
    each new shape (50 to 70 ms for the head's products over the vocabulary) and keeps the
    last 1,024 of them. N, the count of scored positions, changes with every batch: at
    base.yaml's 40%, each of a few hundred counts needed its own kernels for every product of
    the last layer and the head, about 50 ms a step. Padded, the products see three or four
    shapes. The padding rows cost about 3% more arithmetic in the head, and count for nothing.
    """
    extra = -x.shape[0] % ROW_MULTIPLE
    if x.device.type != "cpu" or extra == 0:
        return x
    return F.pad(x, (0, 0, 0, extra))
