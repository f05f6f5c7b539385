"""``mask_former_instance``: instance training with the MaskFormer augmentation (e.g. ADE20K)."""
import copy
import logging
from typing import List

import torch

from ...config import configurable
from .augmentations import Augmentation, apply_augmentations
from .common import (
    annotation_masks,
    image_to_tensor,
    make_instances,
    pad_to_divisible,
    read_image_checked,
)
from .mask_former_semantic import build_maskformer_augmentations
from .registry import register_mapper

__all__ = ["MaskFormerInstanceDatasetMapper"]


@register_mapper("mask_former_instance")
class MaskFormerInstanceDatasetMapper:
    """Dataset dict (with ``annotations``) -> training input (training only).

    Augmentation: ResizeShortestEdge, RandomCrop (if ``INPUT.CROP.ENABLED``), ColorAugSSD (if
    ``INPUT.COLOR_AUG_SSD``), horizontal flip.

    Output dict (input keys kept, ``annotations`` removed):
        ``image``: uint8 [3, H, W], padded with 128 to multiples of ``size_divisibility``;
        ``instances``: ``gt_classes`` int64 [N], ``gt_masks`` bool [N, H, W] (padding is
        background) of the non-crowd annotations; N may be 0.

    Raises:
        ValueError: ``is_train`` is False; on call: an annotation without ``segmentation`` or
            an image-size mismatch.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Augmentation],
        image_format: str,
        size_divisibility: int,
    ):
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only.")
        self.is_train, self.augmentations = is_train, augmentations
        self.image_format, self.size_divisibility = image_format, size_divisibility
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            is_train=is_train,
            augmentations=build_maskformer_augmentations(cfg, category_area_crop=False),
            image_format=cfg.INPUT.FORMAT,
            size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
        )

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict, self.image_format)
        input_size = image.shape[:2]
        image, _, transforms = apply_augmentations(self.augmentations, image)
        annotations = [
            a for a in dataset_dict.pop("annotations", []) if not a.get("iscrowd", 0)
        ]
        masks = annotation_masks(annotations, transforms, input_size, image.shape[:2])
        image_t = pad_to_divisible(image_to_tensor(image), self.size_divisibility, 128)
        masks_t = torch.as_tensor(masks, dtype=torch.uint8)
        masks_t = pad_to_divisible(masks_t, self.size_divisibility, 0)
        dataset_dict["image"] = image_t
        dataset_dict["instances"] = make_instances(
            tuple(image_t.shape[-2:]),
            [int(a["category_id"]) for a in annotations],
            masks_t.bool().numpy(),
        )
        return dataset_dict
