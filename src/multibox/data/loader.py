"""DataLoader construction with reproducible, worker-independent randomness.

Every sample's augmentation uses its own generator ``np.random.default_rng([seed, epoch, index])`` and the order of
an epoch comes from ``(seed, epoch)`` alone, so a run gives the same batches whatever ``num_workers``,
``persistent_workers`` or the worker scheduling are. The epoch travels with each index (the sampler yields
``(epoch, index)`` keys), so it reaches persistent workers too::

    loader = build_loader(dataset, ssd_train_transform(spec), batch_size=32, seed=0, num_workers=4)
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for batch in loader:   # dict from collate_detection
            ...
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .collate import collate_detection
from .types import DetectionDataset, Target

__all__ = ["AugmentedDataset", "SeededSampler", "build_loader", "set_epoch", "sample_rng"]

# Marks the shuffling generator's seed words so they never equal a sample's ``[seed, epoch, index]``.
_SHUFFLE_TAG = 0x5348_5546


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that augments sample ``index`` in ``epoch``: ``np.random.default_rng([seed, epoch, index])``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class AugmentedDataset(Dataset):
    """``dataset[i] -> transform(image, target, rng)`` with ``rng = sample_rng(seed, epoch, i)``.

    Keys are ``(epoch, index)`` pairs (what :class:`SeededSampler` yields) or plain ``index`` (then
    :attr:`epoch` is used). ``transform`` is an op ``(image, target, rng) -> (image, target)``, e.g.
    :func:`~multibox.data.augment.ssd_train_transform`; ``None`` returns the raw sample.
    """

    def __init__(self, dataset: DetectionDataset, transform: Callable[..., tuple[Any, Target]] | None,
                 seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, Target]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, target = self.dataset[int(index)]
        if self.transform is None:
            return image, target
        return self.transform(image, target, sample_rng(self.seed, epoch, index))


class SeededSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a permutation drawn from ``(seed, epoch)`` (or ``0..n-1`` without
    ``shuffle``), split between ``world_size`` ranks as ``order[rank::world_size]`` after padding the order by
    repetition to a multiple of ``world_size`` (or cutting it, with ``drop_last``). Call :meth:`set_epoch`."""

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use ``epoch`` for the order and the per-sample generators of the next iteration, beginning at position
        ``start`` of this rank's order (to resume in the middle of an epoch)."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = int(epoch)
        self.start = int(start)

    def _order(self) -> np.ndarray:
        n = self.num_samples
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0xFFFF_FFFF, _SHUFFLE_TAG]).permutation(n)
        else:
            order = np.arange(n)
        if self.world_size > 1:
            if self.drop_last:
                order = order[: n - n % self.world_size]
            elif n % self.world_size and n:
                order = np.resize(order, n + self.world_size - n % self.world_size)
            order = order[self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in self._order()[self.start:]])

    def __len__(self) -> int:
        return max(0, self.epoch_length() - self.start)

    def epoch_length(self) -> int:
        """Samples of this rank in a whole epoch (ignoring ``start``)."""
        n = self.num_samples
        if self.world_size == 1:
            return n
        if self.drop_last:
            return n // self.world_size
        return -(-n // self.world_size)


def _seed_worker(worker_id: int) -> None:
    # Global generators, for user code that uses them: derived from the loader's base seed (torch's per-worker
    # seed). The SSD transforms never touch them.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_loader(dataset: DetectionDataset, transform: Callable[..., tuple[Any, Target]] | None, *,
                 batch_size: int, seed: int = 0, shuffle: bool = True, num_workers: int = 0,
                 drop_last: bool = False, pin_memory: bool = False, persistent_workers: bool = False,
                 rank: int = 0, world_size: int = 1,
                 collate_fn: Callable[[list[Any]], Any] = collate_detection,
                 prefetch_factor: int | None = None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` whose samples go through ``transform(image, target, rng)`` with
    ``rng = sample_rng(seed, epoch, index)`` and are batched by ``collate_fn`` (default
    :func:`~multibox.data.collate.collate_detection`: a dict of padded tensors).

    Batches depend only on ``(seed, epoch)`` and the arguments, not on ``num_workers``. ``drop_last`` drops the
    last incomplete batch (and, with ``world_size > 1``, the samples that do not split evenly between ranks).
    Use :func:`set_epoch` before each epoch.
    """
    data = AugmentedDataset(dataset, transform, seed)
    sampler = SeededSampler(len(dataset), seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
                            drop_last=drop_last)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        kwargs["worker_init_fn"] = _seed_worker
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(int(seed)), **kwargs)


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Set the epoch of a loader from :func:`build_loader` (its order and per-sample generators); the next
    iteration skips the epoch's first ``start_batch`` batches without loading them (exact mid-epoch resume)."""
    sampler = loader.sampler
    if not isinstance(sampler, SeededSampler):
        raise TypeError("set_epoch needs a loader built by multibox.data.loader.build_loader")
    sampler.set_epoch(epoch, start=int(start_batch) * int(loader.batch_size or 1))
    if isinstance(loader.dataset, AugmentedDataset):
        loader.dataset.epoch = int(epoch)
