"""The LightningDataModule: from a corpus on disk to masked batches, every step in order.

The path from text to what the model sees:

1-5. read, split, count, encode, store: the corpus becomes arrays of token ids, once
     (:mod:`minibert.encode`, with :mod:`minibert.corpus` and :mod:`minibert.tokenizer`);
6. cut: samples of ``seq_len`` tokens (:mod:`minibert.windows`);
7. mask: BERT's corruption of each batch, on its device (:mod:`minibert.masking`).

:class:`EuroparlDataModule` calls them in that order: :meth:`~EuroparlDataModule.prepare_data`
steps 1 to 5, :meth:`~EuroparlDataModule.setup` step 6, and
:meth:`~EuroparlDataModule.on_after_batch_transfer` step 7.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from minibert.encode import SPLITS, EncodingSettings, build_cache, build_test_corpus_cache
from minibert.errors import MinibertError
from minibert.machinery.cache import (
    VOCAB_FILE,
    cache_key,
    ensure_cache,
    key_for_test_corpus,
    load_split,
)
from minibert.machinery.checkpoint import checkpoint_vocabulary
from minibert.machinery.download import EUROPARL_V7_FR, EUROPARL_V7_URL, fetch_europarl_fr
from minibert.machinery.sampler import ResumableLoader, ResumableSampler
from minibert.masking import MaskingConfig, mask_tokens
from minibert.tokenizer import (
    MASK_ID,
    PAD_ID,
    PUNCTUATION,
    SPECIAL_TOKENS,
    Vocabulary,
)
from minibert.windows import WINDOWS, TokenWindows


class EuroparlDataModule(L.LightningDataModule):
    """Europarl French for masked-word prediction.

    A resumed run picks its epoch up after the batches already trained: the training loader's
    state, which Lightning saves in every checkpoint (:class:`~minibert.machinery.sampler.ResumableLoader`).

    Args:
        corpus: a sentence-per-line text file (plain or ``.gz``), a raw Europarl session
            file, a directory of session files, or ``europarl-v7-fr``: the release's French
            side, downloaded from ``download_url`` into ``data_dir`` on first use.
        data_dir: where downloads and encoded corpora (``data_dir/cache/``) are kept.
        download_url: where ``europarl-v7-fr`` comes from (the release's ``fr-en.tgz``).
        test_corpus: an optional held-out corpus (any form ``corpus`` takes but the
            download) for ``test`` and ``predict``, encoded with the model's vocabulary.
        vocab_from: a checkpoint whose vocabulary to use instead of building one from
            ``corpus``. ``validate``, ``test`` and ``predict`` set it to their ``--ckpt_path``:
            scoring ``test_corpus`` then needs nothing but the checkpoint.
        vocab_size: size of the vocabulary, special tokens (``<pad>``, ``<unk>``, ``<mask>``)
            included; the most frequent words of the training split fill the rest.
        min_freq: words seen fewer times in the training split become ``<unk>``.
        max_sentences: keep only the first N sentences of the corpus (all when null).
        val_fraction: share of sentences held out for validation, chosen by ``seed``.
        seq_len: tokens per sample.
        windows: how training samples are cut: ``tile`` (windows end to end over the text:
            every token is trained on) or ``sentence`` (the reference: one window starting at
            each sentence). Validation and test always tile, so every held-out token is scored
            once. See :class:`TokenWindows`.
        packing: a sample runs on into the next sentences (true) or stops at its sentence's end (false).
        mask_prob: chance that a token is chosen for prediction.
        val_mask_prob: the same for validation and test; null: ``mask_prob``. A fixed value
            (0.15, BERT's) compares runs trained with different ``mask_prob`` on the same task.
        mask_token_prob: chance that a chosen token becomes ``<mask>``.
        random_token_prob: chance that a chosen token becomes a random word (else it is kept).
        batch_size: samples per batch, per process.
        num_workers: DataLoader worker processes.
        persistent_workers: keep workers alive between epochs.
        seed: seeds the split and the masks.
    """

    def __init__(
        self,
        corpus: str = EUROPARL_V7_FR,
        data_dir: str = "data",
        download_url: str = EUROPARL_V7_URL,
        test_corpus: str | None = None,
        vocab_from: str | None = None,
        vocab_size: int = 40_003,
        min_freq: int = 1,
        max_sentences: int | None = None,
        val_fraction: float = 0.05,
        seq_len: int = 20,
        windows: Literal["tile", "sentence"] = "tile",
        packing: bool = True,
        mask_prob: float = 0.15,
        val_mask_prob: float | None = None,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        persistent_workers: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.corpus, self.data_dir, self.download_url = corpus, Path(data_dir), download_url
        self.test_corpus, self.vocab_from = test_corpus, vocab_from
        self.settings = EncodingSettings(vocab_size, min_freq, max_sentences, val_fraction, seed)
        self.seq_len, self.windows, self.packing = seq_len, windows, packing
        self.mask_prob, self.val_mask_prob = mask_prob, mask_prob if val_mask_prob is None else val_mask_prob
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.batch_size, self.num_workers = batch_size, num_workers
        self.persistent_workers, self.seed = persistent_workers, seed
        self._check_options()
        self.vocab: Vocabulary | None = None  # set by load_vocabulary
        self.cache_dir: Path | None = None  # the corpus's encoded arrays, once found or built
        self.test_cache_dir: Path | None = None  # the test corpus's
        self.datasets: dict[str, TokenWindows] = {}
        self._position_from_old_checkpoint: dict[str, int] = {}  # see load_state_dict

    def _check_options(self) -> None:
        """Every data option, checked once where it enters: a wrong value stops the command in one line."""
        settings, special = self.settings, len(SPECIAL_TOKENS)
        checks = [
            (
                settings.vocab_size > special,
                f"data.vocab_size={settings.vocab_size} must be more than the {special} special tokens "
                f"({', '.join(SPECIAL_TOKENS)})",
            ),
            (settings.min_freq >= 1, f"data.min_freq={settings.min_freq} must be at least 1"),
            (
                settings.max_sentences is None or settings.max_sentences >= 1,
                f"data.max_sentences={settings.max_sentences} must be at least 1 (or null for all)",
            ),
            (0 <= settings.val_fraction < 1, f"data.val_fraction={settings.val_fraction} must be in [0, 1)"),
            (self.seq_len >= 2, f"data.seq_len={self.seq_len} must be at least 2"),
            (self.windows in WINDOWS, f"data.windows={self.windows!r} must be one of {', '.join(WINDOWS)}"),
            (self.batch_size >= 1, f"data.batch_size={self.batch_size} must be at least 1"),
            (self.num_workers >= 0, f"data.num_workers={self.num_workers} must be at least 0"),
        ]
        for name in ("mask_prob", "val_mask_prob", "mask_token_prob", "random_token_prob"):
            p = getattr(self, name)
            checks.append((0 <= p <= 1, f"data.{name}={p} must be a probability in [0, 1]"))
        replaced = self.mask_token_prob + self.random_token_prob
        checks.append(
            (replaced <= 1, f"data.mask_token_prob + data.random_token_prob = {replaced} must not exceed 1")
        )
        for ok, message in checks:
            if not ok:
                raise MinibertError(message)

    # --- steps 1 to 5, once: the command line, prepare_data and setup all come here -----------

    def prepare_data(self) -> None:
        """Encode the corpora the run needs unless their caches exist (Lightning calls this on one process per node)."""
        self.load_vocabulary()  # first: it encodes the test corpus too
        if self.test_corpus is not None:
            self._encode_test_corpus_once()

    def load_vocabulary(self) -> Vocabulary:
        """The vocabulary: ``vocab_from``'s, or the one counted on the training split (the corpus is encoded first, unless cached).

        The command line calls this (through :meth:`vocab_len`) before it builds the model, whose
        size is the vocabulary's; ``prepare_data`` and ``setup`` then find it done.
        """
        if self.vocab is None and self.vocab_from:
            self.vocab = checkpoint_vocabulary(self.vocab_from)
        if self.vocab is None:
            self.vocab = Vocabulary.load(self._encode_corpus_once() / VOCAB_FILE)
        return self.vocab

    def vocab_len(self) -> int:
        """Number of entries of the vocabulary (at most ``vocab_size``): the model's ``vocab_size``."""
        return len(self.load_vocabulary())

    def _encode_corpus_once(self) -> Path:
        """The cache folder of ``corpus``, found (or built: steps 1 to 5) on the first call and kept."""
        if self.cache_dir is None:
            corpus = self._corpus_path()  # downloads Europarl on first use
            given = self.load_vocabulary() if self.vocab_from else None  # else it is counted into the cache
            key = cache_key(corpus, asdict(self.settings), PUNCTUATION, given.itos if given else None)
            cache_dir = self.data_dir / "cache" / key
            ensure_cache(cache_dir, lambda: build_cache(corpus, self.settings, cache_dir, given))
            self.cache_dir = cache_dir
        return self.cache_dir

    def _corpus_path(self) -> Path:
        if self.corpus == EUROPARL_V7_FR:
            return fetch_europarl_fr(self.data_dir, self.download_url)
        return _existing(self.corpus, "data.corpus")

    def _encode_test_corpus_once(self) -> Path:
        """The cache folder of ``test_corpus``, encoded with the model's vocabulary, found (or built) on the first call and kept."""
        if self.test_cache_dir is None:
            if self.test_corpus is None:
                raise MinibertError(
                    "`test` and `predict` need data.test_corpus, a held-out corpus (to score the validation split, use `validate`)"
                )
            test_corpus, vocab = _existing(self.test_corpus, "data.test_corpus"), self.load_vocabulary()
            cache_dir = self.data_dir / "cache" / key_for_test_corpus(test_corpus, PUNCTUATION, vocab.itos)
            ensure_cache(cache_dir, lambda: build_test_corpus_cache(test_corpus, vocab, cache_dir))
            self.test_cache_dir = cache_dir
        return self.test_cache_dir

    # --- in every process: the splits memory-mapped and cut into samples (6) ---------------------

    def setup(self, stage: str) -> None:
        """Memory-map the splits that ``stage`` needs (every process).

        The caches exist already when Lightning calls this (``prepare_data``, or the
        vocabulary link when the command line built the model); calling ``prepare_data`` here
        too keeps the module usable on its own, and costs nothing when it ran.
        """
        self.prepare_data()
        if stage in ("test", "predict"):
            self.datasets["test"] = self._windows(self._encode_test_corpus_once(), "test")
            return
        cache_dir = self._encode_corpus_once()  # with vocab_from, the splits are encoded with that vocabulary
        for split in SPLITS:
            self.datasets[split] = self._windows(cache_dir, split)
        num_windows = self.datasets["train"].num_windows
        if stage == "fit" and num_windows < self.batch_size:
            raise MinibertError(
                f"data.corpus {self.corpus} gives {num_windows} training samples, "
                f"fewer than one batch (data.batch_size={self.batch_size})"
            )
        if self.settings.val_fraction > 0 and len(self.datasets["val"]) == 0:
            raise MinibertError(
                f"data.val_fraction={self.settings.val_fraction} of corpus {self.corpus} leaves no validation sentence: raise it"
            )

    def _windows(self, cache_dir: Path, split: str) -> TokenWindows:
        tokens, offsets = load_split(cache_dir, split)
        if split == "train":  # training tiles move by up to seq_len - 1 tokens each epoch
            return TokenWindows(
                tokens, offsets, self.seq_len, self.packing, self.windows, shifts=self.seq_len
            )
        # Held-out text is always tiled, from its first token: every token scored once, whatever the training windows.
        return TokenWindows(tokens, offsets, self.seq_len, self.packing, "tile")

    def train_dataloader(self) -> ResumableLoader:
        # A fresh shuffle every epoch; each process trains on its own shard of it.
        train, trainer = self.datasets["train"], self.trainer
        num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(train.num_windows, self.seed, num_replicas, rank, shifts=train.shifts)
        loader = self._loader("train", sampler, ResumableLoader)
        if self._position_from_old_checkpoint:
            loader.load_state_dict(self._position_from_old_checkpoint)
        return loader

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume from a checkpoint of an older minibert, which saved the epoch's position here rather than in the loader."""
        self._position_from_old_checkpoint = state_dict

    def val_dataloader(self) -> DataLoader:
        # Under DDP, Lightning would shard validation with a DistributedSampler, which pads
        # the shards to equal sizes by repeating samples: those would count twice in the
        # validation metrics. This sampler deals each rank a disjoint share instead (sizes
        # off by at most one), so the synced metrics equal a single-process validation.
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                self.datasets["val"], self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
        return self._loader("val", sampler)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", sampler=None)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", sampler=None)

    def _loader(self, split: str, sampler: Sampler | None, kind: type[DataLoader] = DataLoader) -> DataLoader:
        # Pinned host memory only speeds up copies to a GPU; on a CPU run it is wasted.
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return kind(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            # A generator of its own: starting an epoch then draws nothing from the global
            # random state, which dropout uses and a checkpoint restores.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=on_gpu,
        )

    # --- 7. mask: on the device the batch is on ------------------------------------------------

    def masking(self, stage: str) -> MaskingConfig:
        """How ``stage`` (train, val or test) corrupts its batches."""
        mask_prob = self.mask_prob if stage == "train" else self.val_mask_prob
        return MaskingConfig(
            mask_prob,
            self.mask_token_prob,
            self.random_token_prob,
            MASK_ID,
            len(SPECIAL_TOKENS),
            len(self.vocab),
        )

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Mask on the device the batch is on: a few vectorised operations per batch.

        Training masks change with the epoch; validation and test masks depend on the seed
        only, so every epoch and every run scores the same positions. Each of the three
        gets its own random stream: the same sample id is masked differently in each.
        """
        stage = self._masking_stage()
        epoch = self.trainer.current_epoch if stage == "train" and self.trainer is not None else 0
        input_ids = batch["input_ids"]
        stream_seed = self.seed * len(_STREAMS) + _STREAMS[stage]
        corrupted, labels = mask_tokens(
            input_ids, batch["sample_ids"], self.masking(stage), stream_seed, epoch
        )
        return {"input_ids": corrupted, "labels": labels, "padding_mask": input_ids == PAD_ID}

    def _masking_stage(self) -> str:
        if self.trainer is None or self.trainer.training:
            return "train"
        return "test" if self.trainer.testing or self.trainer.predicting else "val"


_STREAMS = {"train": 0, "val": 1, "test": 2}  # one random stream of masks for each


def _existing(path: str, option: str) -> Path:
    if not Path(path).exists():
        raise MinibertError(
            f"{option}: {path} does not exist (give a sentence-per-line file, a .gz or a directory of Europarl session files)"
        )
    return Path(path)
