"""The LightningDataModule: from a Europarl corpus on disk to masked batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from minibert.cache import CacheSettings, build_cache, cache_key, load_split
from minibert.errors import MinibertError
from minibert.masking import MaskingConfig, mask_tokens
from minibert.tokenizer import MASK_ID, PAD_ID, SPECIAL_TOKENS, Vocabulary


class SentenceWindows(Dataset):
    """Fixed-length samples, one starting at each sentence of a split.

    Args:
        tokens: flat token ids of the split, (N,).
        offsets: start of every sentence in ``tokens``, plus the end, (S + 1,).
        seq_len: length of every sample.
        packing: run on into the following sentences (the reference's behaviour) instead
            of cutting at the sentence's end and padding.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, seq_len: int, packing: bool) -> None:
        self.tokens, self.offsets, self.seq_len, self.packing = tokens, offsets, seq_len, packing

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        start = int(self.offsets[index])
        end = len(self.tokens) if self.packing else int(self.offsets[index + 1])
        window = np.full(self.seq_len, PAD_ID, dtype=np.int64)
        piece = self.tokens[start : min(end, start + self.seq_len)]
        window[: len(piece)] = piece
        return {"input_ids": torch.from_numpy(window), "sample_ids": torch.tensor(index)}


class EuroparlDataModule(L.LightningDataModule):
    """Europarl French for masked-word prediction.

    Args:
        corpus: a sentence-per-line text file (plain or ``.gz``), a raw Europarl session
            file, or a directory of session files.
        data_dir: where encoded corpora are cached.
        vocab_size: size of the vocabulary, special tokens (``<pad>``, ``<unk>``, ``<mask>``)
            included; the most frequent words of the training split fill the rest.
        min_freq: words seen fewer times in the training split become ``<unk>``.
        max_sentences: keep only the first N sentences of the corpus (all when null).
        val_fraction: share of sentences held out for validation, chosen by ``seed``.
        seq_len: tokens per sample.
        packing: a sample runs on into the next sentences (true) or is one padded sentence (false).
        mask_prob: chance that a token is chosen for prediction.
        mask_token_prob: chance that a chosen token becomes ``<mask>``.
        random_token_prob: chance that a chosen token becomes a random word (else it is kept).
        batch_size: samples per batch, per process.
        num_workers: DataLoader worker processes.
        persistent_workers: keep workers alive between epochs.
        seed: seeds the split and the masks.
    """

    def __init__(
        self,
        corpus: str = "europarl-v7-fr",
        data_dir: str = "data",
        vocab_size: int = 40_003,
        min_freq: int = 1,
        max_sentences: int | None = None,
        val_fraction: float = 0.05,
        seq_len: int = 20,
        packing: bool = True,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_options(vocab_size, min_freq, max_sentences, val_fraction, seq_len, mask_prob, mask_token_prob, random_token_prob, batch_size, num_workers)
        self.corpus, self.data_dir = corpus, Path(data_dir)
        self.settings = CacheSettings(vocab_size, min_freq, max_sentences, val_fraction, seed)
        self.seq_len, self.packing = seq_len, packing
        self.mask_probs = (mask_prob, mask_token_prob, random_token_prob)
        self.batch_size, self.num_workers, self.persistent_workers = batch_size, num_workers, persistent_workers
        self.seed = seed
        self._vocab: Vocabulary | None = None
        self.datasets: dict[str, SentenceWindows] = {}

    # The cache is built on first use: the model's size depends on the vocabulary, which is
    # linked from here when the command line instantiates both (see cli.py).
    @property
    def cache_dir(self) -> Path:
        corpus = Path(self.corpus)
        if not corpus.exists():
            raise MinibertError(f"data.corpus: {corpus} does not exist (give a sentence-per-line file, a .gz or a directory of Europarl session files)")
        return self.data_dir / "cache" / cache_key(corpus, self.settings)

    @property
    def vocab(self) -> Vocabulary:
        if self._vocab is None:
            self.prepare_data()
            self._vocab = Vocabulary.load(self.cache_dir / "vocab.json")
        return self._vocab

    @property
    def vocab_len(self) -> int:
        """Number of entries of the built vocabulary (at most ``vocab_size``)."""
        return len(self.vocab)

    @property
    def masking(self) -> MaskingConfig:
        return MaskingConfig(*self.mask_probs, mask_id=MASK_ID, num_specials=len(SPECIAL_TOKENS), vocab_size=len(self.vocab))

    def prepare_data(self) -> None:
        if not self.cache_dir.exists():
            build_cache(Path(self.corpus), self.settings, self.cache_dir)

    def setup(self, stage: str) -> None:
        for split in ("train", "val"):
            tokens, offsets = load_split(self.cache_dir, split)
            self.datasets[split] = SentenceWindows(tokens, offsets, self.seq_len, self.packing)
        if len(self.datasets["train"]) < self.batch_size:
            raise MinibertError(
                f"data.corpus {self.corpus} gives {len(self.datasets['train'])} training samples, "
                f"fewer than one batch (data.batch_size={self.batch_size})"
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Under DDP, Lightning would shard validation with a DistributedSampler, which pads
        # the shards to equal sizes by repeating samples: those would count twice in the
        # validation metrics. This sampler deals each rank a disjoint share instead (sizes
        # off by at most one), so the synced metrics equal a single-process validation.
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(self.datasets["val"], self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return self._loader("val", shuffle=False, sampler=sampler)

    def _loader(self, split: str, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=generator if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Mask on the device the batch is on: a few vectorised operations per batch.

        Training masks change with the epoch; validation masks are the same every epoch.
        """
        training = self.trainer is not None and self.trainer.training
        epoch = self.trainer.current_epoch if training else 0
        stream = 0 if training else 1
        input_ids = batch["input_ids"]
        corrupted, labels = mask_tokens(input_ids, batch["sample_ids"], self.masking, self.seed * 2 + stream, epoch)
        return {"input_ids": corrupted, "labels": labels, "padding_mask": input_ids == PAD_ID}


def _check_options(vocab_size, min_freq, max_sentences, val_fraction, seq_len, mask_prob, mask_token_prob, random_token_prob, batch_size, num_workers) -> None:
    special = len(SPECIAL_TOKENS)
    checks = [
        (vocab_size > special, f"data.vocab_size={vocab_size} must be more than the {special} special tokens ({', '.join(SPECIAL_TOKENS)})"),
        (min_freq >= 1, f"data.min_freq={min_freq} must be at least 1"),
        (max_sentences is None or max_sentences >= 1, f"data.max_sentences={max_sentences} must be at least 1 (or null for all)"),
        (0 <= val_fraction < 1, f"data.val_fraction={val_fraction} must be in [0, 1)"),
        (seq_len >= 2, f"data.seq_len={seq_len} must be at least 2"),
        (batch_size >= 1, f"data.batch_size={batch_size} must be at least 1"),
        (num_workers >= 0, f"data.num_workers={num_workers} must be at least 0"),
    ]
    for name, p in (("mask_prob", mask_prob), ("mask_token_prob", mask_token_prob), ("random_token_prob", random_token_prob)):
        checks.append((0 <= p <= 1, f"data.{name}={p} must be a probability in [0, 1]"))
    checks.append((mask_token_prob + random_token_prob <= 1, f"data.mask_token_prob + data.random_token_prob = {mask_token_prob + random_token_prob} must not exceed 1"))
    for ok, message in checks:
        if not ok:
            raise MinibertError(message)
