"""Built-in datasets: metadata tables, loaders, and their registration.

Importing this package registers the built-in names (:data:`BUILTIN_DATASET_NAMES`) under the
root ``$DETECTRON2_DATASETS`` (default ``./datasets``); file lists are read lazily.
"""
from .builtin import BUILTIN_DATASET_NAMES, register_all
from .builtin_meta import get_builtin_metadata
from .cityscapes import (
    load_cityscapes_instances,
    load_cityscapes_panoptic,
    load_cityscapes_semantic,
)
from .coco import load_coco_json, register_coco_instances
from .coco_panoptic import load_coco_panoptic_json, register_coco_panoptic
from .custom import (
    DATASET_TYPES,
    register_coco_panoptic_separated,
    register_dataset,
    register_sem_seg,
)
from .sem_seg import load_sem_seg

__all__ = [
    "BUILTIN_DATASET_NAMES",
    "register_all",
    "get_builtin_metadata",
    "load_coco_json",
    "load_coco_panoptic_json",
    "load_sem_seg",
    "load_cityscapes_semantic",
    "load_cityscapes_instances",
    "load_cityscapes_panoptic",
    "register_coco_instances",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "register_sem_seg",
    "register_dataset",
    "DATASET_TYPES",
]

register_all()
