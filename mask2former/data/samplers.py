"""Deterministic, resumable samplers for iteration-based distributed training and inference."""
import itertools
import math
from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import Sampler

from ..utils import comm


class GroupedInfiniteBatchSampler(Sampler):
    """Infinite stream of per-rank batches, grouped by aspect ratio, resumable at any iteration.

    Each rank shuffles the whole dataset with ``seed + epoch`` (a fresh permutation per epoch), takes
    every ``world_size``-th index starting at its rank, and groups them into batches of images that
    are all landscape (w >= h) or all portrait, as Detectron2's aspect-ratio grouping does. Batches
    depend only on (seed, rank, world size, dataset), so skipping ``start_iter`` batches reproduces
    an uninterrupted run without loading any image.

    Yields lists of ``(dataset_index, sample_key)``; ``sample_key`` is unique per drawn sample and is
    used to seed its augmentation (see :class:`SeededMapDataset`).
    """

    def __init__(self, aspect_groups: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, start_iter: int = 0, group_by_aspect: bool = True):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(aspect_groups) == 0:
            raise ValueError("Cannot sample from an empty dataset")
        self.aspect_groups = list(aspect_groups) if group_by_aspect else [0] * len(aspect_groups)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.start_iter = start_iter
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()

    def _indices(self) -> Iterator[int]:
        n = len(self.aspect_groups)
        for epoch in itertools.count():
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                yield from torch.randperm(n, generator=generator).tolist()
            else:
                yield from range(n)

    def _batches(self) -> Iterator[List[int]]:
        buckets = {0: [], 1: []}
        for index in itertools.islice(self._indices(), self.rank, None, self.world_size):
            bucket = buckets[self.aspect_groups[index]]
            bucket.append(index)
            if len(bucket) < self.batch_size:
                continue
            yield bucket[:]
            bucket.clear()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batches = itertools.islice(self._batches(), self.start_iter, None)
        for iteration, batch in enumerate(batches, start=self.start_iter):
            yield [(index, (iteration * self.batch_size + i) * self.world_size + self.rank)
                   for i, index in enumerate(batch)]


class InferenceSampler(Sampler):
    """Each rank gets a contiguous, near-equal shard of ``range(size)``, in order."""

    def __init__(self, size: int):
        rank, world_size = comm.get_rank(), comm.get_world_size()
        shard = math.ceil(size / world_size)
        self.indices = range(rank * shard, min((rank + 1) * shard, size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
