"""Callbacks: the word embeddings, exported for TensorBoard's projector every epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from minibert.projector import (
    embedding_matrix,
    mark_newest_run,
    remove_old_epochs,
    top_word_ids,
    write_projector_config,
    write_projector_files,
)


class EmbeddingProjector(L.Callback):
    """Write the most frequent words' embeddings at the end of every training epoch and of fit.

    Files go to ``<log_dir>/projector/epoch_E/`` (``vectors.tsv``, ``metadata.tsv``): the
    TensorBoard logger's ``version_N`` folder, another logger's own folder, or the trainer's
    ``default_root_dir`` without a logger. With a TensorBoard logger,
    ``<log_dir>/projector_config.pbtxt`` lists the epochs, newest first, so that
    ``tensorboard --logdir lightning_logs`` shows one tensor per epoch in its Projector tab,
    and a TensorBoard already running lists each new epoch within seconds
    (see :func:`minibert.projector.mark_newest_run`).

    Args:
        top_k: how many of the most frequent words to export (special tokens never are);
            0 exports the whole vocabulary.
        source: ``input`` (the word embeddings) or ``output`` (the language-model head's rows,
            a second view only when ``model.tie_embeddings`` is false: tied, they are the same matrix).
        with_counts: add each word's training count as a second metadata column.
        max_kept: keep at most this many epoch folders: the newest and an evenly spaced
            selection of earlier ones (every 2nd, 4th, 8th... epoch, as the run grows; see
            :func:`minibert.projector.epochs_to_keep`). 0 keeps them all. At the base
            configuration an epoch's files take about 5 MB.
    """

    def __init__(
        self,
        top_k: int = 3000,
        source: Literal["input", "output"] = "input",
        with_counts: bool = True,
        max_kept: int = 25,
    ) -> None:
        if top_k < 0:
            raise ValueError(f"EmbeddingProjector top_k={top_k} must be 0 (all words) or more")
        if source not in ("input", "output"):
            raise ValueError(f"EmbeddingProjector source={source!r} must be 'input' or 'output'")
        if max_kept == 1 or max_kept < 0:
            raise ValueError(f"EmbeddingProjector max_kept={max_kept} must be 0 (keep all) or at least 2")
        self.top_k, self.source, self.with_counts, self.max_kept = top_k, source, with_counts, max_kept
        self._failed = False  # a write failure is reported once, then training goes on quietly
        self._said_no_tensorboard = False
        self._exported_step: int | None = None  # None: no training step in this fit yet

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run starts at its checkpoint's step, whose epoch was exported by the run that saved it.
        self._exported_step = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning ends fit right after an epoch end, already exported: only steps since then count.
        if self._exported_step is not None and trainer.global_step != self._exported_step:
            self.export(trainer, pl_module)

    @rank_zero_only  # under DDP every rank holds the same weights: one writer is enough
    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``projector/epoch_E/`` for the current epoch, and list it for TensorBoard."""
        if pl_module.vocab is None:
            return
        self._exported_step = trainer.global_step
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        root = log_dir(trainer, tensorboard)
        folder = root / "projector" / f"epoch_{trainer.current_epoch}"
        ids = top_word_ids(pl_module.vocab, self.top_k)
        vectors = embedding_matrix(pl_module.encoder, self.source)[ids]  # (N, D)
        counts = [pl_module.vocab.counts[i] for i in ids] if self.with_counts else None
        try:
            write_projector_files(folder, vectors, pl_module.vocab.decode(ids), counts)
            remove_old_epochs(root, self.max_kept)
            if tensorboard is not None:
                # The config is rebuilt from the epoch folders on disk rather than with
                # SummaryWriter.add_embedding: that one keeps its entries in the writer object
                # and rewrites the whole pbtxt from them, so after a resume (a new writer) the
                # earlier epochs would vanish from the projector. It would also copy every
                # matrix a second time into folders of its own.
                write_projector_config(root)
                mark_newest_run(root, folder)
        except OSError as error:
            if not self._failed:
                rank_zero_warn(
                    f"EmbeddingProjector could not write {folder} ({error}); training goes on without it"
                )
            self._failed = True
            return
        if tensorboard is None and not self._said_no_tensorboard:
            rank_zero_info(
                f"EmbeddingProjector: no TensorBoard logger, so the files in {root / 'projector'} are not listed"
                " for TensorBoard; load them in projector.tensorflow.org"
            )
            self._said_no_tensorboard = True


def log_dir(trainer: L.Trainer, tensorboard: TensorBoardLogger | None) -> Path:
    """Where the projector folders go: the TensorBoard run, else the first logger's folder, else the default root.

    ``trainer.log_dir`` is not used: it broadcasts across processes, and only rank 0 exports.
    """
    logger = tensorboard or trainer.logger
    folder = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(folder or trainer.default_root_dir)
