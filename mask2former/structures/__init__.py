"""Data structures passed between model stages: ``Instances``, ``Boxes``, ``ImageList``.

When Detectron2 is importable these *are* Detectron2's classes, so model outputs on the plugin
path are Detectron2 types; otherwise minimal equivalents with the same API are used.
"""
from .boxes import Boxes
from .image_list import ImageList
from .instances import Instances
from .masks import masks_to_boxes
from .output_formats import instance_masks, instance_rles, semantic_labels

__all__ = [
    "Boxes",
    "ImageList",
    "Instances",
    "instance_masks",
    "instance_rles",
    "masks_to_boxes",
    "semantic_labels",
]
