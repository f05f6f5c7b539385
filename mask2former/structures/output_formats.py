"""Readers of the two inference output formats (default and ``MODEL.MASK_FORMER.TEST.COMPACT_OUTPUTS``).

Default: ``sem_seg`` float [K, H, W] class scores; ``instances.pred_masks`` [N, H, W].
Compact: ``sem_seg`` int32 [H, W] class ids (with ``sem_seg_score`` [H, W]);
``instances.pred_masks_rle``: N COCO run-length encodings (pycocotools ``{"size", "counts"}``).
"""
from typing import Any, List

import numpy as np
import pycocotools.mask as mask_util
import torch

__all__ = ["instance_masks", "instance_rles", "semantic_labels"]


def semantic_labels(sem_seg: torch.Tensor) -> torch.Tensor:
    """int64 [H, W] contiguous class ids: the argmax of scores [K, H, W], or the compact label
    map [H, W] itself.

    Raises:
        ValueError: ``sem_seg`` is neither 3-D float scores nor a 2-D integer map.
    """
    if sem_seg.dim() == 3 and sem_seg.is_floating_point():
        return sem_seg.argmax(dim=0)
    if sem_seg.dim() == 2 and not sem_seg.is_floating_point():
        return sem_seg.long()
    raise ValueError(
        f"sem_seg must be float scores [K, H, W] or an integer label map [H, W], got "
        f"{sem_seg.dtype} {tuple(sem_seg.shape)}"
    )


def _rles(instances: Any):
    try:
        return instances.pred_masks_rle
    except AttributeError:
        return None


def instance_masks(instances: Any) -> np.ndarray:
    """bool [N, H, W] instance masks from ``pred_masks`` (bool, or float/uint8 > 0.5) or, for
    compact outputs, decoded from ``pred_masks_rle``."""
    rles = _rles(instances)
    if rles is not None:
        height, width = instances.image_size
        if len(rles) == 0:
            return np.zeros((0, height, width), dtype=bool)
        return mask_util.decode(list(rles)).transpose(2, 0, 1).astype(bool)
    masks = instances.pred_masks
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    return masks if masks.dtype == bool else masks > 0.5


def instance_rles(instances: Any) -> List[dict]:
    """COCO RLE dicts (``counts`` bytes) of the instance masks, in either output format."""
    rles = _rles(instances)
    if rles is not None:
        return list(rles)
    masks = instance_masks(instances)
    if len(masks) == 0:
        return []
    return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
