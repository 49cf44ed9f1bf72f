"""Kept so that configs written before minibert/explore/ still load: see :mod:`minibert.explore.callbacks`."""

from minibert.explore.callbacks import AttentionImages, EmbeddingScores

__all__ = ["AttentionImages", "EmbeddingScores"]
