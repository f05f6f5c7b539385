"""Registration of the built-in datasets and their metadata at standard paths under a root.

Registered names (file lists are read lazily, by ``DatasetCatalog.get``):

- COCO: ``coco_2017_{train,val}`` (instances), ``coco_2017_{train,val}_panoptic``,
  ``coco_2017_{train,val}_panoptic_with_sem_seg``
- ADE20K: ``ade20k_sem_seg_{train,val}``, ``ade20k_panoptic_{train,val}``,
  ``ade20k_instance_{train,val}``
- Cityscapes: ``cityscapes_fine_{sem_seg,instance_seg,panoptic}_{train,val}``

With Detectron2 installed, names it has already registered are kept as they are; only the
changes Mask2Former makes to their metadata are applied (COCO panoptic ``thing_classes`` /
``thing_colors`` restricted to the 80 things; ADE20K semantic ``stuff_colors``).
"""
import os
from typing import Optional

from ..catalog import DatasetCatalog, MetadataCatalog
from ._paths import dataset_root
from .ade20k import (
    ADE20K_INSTANCE_LAYOUT,
    ade20k_split_paths,
    register_ade20k_panoptic,
    register_ade20k_sem_seg,
)
from .builtin_meta import get_builtin_metadata
from .cityscapes import register_cityscapes, register_cityscapes_panoptic
from .coco import register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_annos_sem_seg

__all__ = ["register_all", "BUILTIN_DATASET_NAMES"]

_SPLITS = ("train", "val")

BUILTIN_DATASET_NAMES = tuple(
    name
    for split in _SPLITS
    for name in (
        f"coco_2017_{split}",
        f"coco_2017_{split}_panoptic",
        f"coco_2017_{split}_panoptic_with_sem_seg",
        f"ade20k_sem_seg_{split}",
        f"ade20k_panoptic_{split}",
        f"ade20k_instance_{split}",
        f"cityscapes_fine_sem_seg_{split}",
        f"cityscapes_fine_instance_seg_{split}",
        f"cityscapes_fine_panoptic_{split}",
    )
)


def _registered(name: str) -> bool:
    return name in DatasetCatalog.list()


def _register_coco(root: str) -> None:
    for split in _SPLITS:
        image_root = os.path.join(root, "coco", f"{split}2017")
        instances_json = os.path.join(root, "coco", "annotations", f"instances_{split}2017.json")
        panoptic_root = os.path.join(root, "coco", f"panoptic_{split}2017")
        panoptic_json = os.path.join(root, "coco", "annotations", f"panoptic_{split}2017.json")
        sem_seg_root = os.path.join(root, "coco", f"panoptic_semseg_{split}2017")

        name = f"coco_2017_{split}"
        if not _registered(name):
            register_coco_instances(
                name, get_builtin_metadata("coco"), instances_json, image_root
            )

        name = f"coco_2017_{split}_panoptic"
        standard = get_builtin_metadata("coco_panoptic_standard")
        if _registered(name):
            # Detectron2's metadata lists all 133 classes as things; Mask2Former keeps the 80.
            meta = MetadataCatalog.get(name)
            for key in ("thing_classes", "thing_colors"):
                if meta.get(key) != standard[key]:
                    delattr(meta, key)
                    setattr(meta, key, standard[key])
        else:
            register_coco_panoptic(
                name, standard, image_root, panoptic_root, panoptic_json, instances_json
            )

        name = f"coco_2017_{split}_panoptic_with_sem_seg"
        if not _registered(name):
            register_coco_panoptic_annos_sem_seg(
                name,
                get_builtin_metadata("coco_panoptic"),
                image_root,
                panoptic_root,
                panoptic_json,
                sem_seg_root,
                instances_json,
            )


def _register_ade20k(root: str) -> None:
    for split in _SPLITS:
        paths = ade20k_split_paths(root, split)
        name = f"ade20k_sem_seg_{split}"
        sem_meta = get_builtin_metadata("ade20k_sem_seg")
        if _registered(name):
            MetadataCatalog.get(name).set(stuff_colors=sem_meta["stuff_colors"])
        else:
            register_ade20k_sem_seg(name, sem_meta, paths["image_root"], paths["sem_seg_root"])

        name = f"ade20k_panoptic_{split}"
        if not _registered(name):
            register_ade20k_panoptic(
                name,
                get_builtin_metadata("ade20k_panoptic"),
                paths["image_root"],
                paths["panoptic_root"],
                paths["sem_seg_root"],
                paths["panoptic_json"],
                paths["instances_json"],
            )

        name = f"ade20k_instance_{split}"
        if not _registered(name):
            register_coco_instances(
                name,
                get_builtin_metadata("ade20k_instance"),
                paths["instances_json"],
                paths["image_root"],
                layout=ADE20K_INSTANCE_LAYOUT,
            )


def _register_cityscapes(root: str) -> None:
    for split in _SPLITS:
        image_dir = os.path.join(root, "cityscapes", "leftImg8bit", split)
        gt_dir = os.path.join(root, "cityscapes", "gtFine", split)
        template = "cityscapes_fine_{task}_" + split
        if not _registered(template.format(task="sem_seg")):
            register_cityscapes(template, get_builtin_metadata("cityscapes"), image_dir, gt_dir)

        name = f"cityscapes_fine_panoptic_{split}"
        if not _registered(name):
            register_cityscapes_panoptic(
                name,
                get_builtin_metadata("cityscapes_panoptic"),
                image_dir,
                os.path.join(root, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}"),
                os.path.join(root, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}.json"),
            )


def register_all(root: Optional[str] = None) -> None:
    """Register every name of :data:`BUILTIN_DATASET_NAMES` that is not registered yet.

    Args:
        root: the dataset root; ``None`` reads ``$DETECTRON2_DATASETS`` now (default
            ``./datasets``). Paths in the metadata and loaders are fixed at registration; the
            data itself is only read when ``DatasetCatalog.get(name)`` is called.
    """
    root = dataset_root() if root is None else os.path.expanduser(root)
    _register_coco(root)
    _register_ade20k(root)
    _register_cityscapes(root)
