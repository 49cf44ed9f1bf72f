"""The order of the training samples, and a training loader that a resumed run picks up in the middle of an epoch.

:class:`ResumableSampler` is the order: a fresh shuffle every epoch, drawn from ``(seed, epoch)``
only. :class:`ResumableLoader` is the training DataLoader: it counts the epoch's batches it has
handed out and offers that count to Lightning (``state_dict`` / ``load_state_dict``), which saves
it in every checkpoint and gives it back on resume; the sampler then starts the epoch after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Every epoch a shuffle drawn from ``(seed, epoch)`` only, cut into one shard per process.

    It is PyTorch's ``DistributedSampler`` (the permutation, the padding to equal shards and
    the ``rank::num_replicas`` shard are its own), plus one thing: it can start an epoch
    after the samples that a checkpoint's run had already trained on. Because the order is a
    function of ``(seed, epoch)``, a resumed run sees exactly the batches that the run which
    never stopped would have seen.

    Lightning calls ``set_epoch`` at the start of every epoch, and leaves a sampler that is
    already a ``DistributedSampler`` in place under DDP instead of wrapping it in its own.

    Args:
        num_windows: how many windows an epoch trains on (the dataset's tiles).
        seed: seeds every epoch's shuffle and shift.
        num_replicas, rank: how many processes train together and which one this is.
        shifts: every epoch also draws a shift in ``[0, shifts)`` from ``(seed, epoch)`` and
            yields ``shift * num_windows + window``: the dataset's index of that window moved
            by ``shift`` tokens (see :class:`minibert.windows.TokenWindows`).
    """

    def __init__(
        self, num_windows: int, seed: int, num_replicas: int = 1, rank: int = 0, shifts: int = 1
    ) -> None:
        # DistributedSampler only needs the dataset's length.
        super().__init__(range(num_windows), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.num_windows, self.shifts = num_windows, shifts
        self.resume_epoch, self.resume_skip = -1, 0

    def resume(self, epoch: int, samples_seen: int) -> None:
        """Skip the first ``samples_seen`` samples of this process's shard in epoch ``epoch``."""
        self.resume_epoch, self.resume_skip = epoch, samples_seen

    def skipped(self) -> int:
        """How many samples of this epoch's shard are skipped: a resumed run's, in the epoch it resumes."""
        return self.resume_skip if self.epoch == self.resume_epoch else 0

    def shift(self) -> int:
        """This epoch's shift, the same in every process."""
        return int(np.random.default_rng([self.seed, self.epoch]).integers(self.shifts))

    def __iter__(self) -> Iterator[int]:
        windows = list(super().__iter__())  # this process's shard of the epoch, (num_samples,)
        offset = self.shift() * self.num_windows
        return iter([offset + window for window in windows[self.skipped() :]])

    # __len__ stays the whole shard: Lightning counts the epoch's batches from it and, on
    # resume, starts its batch counter at the batches already done.


class ResumableLoader(DataLoader):
    """The training DataLoader, over a :class:`ResumableSampler`, with a state that Lightning saves and restores.

    Its state is where training had got to: the epoch, and how many of its batches the loader
    had handed out. Lightning saves the state of a training loader that has ``state_dict`` and
    ``load_state_dict`` in every checkpoint, and on resume hands it back before the first batch;
    the sampler then skips the batches already trained.

    The count is of batches handed out, and each of them was trained before any checkpoint
    that holds it: Lightning's training loop takes a batch only to train on it at once (it
    fetches ahead only from a loader that has no length), and DataLoader workers read ahead
    below this iterator, which hands out one batch a request. Under DDP every process trains
    the same number of batches, so the count that the first process saves holds for all.

    It takes the arguments of a ``DataLoader``, a :class:`ResumableSampler` as ``sampler``.
    """

    sampler: ResumableSampler
    _position = (0, 0)  # (epoch, batches of it handed out): a fresh loader's, until it hands out one

    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs when the training loop asks for the first batch, after
        # Lightning has called set_epoch and load_state_dict (it makes the iterator before both).
        epoch = self.sampler.epoch
        done = self.sampler.skipped() // self.batch_size
        self._position = (epoch, done)
        for batch in super().__iter__():
            done += 1  # counted before it is handed out: a checkpoint comes only after its step
            self._position = (epoch, done)
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were trained, for Lightning to save in a checkpoint."""
        epoch, batches_done = self._position
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Start epoch ``state_dict["epoch"]`` after its first ``state_dict["batches_done"]`` batches."""
        epoch, batches_done = state_dict["epoch"], state_dict["batches_done"]
        self.sampler.resume(epoch, batches_done * self.batch_size)
        self._position = (epoch, batches_done)
