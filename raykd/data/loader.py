"""Batching detection samples: the collate function and a seeded DataLoader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from raykd.errors import UserError

_USER_ERROR_LINE = f"{UserError.__module__}.{UserError.__qualname__}: "


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``, as torchvision detectors take them."""
    return [image for image, _ in batch], [target for _, target in batch]


class DetectionLoader(DataLoader):
    """A DataLoader whose workers' :class:`UserError` s (e.g. a missing image) reach the main
    process as the same one-line :class:`UserError`, not wrapped in the worker's traceback."""

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        try:
            yield from iterator
        except (Exception, KeyboardInterrupt) as err:
            # Stop the workers now: shut down later by garbage collection, each one makes
            # the process wait 5 s before it is killed.
            if hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                self._iterator = None
            lines = [line for line in str(err).splitlines() if line.startswith(_USER_ERROR_LINE)]
            if isinstance(err, UserError) and lines:
                raise UserError(lines[-1][len(_USER_ERROR_LINE) :]) from None
            raise


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool = False,
    distributed: bool = False,
    rank: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A detection DataLoader whose order and random flips are fixed by ``seed``.

    The order of each epoch depends on ``seed`` and the epoch only (not on ``num_workers``);
    the flips depend on ``seed`` and ``num_workers`` (each worker has its own seeded stream;
    with ``num_workers=0`` they come from the global torch RNG).
    ``persistent_workers`` when ``num_workers > 0``. With ``distributed=True`` a
    ``DistributedSampler`` (rank and world size from the initialised ``torch.distributed``
    process group, shuffled by ``seed``) splits the data: call ``loader.sampler.set_epoch(e)``
    at each epoch. ``rank``: the loader workers' seeds (their flips) differ per rank, the
    order does not. ``pin_memory``: page-locked batches for asynchronous copies to a GPU (set
    it when the training device is one).
    """
    # Two independent streams from one seed: the shuffled order (the same whatever num_workers)
    # and the workers' seeds (their random flips).
    order_seed, worker_seed = (int(v) for v in np.random.SeedSequence(seed).generate_state(2))
    if rank:
        worker_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(worker_seed)
    sampler: Sampler | None = None
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("build_loader(distributed=True) needs an initialised torch.distributed process group")
        sampler = DistributedSampler(
            dataset,
            num_replicas=dist.get_world_size(),
            rank=dist.get_rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(order_seed))
    return DetectionLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_detection,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
