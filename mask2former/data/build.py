"""Training and test data loaders (Detectron2's batched-input convention: lists of dicts)."""
import logging
import random
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .catalog import DatasetCatalog
from .samplers import GroupedInfiniteBatchSampler, InferenceSampler

logger = logging.getLogger(__name__)


def get_dataset_dicts(names: Sequence[str], filter_empty: bool = True) -> List[Dict]:
    """Concatenate the records of the named datasets from :class:`DatasetCatalog`.

    Args:
        names: registered dataset names (e.g. ``cfg.DATASETS.TRAIN``).
        filter_empty: drop images without any annotation (instance/panoptic training), as
            ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` asks.

    Raises:
        ValueError: if the datasets are empty (after filtering).
    """
    if isinstance(names, str):
        names = [names]
    dicts = [d for name in names for d in DatasetCatalog.get(name)]
    if filter_empty:
        kept = [d for d in dicts if not _is_empty(d)]
        logger.info("Removed %d images without annotations, %d left", len(dicts) - len(kept), len(kept))
        dicts = kept
    if not dicts:
        raise ValueError(f"No images to use in datasets {list(names)}")
    return dicts


def _is_empty(record: Dict) -> bool:
    if "annotations" in record:
        annotations = record["annotations"]
        if annotations and isinstance(annotations[0], list):  # a video: one list per frame
            annotations = [ann for frame in annotations for ann in frame]
        return not any(ann.get("iscrowd", 0) == 0 for ann in annotations)
    if "segments_info" in record:
        return len(record["segments_info"]) == 0
    return False


SKIPPED_KEY = "_num_skipped_samples"
_MAX_ATTEMPTS = 100


class CorruptSampleError(RuntimeError):
    """A training sample whose image or annotation could not be read or mapped; the message names
    the image file (and the annotation file, when the record has one)."""


def _describe(record: Dict) -> str:
    files = [record.get(k) for k in ("file_name", "pan_seg_file_name", "sem_seg_file_name")]
    return " / ".join(str(f) for f in files if f) or f"image_id {record.get('image_id')}"


class SeededMapDataset(Dataset):
    """Applies ``mapper`` to dataset records with per-sample seeded randomness.

    Items are ``(index, sample_key)``; the Python, NumPy and torch RNGs are seeded from
    ``(seed, sample_key)`` before mapping, so augmentations do not depend on worker count or on
    where training was resumed. A mapper returning None (e.g. a crop with no object left) is retried
    on other records drawn from the same seeded stream.

    A record whose mapping fails (an image that cannot be decoded, an annotation that cannot be
    parsed) raises :class:`CorruptSampleError` naming its files. With ``skip_corrupt`` it is
    skipped with a warning instead, like a None, and the returned sample carries the number of
    records skipped to produce it under :data:`SKIPPED_KEY`.
    """

    def __init__(self, records: List[Dict], mapper: Callable[[Dict], Optional[Dict]], seed: int,
                 skip_corrupt: bool = False):
        self.records = records
        self.mapper = mapper
        self.seed = seed
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item):
        index, sample_key = item
        rng = np.random.default_rng([self.seed, sample_key])
        skipped = 0
        for _ in range(_MAX_ATTEMPTS):
            sample_seed = int(rng.integers(2**31))
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            torch.manual_seed(sample_seed)
            record = self.records[index]
            try:
                mapped = self.mapper(dict(record))
            except Exception as e:
                message = f"Cannot load training sample {_describe(record)}: {type(e).__name__}: {e}"
                if not self.skip_corrupt:
                    raise CorruptSampleError(message) from e
                logger.warning("%s; skipped (DATALOADER.SKIP_CORRUPT_SAMPLES is set)", message)
                skipped += 1
                mapped = None
            if mapped is not None:
                if skipped:
                    mapped[SKIPPED_KEY] = skipped
                return mapped
            index = int(rng.integers(len(self.records)))
        raise RuntimeError(
            f"No usable training sample in {_MAX_ATTEMPTS} records in a row ({skipped} could not be "
            "read, the others were rejected by the dataset mapper)"
        )


class _MappedList(Dataset):
    def __init__(self, records: List[Dict], mapper: Callable[[Dict], Dict]):
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict:
        return self.mapper(dict(self.records[index]))


def _as_list(batch):
    return batch


def build_train_loader(records: List[Dict], mapper: Callable, *, total_batch_size: int,
                       num_workers: int = 0, seed: int = 0, start_iter: int = 0,
                       aspect_ratio_grouping: bool = True, skip_corrupt: bool = False) -> DataLoader:
    """Infinite training loader yielding lists of ``total_batch_size / world_size`` mapped dicts.

    ``skip_corrupt``: skip samples that cannot be read instead of raising
    :class:`CorruptSampleError` (see :class:`SeededMapDataset`).

    Raises:
        ValueError: if the total batch size is not divisible by the number of workers.
    """
    from ..utils import comm

    world_size = comm.get_world_size()
    if total_batch_size % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total_batch_size} must be divisible by the number of processes ({world_size})"
        )
    groups = [int(r.get("width", 1) < r.get("height", 0)) for r in records]
    batch_sampler = GroupedInfiniteBatchSampler(
        groups, total_batch_size // world_size, seed=seed, start_iter=start_iter,
        group_by_aspect=aspect_ratio_grouping,
    )
    return DataLoader(
        SeededMapDataset(records, mapper, seed, skip_corrupt=skip_corrupt),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=_as_list,
        persistent_workers=num_workers > 0,
    )


def build_test_loader(records: List[Dict], mapper: Callable, num_workers: int = 0) -> DataLoader:
    """Loader over this rank's shard of ``records``, one image per batch, in order."""
    return DataLoader(
        _MappedList(records, mapper),
        sampler=InferenceSampler(len(records)),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
