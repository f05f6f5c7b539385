"""Dataset mappers: Detectron2 dataset dicts -> model inputs (``image`` uint8 [3, H, W],
``instances`` with ``gt_classes`` / ``gt_masks``, ``sem_seg``), selected by
``INPUT.DATASET_MAPPER_NAME`` through :func:`build_dataset_mapper`."""
from .augmentations import (
    Augmentation,
    ColorAugSSD,
    FixedSizeCrop,
    RandomCrop,
    RandomCropCategoryAreaConstraint,
    RandomFlip,
    ResizeScale,
    ResizeShortestEdge,
    apply_augmentations,
)
from .coco_instance_lsj import COCOInstanceNewBaselineDatasetMapper
from .coco_panoptic_lsj import COCOPanopticNewBaselineDatasetMapper
from .mask_former_instance import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic import MaskFormerPanopticDatasetMapper
from .mask_former_semantic import MaskFormerSemanticDatasetMapper
from .registry import build_dataset_mapper, get_mapper_class, mapper_names, register_mapper
from .color_transform import SSDColorTransform

__all__ = [
    "Augmentation",
    "ColorAugSSD",
    "FixedSizeCrop",
    "RandomCrop",
    "RandomCropCategoryAreaConstraint",
    "RandomFlip",
    "ResizeScale",
    "ResizeShortestEdge",
    "SSDColorTransform",
    "apply_augmentations",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "build_dataset_mapper",
    "get_mapper_class",
    "mapper_names",
    "register_mapper",
]
