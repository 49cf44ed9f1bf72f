"""The order of the training samples: a fresh shuffle every epoch that a resumed run can pick up mid-epoch.

:class:`ResumableSampler` is the order; :class:`ResumableEpochs`, mixed into the data module,
saves where the epoch had got to in every checkpoint and builds the sampler that starts there.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
from torch.utils.data import DistributedSampler

from minibert.machinery.lightning_internals import batches_trained_in_epoch, ignore_mid_epoch_resume_warning


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
            by ``shift`` tokens (see :class:`minibert.data.TokenWindows`).
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

    def shift(self) -> int:
        """This epoch's shift, the same in every process."""
        return int(np.random.default_rng([self.seed, self.epoch]).integers(self.shifts))

    def __iter__(self) -> Iterator[int]:
        windows = list(super().__iter__())  # this process's shard of the epoch, (num_samples,)
        skip = self.resume_skip if self.epoch == self.resume_epoch else 0
        offset = self.shift() * self.num_windows
        return iter([offset + window for window in windows[skip:]])

    # __len__ stays the whole shard: Lightning counts the epoch's batches from it and, on
    # resume, starts its batch counter at the batches already done.


class ResumableEpochs:
    """Mixed into a LightningDataModule: its checkpoint state is how far training had got in the epoch.

    Lightning saves a data module's :meth:`state_dict` in every checkpoint and, on resume, hands it
    to :meth:`load_state_dict` before the train loader is made; :meth:`training_sampler` then starts
    the epoch after the batches already trained. The data module provides ``trainer``, ``seed``
    and ``batch_size``.
    """

    trainer: L.Trainer | None
    seed: int
    batch_size: int
    _resume_at = (-1, 0)  # (epoch, batches already trained in it), from a checkpoint

    def training_sampler(self, num_windows: int, shifts: int) -> ResumableSampler:
        """This process's sampler of the training windows, after the batches a checkpoint had trained."""
        trainer = self.trainer
        num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(num_windows, self.seed, num_replicas, rank, shifts=shifts)
        epoch, batches_done = self._resume_at
        sampler.resume(epoch, batches_done * self.batch_size)
        return sampler

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: the epoch and how many of its batches were trained."""
        if self.trainer is None:
            return {}
        return {"epoch": self.trainer.current_epoch, "batches_done": batches_trained_in_epoch(self.trainer)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Called on resume before the train loader is made, which then skips the batches done."""
        if state_dict:
            self._resume_at = (state_dict["epoch"], state_dict["batches_done"])
        # Lightning, finding no resumable state on the DataLoader, would warn that this
        # mid-epoch resume is unreliable; it is exact, so that one warning is silenced here.
        ignore_mid_epoch_resume_warning()
