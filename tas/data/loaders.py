"""Loaders over a dataset's splits, and the class-balanced halving of the training set for the search."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, Subset

from .. import distributed as dist
from ..errors import DataError
from .registry import create_dataset

__all__ = ["create_loaders", "split_train_val"]


def split_train_val(targets: Sequence[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """Halve a training set per class, for the bi-level search.

    Each class's indices are shuffled by a generator seeded with ``(seed, class)`` and split in
    two; an odd leftover goes to the first half. The halves are disjoint, cover every index,
    are class-balanced (per-class counts differ by at most one) and depend only on ``targets``
    and ``seed``.

    Args:
        targets: one integer label per training item.
        seed: selects the split.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    targets = np.asarray(targets)
    train, val = [], []
    for c in np.unique(targets):
        index = np.flatnonzero(targets == c)
        # Seeded per class so a class's split does not depend on which other classes exist.
        np.random.default_rng([seed, int(c)]).shuffle(index)
        half = (len(index) + 1) // 2
        train += index[:half].tolist()
        val += index[half:].tolist()
    return sorted(train), sorted(val)


def _balanced_head(indices: Sequence[int], targets: Sequence[int], limit: int | None) -> list[int]:
    """The first ``limit`` of ``indices`` taken round-robin over classes (all if no limit)."""
    indices = list(indices)
    if limit is None or limit >= len(indices):
        return indices
    by_class: dict[int, list[int]] = {}
    for i in indices:
        by_class.setdefault(int(targets[i]), []).append(i)
    order = sorted(by_class.values(), key=lambda ix: ix[0])
    picked = [ix[k] for k in range(max(map(len, order))) for ix in order if k < len(ix)]
    return sorted(picked[:limit])


class _Subset(Subset):
    """A :class:`~torch.utils.data.Subset` that keeps ``.targets`` (for splits and samplers)."""

    @property
    def targets(self) -> list[int]:
        return [int(self.dataset.targets[i]) for i in self.indices]


def create_loaders(
        name: str,
        data_dir: str | None = None,
        batch_size: int = 64,
        workers: int = 0,
        seed: int = 0,
        download: bool = False,
        img_size: int | None = None,
        search_split: bool = False,
        limit: int | None = None,
        distributed: bool = False,
        augment: bool = True,
        pin_memory: bool = False,
) -> dict[str, DataLoader]:
    """Training and test loaders for dataset ``name``.

    Args:
        name, data_dir, download, img_size: as in :func:`create_dataset`.
        batch_size: samples per batch (the last batch may be smaller).
        workers: loader worker processes (0: load in the main process).
        seed: seeds the train/val split and the shuffling order, so a resumed run replays the
            same order.
        search_split: also halve the training set (:func:`split_train_val`) into ``"train"``
            (for the weights) and ``"val"`` (for the architecture). Both halves are training
            data and so both are augmented.
        limit: at most this many samples per split, chosen class-balanced and deterministically
            (for smoke tests).
        distributed: in a distributed run (:mod:`tas.distributed`), give this rank its share of
            every batch: ``batch_size`` stays the global batch, all ranks walk the same seeded
            order and each takes the samples ``rank::world_size`` of each batch (the test loader
            too; :func:`tas.train.engine.evaluate` totals over ranks). Ignored in a single process.
            Augmentation draws from each process's own RNG, so only without it does a
            distributed run see exactly the images a single process would.
        augment: random training augmentation (the dataset's default crop/flip); ``False`` for none.
        pin_memory: batches in page-locked memory, so that copies to a CUDA device can overlap the
            step (pass ``device.type == "cuda"``; on a CPU run it would only cost memory).

    Returns:
        ``{"train", "test"}`` loaders, plus ``"val"`` with ``search_split``. Each loader's
        ``.dataset`` is a ``Subset`` whose ``.indices`` index the full split.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive integer, got {limit}")

    if download and distributed and dist.rank() != 0:
        dist.barrier()  # rank 0 downloads first; the others then find the files
    train_set = create_dataset(name, "train", data_dir, download, img_size, augment=augment)
    test_set = create_dataset(name, "test", data_dir, download, img_size)
    if download and distributed and dist.rank() == 0:
        dist.barrier()
    halves = (dict(zip(("train", "val"), split_train_val(train_set.targets, seed)))
              if search_split else {"train": range(len(train_set))})
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory)

    def batches(sampler: Any, drop_small: bool) -> Any:
        per_batch = BatchSampler(sampler, batch_size, drop_last=False)
        return per_batch if world == 1 else dist.ShardedBatchSampler(per_batch, rank, world, drop_small)

    loaders = {}
    for offset, (key, index) in enumerate(halves.items()):
        subset = _Subset(train_set, _balanced_head(index, train_set.targets, limit))
        # Its own generator makes the order (and the worker seeds) a function of `seed` alone,
        # the same on every rank; the val half gets a different stream than the train half.
        gen = torch.Generator().manual_seed(seed + offset)
        loaders[key] = DataLoader(subset, batch_sampler=batches(RandomSampler(subset, generator=gen), True),
                                  generator=gen, **common)
    test = _Subset(test_set, _balanced_head(range(len(test_set)), test_set.targets, limit))
    loaders["test"] = DataLoader(test, batch_sampler=batches(SequentialSampler(test), False), **common)
    return loaders
