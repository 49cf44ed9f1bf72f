"""BERT's masked-language-model corruption, vectorised over a whole batch.

BERT's rule (:func:`mask_tokens`): choose each ordinary word with probability ``mask_prob``;
replace a chosen word by ``<mask>`` (80%), by a random word (10%) or keep it (10%); predict
the chosen words only.

Every random number is a pure function of ``(seed, epoch, sample id, position)``
(:func:`counter_uniform`, at the end of the file): the same sample gets the same mask
whichever batch, worker or process it lands in, and a resumed run sees exactly the masks of
a run that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100  # the label of every position that is not scored (PyTorch's cross_entropy default)


@dataclass(frozen=True)
class MaskingConfig:
    """How tokens are chosen and corrupted.

    Args:
        mask_prob: chance that an ordinary token is chosen for prediction (BERT: 0.15).
        mask_token_prob: chance that a chosen token is replaced by ``<mask>`` (BERT: 0.8).
        random_token_prob: chance that a chosen token is replaced by a random word (BERT: 0.1);
            otherwise it is left unchanged.
        mask_id: id of ``<mask>``.
        num_specials: ids below this are special tokens, never chosen nor drawn at random.
        vocab_size: number of ids; random words are drawn from ``[num_specials, vocab_size)``.
    """

    mask_prob: float
    mask_token_prob: float
    random_token_prob: float
    mask_id: int
    num_specials: int
    vocab_size: int


def mask_tokens(
    input_ids: Tensor, sample_ids: Tensor, config: MaskingConfig, seed: int, epoch: int
) -> tuple[Tensor, Tensor]:
    """Corrupt a batch for masked-word prediction.

    Args:
        input_ids: (B, T) token ids, padding included.
        sample_ids: (B,) a stable id of each sample in its dataset.
        seed, epoch: with ``sample_ids``, all that the random choices depend on.

    Returns:
        ``(corrupted_ids, labels)``, both (B, T): labels hold the original id where a
        token was chosen and ``IGNORE_INDEX`` everywhere else.
    """
    u = counter_uniform(seed, epoch, sample_ids, (input_ids.shape[1], 3))  # (B, T, 3)
    choose_u, action_u, random_u = u.unbind(-1)  # 3 x (B, T)

    # <pad>, <unk> and <mask> are never targets: an <unk> target would reward predicting <unk>.
    maskable = input_ids >= config.num_specials
    chosen = (choose_u < config.mask_prob) & maskable
    # Every sequence with an ordinary word gets at least one target, so no loss is ever NaN.
    fallback = choose_u.masked_fill(~maskable, 2.0).argmin(dim=1)  # (B,)
    needs_one = ~chosen.any(dim=1) & maskable.any(dim=1)  # (B,)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    # Not chosen[needs_one, ...] = True: on a GPU the host would wait to learn how many rows that is.
    chosen |= needs_one[:, None] & (positions == fallback[:, None])

    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    to_mask = chosen & (action_u < config.mask_token_prob)
    to_random = chosen & ~to_mask & (action_u < config.mask_token_prob + config.random_token_prob)
    num_words = config.vocab_size - config.num_specials
    random_ids = config.num_specials + (random_u * num_words).long().clamp_(max=num_words - 1)
    corrupted = torch.where(to_mask, config.mask_id, input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


# --- where the random numbers come from ------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _to_int64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 that holds the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_to_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def counter_uniform(seed: int, epoch: int, sample_ids: Tensor, shape: tuple[int, int]) -> Tensor:
    """Uniform floats in [0, 1) of shape ``(len(sample_ids), *shape)`` from a counter-based generator.

    splitmix64 hashes a unique 64-bit counter for every (seed, epoch, sample, position, draw);
    int64 arithmetic wraps around exactly like the unsigned original. The right shifts
    are masked because torch shifts signed integers arithmetically.
    """
    per_sample = shape[0] * shape[1]
    offsets = torch.arange(per_sample, dtype=torch.int64, device=sample_ids.device)
    stream = (seed * 1_000_003 + epoch) * _GOLDEN
    x = (sample_ids.to(torch.int64)[:, None] * per_sample + offsets) + _to_int64(stream)  # (B, T*K)
    x = x * _GOLDEN
    x = (x ^ ((x >> 30) & ((1 << 34) - 1))) * _MIX1
    x = (x ^ ((x >> 27) & ((1 << 37) - 1))) * _MIX2
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    top24 = (x >> 40) & ((1 << 24) - 1)  # 24 random bits: exact in float32
    return (top24.to(torch.float32) / (1 << 24)).view(len(sample_ids), *shape)
