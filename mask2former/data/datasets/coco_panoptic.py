"""COCO-format panoptic annotations (``panoptic_*.json`` + PNG id maps) -> Detectron2 dicts.

Used for COCO panoptic and for ADE20K panoptic (same format).
"""
import os
from typing import List, Optional

from ..catalog import DatasetCatalog, MetadataCatalog
from ._paths import read_json, require_dir, require_file

__all__ = [
    "load_coco_panoptic_json",
    "register_coco_panoptic",
    "register_coco_panoptic_annos_sem_seg",
]

COCO_PANOPTIC_LAYOUT = (
    "coco/{train,val}2017/*.jpg, coco/panoptic_{train,val}2017/*.png, "
    "coco/annotations/panoptic_{train,val}2017.json and, for *_with_sem_seg, "
    "coco/panoptic_semseg_{train,val}2017/*.png (made by "
    "datasets/prepare_coco_semantic_annos_from_panoptic_annos.py)"
)


def _convert_segment(segment: dict, meta: dict) -> dict:
    """Copy of a ``segments_info`` entry with a contiguous ``category_id`` and ``isthing``."""
    segment = dict(segment)
    cat = segment["category_id"]
    if cat in meta["thing_dataset_id_to_contiguous_id"]:
        segment["category_id"] = meta["thing_dataset_id_to_contiguous_id"][cat]
        segment["isthing"] = True
    elif cat in meta["stuff_dataset_id_to_contiguous_id"]:
        segment["category_id"] = meta["stuff_dataset_id_to_contiguous_id"][cat]
        segment["isthing"] = False
    else:
        raise KeyError(f"Panoptic category_id={cat} is in neither category map of the metadata.")
    return segment


def load_coco_panoptic_json(
    json_file: str,
    image_dir: str,
    gt_dir: str,
    meta: dict,
    semseg_dir: Optional[str] = None,
    layout: str = COCO_PANOPTIC_LAYOUT,
) -> List[dict]:
    """Read a COCO-format panoptic json into Detectron2 dataset dicts (json annotation order).

    Args:
        json_file: the panoptic json (``images``, ``annotations`` with ``segments_info``).
        image_dir: folder of the images: ``images[*].file_name`` of the json, else the
            annotation PNG's stem + ``.jpg``.
        gt_dir: folder of the panoptic PNGs (segment id = R + 256 G + 256^2 B).
        meta: ``thing_dataset_id_to_contiguous_id`` and ``stuff_dataset_id_to_contiguous_id``.
        semseg_dir: when given, each dict gets ``sem_seg_file_name`` (same PNG name there).
        layout: expected-layout text used in ``FileNotFoundError`` messages.

    Returns:
        One dict per annotated image: ``file_name``, ``image_id`` (int), ``height``, ``width``,
        ``pan_seg_file_name``, ``segments_info`` (list of ``{id, category_id: contiguous int,
        isthing: bool, iscrowd: 0/1, bbox: XYWH pixels, area}``) and ``sem_seg_file_name`` when
        ``semseg_dir`` is given.

    Raises:
        FileNotFoundError: the json, a folder, or the first image / PNG is missing.
        KeyError: a segment's category id is not in ``meta``.
        ValueError: ``json_file`` cannot be parsed.
    """
    require_file(json_file, layout)
    require_dir(image_dir, layout)
    require_dir(gt_dir, layout)
    if semseg_dir is not None:
        require_dir(semseg_dir, layout)
    json_info = read_json(json_file, required_keys=("images", "annotations"))
    images = {img["id"]: img for img in json_info["images"]}

    ret = []
    for ann in json_info["annotations"]:
        image_id = int(ann["image_id"]) if str(ann["image_id"]).isdigit() else ann["image_id"]
        img = images.get(ann["image_id"])
        image_name = (img or {}).get("file_name") or os.path.splitext(ann["file_name"])[0] + ".jpg"
        record = {
            "file_name": os.path.join(image_dir, image_name),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": [_convert_segment(s, meta) for s in ann["segments_info"]],
        }
        if img is not None:
            record["height"], record["width"] = img["height"], img["width"]
        if semseg_dir is not None:
            record["sem_seg_file_name"] = os.path.join(semseg_dir, ann["file_name"])
        ret.append(record)
    if not ret:
        raise FileNotFoundError(f"No annotations in '{json_file}'. Expected layout: {layout}.")
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if key in ret[0]:
            require_file(ret[0][key], layout)
    return ret


def register_coco_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: Optional[str] = None,
) -> None:
    """Register Detectron2's "standard" COCO panoptic dataset ``name`` (lazy loading).

    Metadata: ``panoptic_root``, ``image_root``, ``panoptic_json``, ``json_file``
    (``instances_json``, for COCO AP; ``None``: no AP), ``evaluator_type="coco_panoptic_seg"``,
    ``ignore_label=255``, ``label_divisor=1000`` and ``metadata``. When ``metadata`` has no
    ``thing_dataset_id_to_contiguous_id``, the class metadata is read from the categories of
    ``panoptic_json`` now (:func:`.custom.coco_panoptic_metadata`).
    """
    if "thing_dataset_id_to_contiguous_id" not in metadata:
        from .custom import coco_panoptic_metadata

        metadata = {**coco_panoptic_metadata(panoptic_json), **metadata}
    DatasetCatalog.register(
        name, lambda: load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
    )
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )


def register_coco_panoptic_annos_sem_seg(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: str,
) -> None:
    """Register Mask2Former's ``name`` (e.g. ``coco_2017_train_panoptic_with_sem_seg``): the
    panoptic dicts plus ``sem_seg_file_name`` (lazy loading).

    Metadata: as :func:`register_coco_panoptic` plus ``sem_seg_root``.
    """
    DatasetCatalog.register(
        name,
        lambda: load_coco_panoptic_json(
            panoptic_json, image_root, panoptic_root, metadata, semseg_dir=sem_seg_root
        ),
    )
    MetadataCatalog.get(name).set(
        sem_seg_root=sem_seg_root,
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )
