"""A BERT-style Transformer encoder, written from scratch in plain PyTorch.

Shapes in comments: B = batch, T = sequence length, D = embedding size,
H = attention heads, D/H = size of one head, F = feed-forward size, V = vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minibert.errors import MinibertError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def sinusoidal_positions(max_len: int, embed_dim: int) -> Tensor:
    """The fixed positional encoding of "Attention Is All You Need", (max_len, D).

    ``PE[pos, 2i] = sin(pos / 10000^(2i/D))`` and ``PE[pos, 2i+1] = cos(pos / 10000^(2i/D))``.
    ``2i`` is the even dimension itself: the reference wrote ``2 * i`` with ``i``
    already stepping by two, which made the wavelengths far too short.
    """
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    even_dims = torch.arange(0, embed_dim, 2, dtype=torch.float32)  # (D/2,) = 2i
    angle = position / 10_000 ** (even_dims / embed_dim)  # (max_len, D/2)
    pe = torch.zeros(max_len, embed_dim)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : embed_dim // 2])
    return pe


class Dropout(nn.Dropout):
    """``nn.Dropout`` (zero each element with probability ``p``, scale the rest by 1/(1-p)),
    with cheaper random numbers on CPU.

    PyTorch's CPU dropout draws one random number per element: at the base configuration
    that is about a tenth of a training step. Here one 64-bit draw is cut into four 15-bit
    numbers, which is about three times faster for the whole forward and backward. An
    element is dropped with probability ``round(p * 2^15) / 2^15`` (within 2^-16 of ``p``)
    and the survivors are scaled by exactly the inverse of their share, so the expected
    output is still the input. On other devices, and inside ``torch.compile``, PyTorch's own
    dropout is already fast.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():  # compiled code draws its own fast numbers
            return super().forward(x)
        n = x.numel()
        # random_() on int64 gives 63 random bits (the sign bit stays 0); masking every
        # 16-bit quarter to 15 bits makes the four quarters alike.
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # (ceil(n/4),)
        bits = (words.view(torch.int16)[:n] & 0x7FFF).view(x.shape)  # x's shape, uniform in [0, 2^15)
        dropped = round(self.p * 2**15)
        keep = (bits >= dropped).to(x.dtype).mul_(2**15 / (2**15 - dropped))  # 0 or the scale, in x's dtype
        return x * keep


def attention_keep_mask(padding_mask: Tensor) -> Tensor:
    """Which keys each query may look at, (B, 1, 1, T), from a padding mask (B, T).

    Padding (True in ``padding_mask``) gets no weight. A row of nothing but padding may
    look everywhere instead, so its softmax stays finite (its output is never scored).
    """
    keep = ~padding_mask
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused projection for queries, keys and values.

    Args:
        embed_dim: D, the size of every token's vector.
        num_heads: H; D must be divisible by H.
        dropout: dropout on the attention weights.
        bias: whether the projections have biases.
        fused: use ``F.scaled_dot_product_attention`` (same numbers, faster) instead of
            the explicit softmax(QK^T / sqrt(D/H)) V written out below, wherever PyTorch
            has a fused kernel for it: on GPU, and on CPU when no dropout is applied (CPU
            attention with dropout falls back to the same steps, with slower dropout).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, bias: bool = True, fused: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise MinibertError(f"model.embed_dim={embed_dim} must be divisible by model.num_heads={num_heads}")
        self.num_heads, self.fused = num_heads, fused
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.attn_dropout = Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x: (B, T, D); keep: (B, 1, 1, T) bool or None. Returns (B, T, D)."""
        B, T, D = x.shape
        q, k, v = self.heads(x)  # 3 x (B, H, T, D/H)
        p = self.attn_dropout.p if self.training else 0.0
        if self.fused and (p == 0.0 or x.device.type != "cpu"):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)  # (B, H, T, D/H)
        else:
            weights = self.attn_dropout(self.weights(q, k, keep).to(v.dtype))  # (B, H, T, T)
            y = weights @ v  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(B, T, D)  # heads side by side again: (B, T, D)
        return self.out_proj(y)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of x (B, T, D), one slice per head: 3 x (B, H, T, D/H)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, T, D)
        # (B, T, D) -> (B, T, H, D/H) -> (B, H, T, D/H): each head attends on its own slice.
        return tuple(t.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2) for t in (q, k, v))

    def weights(self, q: Tensor, k: Tensor, keep: Tensor | None = None) -> Tensor:
        """softmax(QK^T / sqrt(D/H)): how much each query (row) takes from each key, (B, H, T, T), float32.

        The explicit path multiplies the values by these; the fused one computes the same
        numbers without ever showing them, which is why attention maps are drawn from here.
        """
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        # The softmax runs in float32 even under bf16 autocast: its sums need the precision.
        return scores.float().softmax(dim=-1)


class FeedForward(nn.Module):
    """Position-wise ``D -> F -> D`` with an activation in between.

    Args:
        embed_dim: D.
        ff_dim: F, the hidden size (4 D in BERT and in the reference).
        activation: ``relu`` or ``gelu``.
        bias: whether the two linear layers have biases.
    """

    def __init__(self, embed_dim: int, ff_dim: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise MinibertError(f"model.activation={activation!r} must be one of {sorted(ACTIVATIONS)}")
        self.up = nn.Linear(embed_dim, ff_dim, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(ff_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> (B, T, F) -> (B, T, D)."""
        return self.down(self.act(self.up(x)))


class EncoderLayer(nn.Module):
    """A pre-norm block: ``x + dropout(mha(norm(x)))``, then ``x + dropout(ff(norm(x)))``.

    Normalising before each sub-layer (rather than after the residual sum, as in the
    original Transformer) keeps deep stacks trainable without a learning-rate warm-up.
    The arguments are :class:`Encoder`'s; ``fused`` is its ``fused_attention``.
    """

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float, activation: str, bias: bool, fused: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, bias=bias)
        self.attn = MultiHeadSelfAttention(embed_dim, num_heads, dropout, bias, fused)
        self.norm2 = nn.LayerNorm(embed_dim, bias=bias)
        self.ff = FeedForward(embed_dim, ff_dim, activation, bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """x: (B, T, D); keep: (B, 1, 1, T) bool or None (see :func:`attention_keep_mask`).

        Returns (B, T, D), or (N, D) with ``rows``, a (B, T) bool mask of the N positions
        wanted: every position is still a key and value of the attention, but the
        feed-forward, which works on each position alone, runs on the wanted ones only.
        """
        x = x + self.dropout(self.attn(self.norm1(x), keep))
        if rows is not None:
            x = x[rows]  # (B, T, D) -> (N, D)
        return x + self.dropout(self.ff(self.norm2(x)))


class Encoder(nn.Module):
    """Token embedding + sinusoidal positions, a stack of encoder layers, a final LayerNorm,
    and a language-model head over the vocabulary.

    Args:
        vocab_size: V, number of token ids.
        seq_len: longest sequence the positional table covers.
        embed_dim: D.
        num_heads: H.
        num_layers: encoder layers.
        ff_dim: F, hidden size of the feed-forward sub-layers.
        dropout: dropout on embeddings, attention weights and sub-layer outputs.
        activation: ``relu`` (the reference) or ``gelu`` (BERT).
        bias: biases in linear layers and LayerNorms.
        tie_embeddings: the head reuses the input embedding matrix as its weight.
        fused_attention: use PyTorch's fused scaled-dot-product attention.
        init_std: weights of embeddings and linear layers start as N(0, init_std²), biases
            at zero (BERT's scheme); ``None`` keeps PyTorch's defaults (the reference).
        scale_embeddings: multiply the word vectors by sqrt(D) before adding the positions,
            as "Attention Is All You Need" does, so that small initial word vectors are not
            lost next to the positional encoding, whose entries reach ±1.
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        embed_dim: int,
        num_heads: int,
        num_layers: int,
        ff_dim: int,
        dropout: float,
        activation: str = "relu",
        bias: bool = True,
        tie_embeddings: bool = False,
        fused_attention: bool = True,
        init_std: float | None = 0.02,
        scale_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise MinibertError(f"model.dropout={dropout} must be in [0, 1)")
        if init_std is not None and init_std <= 0:
            raise MinibertError(f"model.init_std={init_std} must be positive (or null for PyTorch's default initialisation)")
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.embed_scale = math.sqrt(embed_dim) if scale_embeddings else 1.0
        self.register_buffer("positions", sinusoidal_positions(seq_len, embed_dim), persistent=False)
        self.dropout = Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, ff_dim, dropout, activation, bias, fused_attention) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim, bias=bias)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=bias)
        if tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        if init_std is not None:
            self.apply(lambda module: _init_weights(module, init_std))

    def forward(self, input_ids: Tensor, padding_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """input_ids: (B, T) ids; padding_mask: (B, T), True at padding. Returns hidden states (B, T, D).

        ``rows``, a (B, T) bool mask, asks for the hidden states of those N positions only,
        (N, D): training scores about 15% of positions, and the last layer's feed-forward
        then runs on those alone (a twentieth of a training step's arithmetic at the base
        configuration). The head is applied separately (:meth:`logits`), for the same reason.
        """
        T = input_ids.shape[1]
        if T > self.positions.shape[0]:
            raise MinibertError(f"a sequence of {T} tokens is longer than the model's seq_len={self.positions.shape[0]}")
        x = self.token_embedding(input_ids) * self.embed_scale + self.positions[:T]  # (B, T, D)
        x = self.dropout(x)
        keep = attention_keep_mask(padding_mask) if padding_mask is not None else None  # (B, 1, 1, T)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, keep, rows if i == last else None)  # the last one: (N, D) if rows are given
        if rows is not None and not self.layers:
            x = x[rows]
        return self.final_norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """Scores over the vocabulary: (..., D) -> (..., V)."""
        return self.lm_head(hidden)


def _init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: small normal weights, zero biases, LayerNorms at identity.

    PyTorch's default ``nn.Embedding`` draws N(0, 1): entries that Adam's steps of about
    ``lr`` each move by a few percent in a short run, so a word's vector stays mostly its
    random start and related words do not come together; tied to the head, the same
    matrix gives first logits a spread of ~sqrt(D) and a starting loss far above log(V).
    From N(0, 0.02) what a word's vector holds after training is what it learned.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
