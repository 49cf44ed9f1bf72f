"""BERT's masking: statistics on a large batch, labels, and reproducibility."""

from __future__ import annotations

import torch

from minibert.masking import IGNORE_INDEX, MaskingConfig, counter_uniform, mask_tokens
from minibert.tokenizer import MASK_ID, PAD_ID, UNK_ID

BERT = MaskingConfig(
    mask_prob=0.15,
    mask_token_prob=0.8,
    random_token_prob=0.1,
    mask_id=MASK_ID,
    num_specials=3,
    vocab_size=1000,
)
U64 = (1 << 64) - 1


def reference_uniform(seed: int, epoch: int, sample: int, position: int, per_sample: int) -> float:
    """counter_uniform's hash written with Python's unbounded integers, reduced mod 2**64."""
    x = (sample * per_sample + position + (seed * 1_000_003 + epoch) * 0x9E3779B97F4A7C15) & U64
    x = (x * 0x9E3779B97F4A7C15) & U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    x ^= x >> 31
    return (x >> 40) / (1 << 24)


def test_counter_uniform_matches_the_unsigned_reference():
    samples = torch.tensor([0, 7, 123456789, 2**40])
    got = counter_uniform(seed=5, epoch=3, sample_ids=samples, shape=(4, 3))  # (4, 4, 3)
    for i, sample in enumerate(samples.tolist()):
        for t in range(4):
            for k in range(3):
                assert got[i, t, k].item() == reference_uniform(5, 3, sample, t * 3 + k, 12)


def test_counter_uniform_is_uniform():
    u = counter_uniform(0, 0, torch.arange(2000), (64, 3))
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    assert abs((u < 0.15).float().mean().item() - 0.15) < 0.005


def large_batch(batch: int = 4096, length: int = 32) -> torch.Tensor:
    """Ordinary words with some padding, <unk> and <mask> tokens sprinkled in."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (batch, length), generator=generator)
    ids[:, -4:] = PAD_ID
    ids[torch.rand(batch, length, generator=generator) < 0.05] = UNK_ID
    ids[:, 0] = MASK_ID  # a special token that is not padding
    return ids


def test_masking_statistics_on_a_large_batch():
    ids = large_batch()
    corrupted, labels = mask_tokens(ids, torch.arange(len(ids)), BERT, seed=0, epoch=0)
    chosen = labels != IGNORE_INDEX
    ordinary = ids >= 3
    assert not chosen[~ordinary].any()  # never a pad, <unk> or <mask> position
    assert (labels[chosen] == ids[chosen]).all()  # labels are the original ids
    assert (corrupted[~chosen] == ids[~chosen]).all()  # what is not chosen is untouched
    assert abs(chosen.sum().item() / ordinary.sum().item() - 0.15) < 0.01
    n = chosen.sum().item()
    became_mask = (corrupted[chosen] == MASK_ID).sum().item() / n
    unchanged = (corrupted[chosen] == ids[chosen]).sum().item() / n
    random_word = 1 - became_mask - unchanged
    assert abs(became_mask - 0.8) < 0.015 and abs(random_word - 0.1) < 0.01 and abs(unchanged - 0.1) < 0.01
    assert (corrupted[chosen] != PAD_ID).all() and (corrupted[chosen] != UNK_ID).all()
    random_ids = corrupted[chosen & (corrupted != MASK_ID) & (corrupted != ids)]
    assert random_ids.min() >= 3 and random_ids.max() < 1000 and len(random_ids.unique()) > 500


def test_reference_masking_replaces_every_chosen_word_by_mask():
    reference = MaskingConfig(0.15, 1.0, 0.0, MASK_ID, 3, 1000)
    ids = large_batch(256)
    corrupted, labels = mask_tokens(ids, torch.arange(256), reference, seed=0, epoch=0)
    chosen = labels != IGNORE_INDEX
    assert (corrupted[chosen] == MASK_ID).all() and (corrupted[~chosen] == ids[~chosen]).all()


def test_every_sequence_with_a_word_gets_a_scored_position():
    ids = torch.full((500, 16), PAD_ID)
    ids[:, 5] = torch.arange(500) + 3  # one ordinary word in a sea of padding
    ids[:100, 6] = UNK_ID
    ids[-1, 5] = UNK_ID  # nothing scoreable at all in the last row
    _, labels = mask_tokens(ids, torch.arange(500), BERT, seed=1, epoch=0)
    scored = labels != IGNORE_INDEX
    assert (scored[:-1].sum(dim=1) == 1).all() and (labels[:-1, 5] == ids[:-1, 5]).all()
    assert not scored[-1].any()


def test_masks_depend_only_on_seed_epoch_and_sample():
    ids = large_batch(64)
    samples = torch.arange(1000, 1064)
    corrupted, labels = mask_tokens(ids, samples, BERT, seed=7, epoch=2)
    # The same samples in another order (another batch, another worker) get the same masks.
    order = torch.randperm(64)
    corrupted2, labels2 = mask_tokens(ids[order], samples[order], BERT, seed=7, epoch=2)
    assert torch.equal(corrupted2, corrupted[order]) and torch.equal(labels2, labels[order])
    # Alone in a batch of one, too.
    alone, alone_labels = mask_tokens(ids[3:4], samples[3:4], BERT, seed=7, epoch=2)
    assert torch.equal(alone[0], corrupted[3]) and torch.equal(alone_labels[0], labels[3])
    for other in ({"seed": 8, "epoch": 2}, {"seed": 7, "epoch": 3}):
        _, other_labels = mask_tokens(ids, samples, BERT, **other)
        assert not torch.equal(other_labels, labels)
