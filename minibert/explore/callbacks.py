"""Training callbacks that show inside the model, in TensorBoard, as it learns.

- :class:`EmbeddingProjector`: the word embeddings at the end of every epoch (Projector tab);
- :class:`AttentionImages`: the attention maps of a few fixed sentences at each validation (Images tab);
- :class:`EmbeddingScores`: purity@k and analogy accuracy of the word embeddings at each validation
  (Scalars tab).

``configs/*.yaml`` list them in ``trainer.callbacks``, as
``minibert.explore.callbacks.EmbeddingProjector`` and so on. The validation callbacks skip the
sanity check before training (its weights are the initial ones, and its logs are thrown away).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from minibert.errors import MinibertError
from minibert.explore.attention import attention_maps, draw_attention
from minibert.explore.embeddings import embedding_matrix, top_word_ids
from minibert.explore.evaluation import (
    AnalogySection,
    analogy_scores,
    group_of,
    purity_at_k,
    read_analogies,
    read_groups,
)
from minibert.explore.figures import figure_rgb, require_matplotlib
from minibert.explore.projector import (
    mark_newest_run,
    remove_old_epochs,
    write_epochs_config,
    write_projector_files,
)
from minibert.tokenizer import compose, tokenize


class EmbeddingProjector(L.Callback):
    """Write the most frequent words' embeddings at the end of every training epoch and of fit.

    Files go to ``<log_dir>/projector/epoch_E/`` (``vectors.tsv``, ``metadata.tsv``): the
    TensorBoard logger's ``version_N`` folder, another logger's own folder, or the trainer's
    ``default_root_dir`` without a logger. With a TensorBoard logger,
    ``<log_dir>/projector_config.pbtxt`` lists the epochs, newest first, so that
    ``tensorboard --logdir lightning_logs`` shows one tensor per epoch in its Projector tab,
    named ``word_embeddings/9997 epoch 2`` so that the newest opens first
    (:func:`minibert.explore.projector.epoch_tensor_name`). A TensorBoard already running
    lists each new epoch within seconds (see :func:`minibert.explore.projector.mark_newest_run`);
    a projector page already open reads its list only when it loads: reload it.

    Args:
        top_k: how many of the most frequent words to export (special tokens never are);
            0 exports the whole vocabulary.
        source: ``input`` (the word embeddings) or ``output`` (the language-model head's rows,
            a second view only when ``model.tie_embeddings`` is false: tied, they are the same matrix).
        with_counts: add each word's training count as a second metadata column.
        max_kept: keep at most this many epoch folders: the newest and an evenly spaced
            selection of earlier ones (every 2nd, 4th, 8th... epoch, as the run grows; see
            :func:`minibert.explore.projector.epochs_to_keep`). 0 keeps them all. At the base
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
        tensorboard = tensorboard_logger(trainer)
        root = log_dir(trainer, tensorboard)
        folder = root / "projector" / f"epoch_{trainer.current_epoch}"
        ids = top_word_ids(pl_module.vocab, self.top_k)
        vectors = embedding_matrix(pl_module.encoder, self.source)[ids]  # (N, D)
        counts = {"count": [pl_module.vocab.counts[i] for i in ids]} if self.with_counts else {}
        try:
            write_projector_files(folder, vectors, pl_module.vocab.decode(ids), **counts)
            if tensorboard is not None:
                # The config is rebuilt from the epoch folders on disk rather than with
                # SummaryWriter.add_embedding: that one keeps its entries in the writer object
                # and rewrites the whole pbtxt from them, so after a resume (a new writer) the
                # earlier epochs would vanish from the projector. It would also copy every
                # matrix a second time into folders of its own.
                write_epochs_config(root, self.max_kept)
                mark_newest_run(root, folder)
            remove_old_epochs(root, self.max_kept)  # once the config no longer lists them
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


DEFAULT_SENTENCES = (
    "la commission a présenté sa proposition au parlement .",
    "le vote aura lieu demain à midi .",
)


class AttentionImages(L.Callback):
    """Draw the attention maps of each sentence at every validation: ``attention/sentence_N`` in the Images tab.

    The grid is :func:`minibert.explore.attention.draw_attention`'s, one image per sentence and
    validation (the slider above it steps through the training steps). It needs a TensorBoard
    logger and matplotlib; without them it says so once and training goes on.

    Args:
        sentences: the sentences to draw (by default, two about the commission and a vote). One longer than the model's ``seq_len`` is cut to its
            first ``seq_len`` tokens; words outside the vocabulary are marked ``*`` (read as ``<unk>``).
    """

    def __init__(self, sentences: list[str] | None = None) -> None:
        # Composed (NFC) as the vocabulary is: a config saved decomposed reads the same words.
        sentences = [
            compose(sentence) for sentence in (DEFAULT_SENTENCES if sentences is None else sentences)
        ]
        if not sentences or not all(tokenize(sentence) for sentence in sentences):
            raise ValueError("AttentionImages needs sentences with at least one word each")
        self.sentences = sentences
        self._said = False  # a missing logger or matplotlib is reported once

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and pl_module.vocab is not None:
            self.draw(trainer, pl_module)

    @rank_zero_only  # every rank holds the same weights: one image is enough
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = tensorboard_logger(trainer)
        if tensorboard is None or not self._has_matplotlib():
            if tensorboard is None and not self._said:
                rank_zero_info("AttentionImages: no TensorBoard logger, so no attention maps are drawn")
            self._said = True
            return
        seq_len = pl_module.config.seq_len
        for number, sentence in enumerate(self.sentences, start=1):
            # Tokens joined by spaces tokenize back to the same tokens.
            cut = " ".join(tokenize(sentence)[:seq_len])
            labels, weights = attention_maps(pl_module.encoder, pl_module.vocab, cut, seq_len)  # (L, H, T, T)
            figure = draw_attention(weights, labels, f"step {trainer.global_step}: {' '.join(labels)}")
            tensorboard.experiment.add_image(
                f"attention/sentence_{number}", figure_rgb(figure), trainer.global_step, dataformats="HWC"
            )

    def _has_matplotlib(self) -> bool:
        try:
            require_matplotlib("AttentionImages")
        except MinibertError as error:
            if not self._said:
                rank_zero_warn(f"{error}; training goes on without attention maps")
            return False
        return True


class EmbeddingScores(L.Callback):
    """Score the word embeddings at every validation, under ``embeddings/`` in the Scalars tab.

    ``embeddings/purity@k`` on the groups, ``embeddings/analogies`` (accuracy on the covered
    questions), ``embeddings/analogy_coverage`` and ``embeddings/analogies/SECTION`` per
    section: the figures of ``lightning evaluate`` (:mod:`minibert.explore.evaluation`). The files are
    read once, at setup, before the first step: a missing or malformed one stops the run
    with one line. (Raised while the config is instantiated, the error would come wrapped
    in a page of LightningCLI's messages about callback types.)

    Args:
        groups: word groups, lines ``name<TAB>word word ...``.
        analogies: questions in word2vec's format.
        k: neighbours per word for purity@k.
        source: ``input`` word embeddings or the ``output`` head's rows.
    """

    def __init__(
        self,
        groups: str | None = None,
        analogies: str | None = None,
        k: int = 5,
        source: Literal["input", "output"] = "input",
    ) -> None:
        if groups is None and analogies is None:
            raise ValueError("EmbeddingScores needs groups, analogies, or both")
        self.groups_file, self.analogies_file, self.k, self.source = groups, analogies, k, source
        self.groups: dict[str, str] | None = None
        self.sections: list[AnalogySection] | None = None
        self._said_unscored: set[str] = set()  # each file that scores nothing is reported once

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.groups_file and self.groups is None:
            self.groups = group_of(read_groups(self.groups_file))
        if self.analogies_file and self.sections is None:
            self.sections = read_analogies(self.analogies_file)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.vocab is None:
            return
        for name, value in self.scores(pl_module).items():
            if not math.isnan(value):  # no group word, or no covered question: nothing to draw
                # Every rank computes the same value from the same weights; sync_dist says so.
                pl_module.log(name, value, sync_dist=True)
            elif name in (f"embeddings/purity@{self.k}", "embeddings/analogies"):
                self._say_unscored(name, len(pl_module.vocab))

    def _say_unscored(self, name: str, vocab_size: int) -> None:
        """Once: why a curve the config asked for stays empty (a NaN is no point to draw)."""
        if name in self._said_unscored:
            return
        self._said_unscored.add(name)
        file = self.groups_file if "purity" in name else self.analogies_file
        what = "word" if "purity" in name else "question (all four words)"
        rank_zero_warn(
            f"EmbeddingScores: no {what} of {file} is in the vocabulary ({vocab_size:,} words, lower-case), "
            f"so {name} stays empty; check the file's words"
        )

    def scores(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The figures to log, by TensorBoard tag."""
        vocab = pl_module.vocab
        matrix = embedding_matrix(pl_module.encoder, self.source).detach().cpu()  # (V, D)
        scores = {}
        if self.groups is not None:
            scores[f"embeddings/purity@{self.k}"] = purity_at_k(
                matrix, vocab.itos, self.groups, self.k, vocab.num_specials
            )[0]
        if self.sections is not None:
            *sections, total = analogy_scores(matrix, vocab.itos, self.sections, vocab.num_specials)
            scores["embeddings/analogies"] = total.accuracy
            scores["embeddings/analogy_coverage"] = total.coverage
            scores.update({f"embeddings/analogies/{s.name}": s.accuracy for s in sections})
        return scores


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoard logger, if it has one: the images and the projector need it."""
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def log_dir(trainer: L.Trainer, tensorboard: TensorBoardLogger | None) -> Path:
    """Where the projector folders go: the TensorBoard run, else the first logger's folder, else the default root.

    ``trainer.log_dir`` is not used: it broadcasts across processes, and only rank 0 exports.
    """
    logger = tensorboard or trainer.logger
    folder = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(folder or trainer.default_root_dir)
