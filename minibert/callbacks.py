"""Callbacks: the word embeddings, exported for TensorBoard's projector every epoch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from minibert.projector import embedding_matrix, top_word_ids, write_projector_config, write_projector_files

log = logging.getLogger(__name__)


class EmbeddingProjector(L.Callback):
    """Write the most frequent words' embeddings at the end of every training epoch and of fit.

    Files go to ``<log_dir>/projector/epoch_E/`` (``vectors.tsv``, ``metadata.tsv``), and
    ``<log_dir>/projector_config.pbtxt`` lists every epoch, so that
    ``tensorboard --logdir lightning_logs`` shows one tensor per epoch in its Projector tab.

    Args:
        top_k: how many of the most frequent words to export; 0 exports the whole vocabulary.
        source: ``input`` (the word embeddings) or ``output`` (the language-model head's rows;
            the same matrix when the embeddings are tied).
        with_counts: add each word's training count as a second metadata column.
    """

    def __init__(self, top_k: int = 3000, source: Literal["input", "output"] = "input", with_counts: bool = True) -> None:
        if top_k < 0:
            raise ValueError(f"EmbeddingProjector top_k={top_k} must be 0 (all words) or more")
        self.top_k, self.source, self.with_counts = top_k, source, with_counts
        self._failed = False
        self._exported_step = -1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._exported_step:  # a run stopped mid-epoch
            self.export(trainer, pl_module)

    def log_dir(self, trainer: L.Trainer) -> Path:
        logger = trainer.logger
        return Path(logger.log_dir if logger is not None and logger.log_dir else trainer.default_root_dir)

    @rank_zero_only
    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.vocab is None:
            return
        self._exported_step = trainer.global_step
        root = self.log_dir(trainer)
        folder = root / "projector" / f"epoch_{trainer.current_epoch}"
        ids = top_word_ids(pl_module.vocab, self.top_k)
        vectors = embedding_matrix(pl_module.encoder, self.source)[ids]
        words = pl_module.vocab.decode(ids)
        counts = [pl_module.vocab.counts[i] for i in ids] if self.with_counts else None
        try:
            write_projector_files(folder, vectors, words, counts)
            if isinstance(trainer.logger, TensorBoardLogger):
                write_projector_config(root, sorted((root / "projector").glob("epoch_*"), key=lambda p: int(p.name.split("_")[1])))
        except OSError as error:
            if not self._failed:  # say it once; training goes on
                log.warning("could not write projector files to %s: %s", folder, error)
            self._failed = True
