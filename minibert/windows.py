"""Samples of ``seq_len`` tokens cut from a split's token stream: step 6 of the data path (:mod:`minibert.data`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from minibert.tokenizer import PAD_ID

WINDOWS = ("tile", "sentence")


class TokenWindows(Dataset):
    """Samples of ``seq_len`` tokens cut from the token stream of one split.

    ``windows="tile"`` lays windows end to end over the stream, so every token is inside
    one. ``windows="sentence"`` (the reference) starts one window at each sentence: the
    tail of a sentence longer than ``seq_len`` is then never inside any sample.

    A training epoch moves every tile right by the same number of tokens (chosen by
    :class:`minibert.machinery.sampler.ResumableSampler`), so a word meets new neighbours and new
    positions from one epoch to the next. Sample ``i`` is tile ``i % num_windows`` moved by
    ``i // num_windows`` tokens; the last tile then runs on from the end of the stream
    to its start (``wrap``). Evaluation uses no shift and pads the last tile instead, so
    every held-out token is scored exactly once.

    Args:
        tokens: flat token ids of the split, (N,).
        offsets: start of every sentence in ``tokens``, plus the end, (S + 1,).
        seq_len: tokens per sample.
        packing: a window runs on across sentence ends (true), or stops at the end of its
            sentence and is padded (false: tiles then cut each sentence on its own).
        windows: ``tile`` or ``sentence``, as above.
        shifts: how many shifts the sampler may choose from: ``seq_len`` for training
            with packed tiles, 1 (no shift) otherwise.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        seq_len: int,
        packing: bool,
        windows: str = "tile",
        shifts: int = 1,
    ) -> None:
        self.tokens, self.offsets, self.seq_len, self.packing = tokens, offsets, seq_len, packing
        self.starts = window_starts(offsets, seq_len, packing, windows)  # (num_windows,)
        self.shifts = shifts if windows == "tile" and packing else 1
        self.wrap = self.shifts > 1

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def __len__(self) -> int:
        return self.num_windows * self.shifts

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        shift, window = divmod(index, self.num_windows)
        start = (int(self.starts[window]) + shift) % len(self.tokens)
        end = (
            len(self.tokens)
            if self.packing
            else int(self.offsets[np.searchsorted(self.offsets, start, side="right")])
        )
        piece = self.tokens[start : min(end, start + self.seq_len)]
        if self.wrap and len(piece) < self.seq_len:  # run on from the start of the stream
            piece = np.concatenate([piece, self.tokens[: self.seq_len - len(piece)]])
        sample = np.full(self.seq_len, PAD_ID, dtype=np.int64)
        sample[: len(piece)] = piece
        return {"input_ids": torch.from_numpy(sample), "sample_ids": torch.tensor(index)}


def window_starts(offsets: np.ndarray, seq_len: int, packing: bool, windows: str) -> np.ndarray:
    """Where each window starts in the token stream, (num_windows,)."""
    sentence_starts, lengths = offsets[:-1], np.diff(offsets)
    if windows == "sentence":
        return sentence_starts
    if packing:  # tiles over the whole stream
        return np.arange(0, offsets[-1], seq_len)
    # Tiles over each sentence on its own: a sentence of n tokens gives ceil(n / seq_len) windows.
    per_sentence = -(-lengths // seq_len)
    first = np.repeat(np.cumsum(per_sentence) - per_sentence, per_sentence)  # each one's first window
    return np.repeat(sentence_starts, per_sentence) + seq_len * (np.arange(per_sentence.sum()) - first)
