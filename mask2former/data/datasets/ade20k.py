"""ADE20K SceneParsing (150 classes): semantic, panoptic and instance registrations.

Layout under the dataset root (see ``datasets/README.md``)::

    ADEChallengeData2016/
      images/{training,validation}/*.jpg
      annotations/{training,validation}/*.png            # raw labels, 0 = other, 1..150
      annotations_detectron2/{training,validation}/*.png # prepare_ade20k_sem_seg.py: 0..149, 255
      ade20k_panoptic_{train,val}.json, ade20k_panoptic_{train,val}/*.png  # prepare_ade20k_pan_seg
      ade20k_instance_{train,val}.json                    # prepare_ade20k_ins_seg.py
"""
import os

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco_panoptic import load_coco_panoptic_json
from .sem_seg import load_sem_seg

__all__ = [
    "ADE20K_SEM_SEG_LAYOUT",
    "ADE20K_PANOPTIC_LAYOUT",
    "ADE20K_INSTANCE_LAYOUT",
    "ade20k_split_paths",
    "register_ade20k_sem_seg",
    "register_ade20k_panoptic",
]

ADE20K_SEM_SEG_LAYOUT = (
    "ADEChallengeData2016/images/{training,validation}/*.jpg and "
    "ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png "
    "(labels 0..149, 255 = ignore; made from annotations/ by datasets/prepare_ade20k_sem_seg.py)"
)
ADE20K_PANOPTIC_LAYOUT = (
    "ADEChallengeData2016/images/{training,validation}/*.jpg, "
    "ADEChallengeData2016/ade20k_panoptic_{train,val}.json, "
    "ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png (datasets/prepare_ade20k_pan_seg.py) "
    "and ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png"
)

ADE20K_INSTANCE_LAYOUT = (
    "ADEChallengeData2016/images/{training,validation}/*.jpg and "
    "ADEChallengeData2016/ade20k_instance_{train,val}.json (datasets/prepare_ade20k_ins_seg.py)"
)


def register_ade20k_sem_seg(name: str, metadata: dict, image_root: str, sem_seg_root: str) -> None:
    """Register ADE20K semantic split ``name`` (lazy loading of the file list).

    Metadata: ``image_root``, ``sem_seg_root``, ``evaluator_type="sem_seg"``, ``ignore_label=255``
    and ``metadata`` (``stuff_classes``, ``stuff_colors``).
    """
    DatasetCatalog.register(
        name, lambda: load_sem_seg(sem_seg_root, image_root, ADE20K_SEM_SEG_LAYOUT)
    )
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=255,
        **metadata,
    )


def register_ade20k_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    sem_seg_root: str,
    panoptic_json: str,
    instances_json: str,
) -> None:
    """Register ADE20K panoptic split ``name`` (COCO panoptic format + semantic PNGs; lazy).

    Metadata: ``panoptic_root``, ``image_root``, ``panoptic_json``, ``json_file``,
    ``evaluator_type="ade20k_panoptic_seg"``, ``ignore_label=255``, ``label_divisor=1000``
    and ``metadata``.
    """
    DatasetCatalog.register(
        name,
        lambda: load_coco_panoptic_json(
            panoptic_json,
            image_root,
            panoptic_root,
            metadata,
            semseg_dir=sem_seg_root,
            layout=ADE20K_PANOPTIC_LAYOUT,
        ),
    )
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="ade20k_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )


def ade20k_split_paths(root: str, split: str) -> dict:
    """Paths of ADE20K ``split`` ("train" or "val") under the dataset ``root``."""
    folder = {"train": "training", "val": "validation"}[split]
    base = os.path.join(root, "ADEChallengeData2016")
    return {
        "image_root": os.path.join(base, "images", folder),
        "sem_seg_root": os.path.join(base, "annotations_detectron2", folder),
        "panoptic_root": os.path.join(base, f"ade20k_panoptic_{split}"),
        "panoptic_json": os.path.join(base, f"ade20k_panoptic_{split}.json"),
        "instances_json": os.path.join(base, f"ade20k_instance_{split}.json"),
    }
