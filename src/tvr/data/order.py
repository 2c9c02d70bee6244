"""The training data order and every sample's randomness, as functions of (seed, epoch, index).

An exactly resumable run cannot depend on state that lives in DataLoader workers (their RNG streams
restart when a resumed run spawns new workers) or on how many batches the workers prefetched. So:

* :class:`TrainOrderSampler` shuffles with a generator seeded by ``seed + epoch`` (as PyTorch's
  ``DistributedSampler``, which it extends, so Lightning leaves it in place under DDP), yields
  ``(index, epoch)`` keys, and can start an epoch part-way (:meth:`TrainOrderSampler.resume_at`);
* :func:`item_randomness` seeds Python's, NumPy's and torch's global RNGs for one sample from
  ``(seed, epoch, index)``, so frame sampling, caption choice and augmentation draw the same values in
  any worker, on any rank, after any restart; torch's and Python's streams are restored afterwards.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


@contextlib.contextmanager
def item_randomness(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Global RNGs seeded for one sample. Torch's and Python's are restored on exit: with
    ``num_workers=0`` the main process's torch stream drives dropout, which must not depend on how many
    samples were loaded. NumPy's global stream is seeded and left so: only augmentation (timm's
    RandAugment) draws from it, always inside this block, and saving and restoring it cost 70 us a
    sample, more than reading the sample's frames from the frame cache."""
    item_seed = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(item_seed)
        np.random.seed(item_seed)
        torch.default_generator.manual_seed(item_seed)  # CPU only: fork_rng(devices=[]) restores no CUDA state
        try:
            yield
        finally:
            random.setstate(python_state)


class TrainOrderSampler(DistributedSampler):
    """This rank's share of a seeded per-epoch permutation, as ``(index, epoch)`` keys."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        # drop_last: every rank gets the same number of whole batches without repeating samples
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self._skip = 0  # samples of the current epoch already trained on before a restart

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Continue epoch ``epoch`` after the first ``samples_done`` samples of this rank's share."""
        self.epoch, self._skip = epoch, samples_done

    def set_epoch(self, epoch: int) -> None:
        # Lightning calls this at every epoch start, also right after a mid-epoch restore: keep the skip then
        if epoch != self.epoch:
            self._skip = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self._skip :]
        self._skip = 0
        return iter([(index, self.epoch) for index in indices])
