"""Test-time augmentation for semantic segmentation: average the ``sem_seg`` scores of a model over
several input scales and (optionally) horizontal flips, as in Mask2Former's multi-scale evaluation."""
import copy
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import configurable
from ..data.transforms import ResizeShortestEdge

__all__ = ["SemanticSegmentorWithTTA"]


def _resize_uint8(image: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """The test resize (short side ``min_size``, long side <= ``max_size``; PIL bilinear, as
    Detectron2 resizes uint8 images) of a uint8 [C, H, W] image."""
    array = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    resized = ResizeShortestEdge(min_size, max_size).get_transform(array).apply_image(array)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a model whose outputs have ``sem_seg`` [K, height, width]; calling it returns, per
    input, ``{"sem_seg": mean of the scores over all augmented copies}`` at the original
    (``height``, ``width``) resolution."""

    @configurable
    def __init__(self, model: nn.Module, *, min_sizes: Sequence[int], max_size: int, flip: bool):
        """
        Args:
            model: the segmentation model (inference mode is used).
            min_sizes: shorter-side lengths of the resized copies, in pixels.
            max_size: longest side allowed after resizing.
            flip: also run every scale horizontally flipped (and flip the scores back).

        Raises:
            ValueError: ``min_sizes`` is empty.
        """
        super().__init__()
        if len(min_sizes) == 0:
            raise ValueError("SemanticSegmentorWithTTA needs at least one size in min_sizes")
        self.model = model.module if isinstance(model, DistributedDataParallel) else model
        self.min_sizes, self.max_size, self.flip = list(min_sizes), max_size, flip

    @classmethod
    def from_config(cls, cfg, model: nn.Module):
        aug = cfg.TEST.AUG
        return dict(model=model, min_sizes=aug.MIN_SIZES, max_size=aug.MAX_SIZE, flip=aug.FLIP)

    def augment(self, dataset_dict: Dict) -> List[Tuple[Dict, bool]]:
        """The augmented copies of one input as ``(dict, flipped)`` pairs: for each min size the
        resized image, then (with ``flip``) its mirror image. ``height``/``width`` are kept (they
        default to the input image size)."""
        image = dataset_dict["image"]
        out = []
        for short_side in self.min_sizes:
            resized = _resize_uint8(image, short_side, self.max_size)
            for flipped in ([False, True] if self.flip else [False]):
                d = copy.copy(dataset_dict)
                d.setdefault("height", image.shape[-2])
                d.setdefault("width", image.shape[-1])
                d["image"] = resized.flip(dims=[2]) if flipped else resized
                out.append((d, flipped))
        return out

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            batched_inputs: dicts with ``image`` uint8 [3, H, W] and optional ``height``/``width``.

        Returns:
            one ``{"sem_seg": float [K, height, width]}`` per input.
        """
        results = []
        for dataset_dict in batched_inputs:
            total = None
            augmented = self.augment(dataset_dict)
            for d, flipped in augmented:
                with torch.no_grad():
                    sem_seg = self.model([d])[0]["sem_seg"]
                if sem_seg.dim() != 3:
                    raise ValueError(
                        "Test-time augmentation averages [K, H, W] sem_seg scores; turn "
                        "MODEL.MASK_FORMER.TEST.COMPACT_OUTPUTS off"
                    )
                if flipped:
                    sem_seg = sem_seg.flip(dims=[2])
                total = sem_seg if total is None else total + sem_seg
            results.append({"sem_seg": total / len(augmented)})
        return results
