"""Callbacks that show inside the model at each validation, in TensorBoard.

- :class:`AttentionImages`: the attention maps of a few fixed sentences (Images tab);
- :class:`EmbeddingScores`: purity@k and analogy accuracy of the word embeddings (Scalars tab).

Both are listed at the end of ``trainer.callbacks`` in ``configs/quick.yaml`` and
``configs/base.yaml``; the sanity check before training is skipped (its weights are the
initial ones, and its logs are thrown away).
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from minibert.attention_maps import attention_maps, draw_attention, figure_rgb, require_matplotlib
from minibert.errors import MinibertError
from minibert.evaluation import (
    AnalogySection,
    analogy_scores,
    group_of,
    purity_at_k,
    read_analogies,
    read_groups,
)
from minibert.projector import embedding_matrix
from minibert.tokenizer import tokenize

DEFAULT_SENTENCES = (
    "la commission a présenté sa proposition au parlement .",
    "le vote aura lieu demain à midi .",
)


class AttentionImages(L.Callback):
    """Draw the attention maps of each sentence at every validation: ``attention/sentence_N`` in the Images tab.

    The grid is :func:`minibert.attention_maps.draw_attention`'s, one image per sentence and
    validation (the slider above it steps through the training steps). It needs a TensorBoard
    logger and matplotlib; without them it says so once and training goes on.

    Args:
        sentences: the sentences to draw (by default, two about the commission and a vote). One longer than the model's ``seq_len`` is cut to its
            first ``seq_len`` tokens; words outside the vocabulary are marked ``*`` (read as ``<unk>``).
    """

    def __init__(self, sentences: list[str] | None = None) -> None:
        sentences = list(DEFAULT_SENTENCES if sentences is None else sentences)
        if not sentences or not all(tokenize(sentence) for sentence in sentences):
            raise ValueError("AttentionImages needs sentences with at least one word each")
        self.sentences = list(sentences)
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
        seq_len = pl_module.hparams.seq_len
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
    section: the figures of ``lightning evaluate`` (:mod:`minibert.evaluation`). The files are
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
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
