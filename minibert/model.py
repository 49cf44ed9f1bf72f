"""A BERT-style Transformer encoder, written from scratch in plain PyTorch.

Read it top to bottom, in the order of the blog post: word vectors plus positions, attention,
the feed-forward, the pre-norm block, the encoder, the head over the vocabulary and the loss. Training
runs the same modules through :mod:`minibert.fast`, which computes the same numbers faster.

Shapes in comments: B = batch, T = sequence length, D = embedding size,
H = attention heads, D/H = size of one head, F = feed-forward size, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minibert.errors import MinibertError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder's shape and initialisation, passed whole to every block."""

    vocab_size: int  # V, number of token ids
    seq_len: int  # the longest sequence the positional table covers
    embed_dim: int = 128  # D, the size of every token's vector
    num_heads: int = 8  # H; D must be divisible by H
    num_layers: int = 8  # encoder layers
    ff_dim: int = 512  # F, the feed-forward's hidden size (4 D in BERT and in the reference)
    dropout: float = 0.1  # on the input vectors, the attention weights and each block's output
    activation: str = "relu"  # in the feed-forward: relu (the reference) or gelu (BERT)
    bias: bool = True  # biases in the linear layers and LayerNorms
    tie_embeddings: bool = False  # the head reuses the word vectors as its weight matrix
    # Weights start as N(0, init_std²), biases at zero (BERT); None keeps PyTorch's defaults (the reference).
    init_std: float | None = 0.02
    # Multiply word vectors by sqrt(D) before adding the positions, whose entries reach ±1 (as
    # "Attention Is All You Need" does), so that small initial word vectors are not lost next to them.
    scale_embeddings: bool = False

    def __post_init__(self) -> None:
        checks = [
            (
                self.embed_dim % self.num_heads == 0,
                f"model.embed_dim={self.embed_dim} must be divisible by model.num_heads={self.num_heads}",
            ),
            (
                self.activation in ACTIVATIONS,
                f"model.activation: expected one of {', '.join(map(repr, ACTIVATIONS))}, got {self.activation!r}",
            ),
            (0 <= self.dropout < 1, f"model.dropout={self.dropout} must be in [0, 1)"),
            (
                self.init_std is None or self.init_std > 0,
                f"model.init_std={self.init_std} must be positive (or null for PyTorch's default initialisation)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise MinibertError(message)


# --- 1. word vectors plus positions ------------------------------------------------------


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


# --- 2. attention ------------------------------------------------------------------------


def attention_mask(padding_mask: Tensor) -> Tensor:
    """Which keys each query may attend to, (B, 1, 1, T) bool, from a padding mask (B, T).

    Padding (True in ``padding_mask``) gets no weight. A row of nothing but padding may
    attend everywhere instead, so its softmax stays finite (its output is never scored).
    """
    attend = ~padding_mask
    attend = attend | ~attend.any(dim=-1, keepdim=True)
    return attend[:, None, None, :]


class MultiHeadSelfAttention(nn.Module):
    """softmax(QK^T / sqrt(D/H)) V in H heads, with one projection for queries, keys and values."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.bias)
        self.out_proj = nn.Linear(config.embed_dim, config.embed_dim, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        """x: (B, T, D); attend: (B, 1, 1, T) bool or None. Returns (B, T, D)."""
        q, k, v = self.heads(x)  # 3 x (B, H, T, D/H)
        weights = self.attn_dropout(self.weights(q, k, attend).to(v.dtype))  # (B, H, T, T)
        return self.merge_heads(weights @ v)  # (B, H, T, D/H) -> (B, T, D)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of x (B, T, D), one slice per head: 3 x (B, H, T, D/H)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # 3 x (B, T, D)
        # (B, T, D) -> (B, T, H, D/H) -> (B, H, T, D/H): each head attends on its own slice.
        return tuple(t.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2) for t in (q, k, v))

    def weights(self, q: Tensor, k: Tensor, attend: Tensor | None = None) -> Tensor:
        """How much each query (row) takes from each key: (B, H, T, T), float32, rows summing to 1."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
        if attend is not None:
            scores = scores.masked_fill(~attend, float("-inf"))
        # The softmax runs in float32 even under bf16 autocast: its sums need the precision.
        return scores.float().softmax(dim=-1)

    def merge_heads(self, y: Tensor) -> Tensor:
        """The heads' outputs side by side again, projected: (B, H, T, D/H) -> (B, T, D)."""
        B, H, T, head_dim = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * head_dim))


# --- 3. the feed-forward -----------------------------------------------------------------


class FeedForward(nn.Module):
    """Position-wise ``D -> F -> D`` with an activation in between."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.embed_dim, config.ff_dim, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.down = nn.Linear(config.ff_dim, config.embed_dim, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., D) -> (..., F) -> (..., D)."""
        return self.down(self.act(self.up(x)))


# --- 4. the pre-norm block ---------------------------------------------------------------


class EncoderLayer(nn.Module):
    """``x + dropout(attention(norm(x)))``, then ``x + dropout(feed_forward(norm(x)))``.

    Normalising before each sub-layer (rather than after the residual sum, as in the
    original Transformer) keeps deep stacks trainable without a learning-rate warm-up.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, bias=config.bias)
        self.attn = MultiHeadSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, bias=config.bias)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        """x: (B, T, D); attend: (B, 1, 1, T) bool or None (see :func:`attention_mask`). Returns (B, T, D)."""
        x = self.attention_block(x, attend)  # each position gathers from the others
        return self.feed_forward_block(x)  # then each position is transformed on its own

    def attention_block(self, x: Tensor, attend: Tensor | None = None) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return x + self.dropout(self.attn(self.norm1(x), attend))

    def feed_forward_block(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D): every position alone."""
        return x + self.dropout(self.ff(self.norm2(x)))


# --- 5. the encoder, 6. the head over the vocabulary, and 7. the loss ----------------------


class Encoder(nn.Module):
    """Word embedding + sinusoidal positions, a stack of encoder layers, a final LayerNorm,
    and a language-model head over the vocabulary (applied by :meth:`logits`)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.embed_scale = math.sqrt(config.embed_dim) if config.scale_embeddings else 1.0
        self.register_buffer(
            "positions", sinusoidal_positions(config.seq_len, config.embed_dim), persistent=False
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.embed_dim, bias=config.bias)
        self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=config.bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        if config.init_std is not None:
            self.apply(lambda module: _init_weights(module, config.init_std))

    def forward(
        self, input_ids: Tensor, padding_mask: Tensor | None = None, scored: Tensor | None = None
    ) -> Tensor:
        """input_ids: (B, T) ids; padding_mask: (B, T), True at padding. Returns hidden states (B, T, D).

        ``scored``, a (B, T) bool mask of the N positions whose words are predicted, keeps their
        hidden states only, (N, D): the head over the vocabulary is most of a step's arithmetic,
        and applying it to those rows alone saves most of it (the head is :meth:`logits`).
        """
        x, attend = self.embed(input_ids, padding_mask)  # (B, T, D), (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, attend)
        x = self.final_norm(x)
        return x if scored is None else x[scored]  # (B, T, D), or (N, D)

    def embed(self, input_ids: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The first layer's input (B, T, D), and which keys attention may look at (B, 1, 1, T) or None."""
        T = input_ids.shape[1]
        if T > self.positions.shape[0]:
            raise MinibertError(
                f"a sequence of {T} tokens is longer than the model's seq_len={self.positions.shape[0]}"
            )
        x = self.token_embedding(input_ids) * self.embed_scale + self.positions[:T]  # (B, T, D)
        attend = attention_mask(padding_mask) if padding_mask is not None else None
        return self.dropout(x), attend

    def logits(self, hidden: Tensor) -> Tensor:
        """Scores over the vocabulary: (..., D) -> (..., V)."""
        return self.lm_head(hidden)

    def loss_and_ranks(self, hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The masked-word loss of N scored positions, and where each right word ranks among the V guesses.

        hidden: (N, D), the scored positions' hidden states; labels: (N,), their original words.
        Returns the mean cross-entropy (a scalar) and the ranks (N,): how many other words score
        at least as high as the right one, so 0 means the model's first guess is right (accuracy)
        and below 5 that it is among its first five (top-5 accuracy).
        """
        logits = self.logits(hidden).float()  # (N, V); the softmax's sums need float32, even under bf16
        loss = F.cross_entropy(logits, labels)
        right = logits.gather(1, labels[:, None])  # (N, 1), the right word's score
        ranks = (logits >= right).sum(dim=-1) - 1  # (N,); a tie counts against the right word
        return loss, ranks


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
