"""``mask_former_semantic``: semantic-segmentation training (e.g. ADE20K, Cityscapes)."""
import copy
import logging
from typing import List

import torch

from ...config import configurable
from ..catalog import MetadataCatalog
from .augmentations import (
    Augmentation,
    ColorAugSSD,
    RandomCrop,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)
from .common import (
    image_to_tensor,
    make_instances,
    optional_sem_seg,
    pad_to_divisible,
    read_image_checked,
    semantic_targets,
)
from .registry import register_mapper

__all__ = ["MaskFormerSemanticDatasetMapper", "build_maskformer_augmentations"]


def build_maskformer_augmentations(cfg, category_area_crop: bool) -> List:
    """The MaskFormer training augmentation.

    ResizeShortestEdge(``INPUT.MIN_SIZE_TRAIN``, ``INPUT.MAX_SIZE_TRAIN``,
    ``INPUT.MIN_SIZE_TRAIN_SAMPLING``); then, if ``INPUT.CROP.ENABLED``, a random crop of
    ``INPUT.CROP.TYPE`` / ``SIZE`` (with the single-category area constraint
    ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``, ignoring ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``, if
    ``category_area_crop``); SSD colour augmentation if ``INPUT.COLOR_AUG_SSD``; a horizontal flip.
    """
    inp = cfg.INPUT
    policies: List = [ResizeShortestEdge(inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING)]
    crop = inp.CROP
    if crop.ENABLED and category_area_crop:
        ignored = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        policies.append(
            RandomCropCategoryAreaConstraint(crop.TYPE, crop.SIZE, crop.SINGLE_CATEGORY_MAX_AREA, ignored)
        )
    elif crop.ENABLED:
        policies.append(RandomCrop(crop.TYPE, crop.SIZE))
    if inp.COLOR_AUG_SSD:
        policies.append(ColorAugSSD(img_format=inp.FORMAT))
    return policies + [RandomFlip()]


@register_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper:
    """Dataset dict (with ``sem_seg_file_name``) -> training input (training only).

    Output dict (input keys kept, ``sem_seg_file_name`` removed):
        ``image``: uint8 [3, H, W] in ``image_format``, padded right/bottom with 128 to multiples
        of ``size_divisibility`` (if > 0);
        ``sem_seg``: int64 [H, W], padded with ``ignore_label``;
        ``instances``: one per class present (ascending): ``gt_classes`` int64 [N],
        ``gt_masks`` bool [N, H, W]; N = 0 when every pixel is ``ignore_label``.

    Raises:
        ValueError: ``is_train`` is False (training only); on call: no ``sem_seg_file_name``,
            an ``annotations`` key, or an image-size mismatch.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
    ):
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only.")
        self.is_train, self.augmentations = is_train, augmentations
        self.image_format, self.ignore_label = image_format, ignore_label
        self.size_divisibility = size_divisibility
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            is_train=is_train,
            augmentations=build_maskformer_augmentations(cfg, category_area_crop=True),
            image_format=cfg.INPUT.FORMAT,
            ignore_label=MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).ignore_label,
            size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
        )

    def __call__(self, dataset_dict: dict) -> dict:
        if "annotations" in dataset_dict.keys():
            raise ValueError("A semantic segmentation dataset dict must not have 'annotations'.")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict, self.image_format)
        sem_seg = optional_sem_seg(dataset_dict)
        if sem_seg is None:
            raise ValueError(f"No 'sem_seg_file_name' for '{dataset_dict['file_name']}'.")
        image, sem_seg, _ = apply_augmentations(self.augmentations, image, sem_seg)
        image_t = pad_to_divisible(image_to_tensor(image), self.size_divisibility, 128)
        sem_seg_t = pad_to_divisible(
            torch.as_tensor(sem_seg.astype("int64")), self.size_divisibility, self.ignore_label
        )
        dataset_dict["image"] = image_t
        dataset_dict["sem_seg"] = sem_seg_t
        classes, masks = semantic_targets(sem_seg_t.numpy(), self.ignore_label)
        dataset_dict["instances"] = make_instances(tuple(image_t.shape[-2:]), classes, masks)
        return dataset_dict
