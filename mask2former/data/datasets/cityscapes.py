"""Cityscapes (fine annotations): semantic, instance and panoptic loaders and registrations.

Layout under the dataset root (see ``datasets/README.md``)::

    cityscapes/
      leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
      gtFine/{train,val}/<city>/<name>_gtFine_{labelIds,instanceIds,labelTrainIds}.png
      gtFine/cityscapes_panoptic_{train,val}.json, gtFine/cityscapes_panoptic_{train,val}/*.png

``labelTrainIds`` come from cityscapesScripts' ``createTrainIdLabelImgs.py`` and the panoptic
files from its ``createPanopticImgs.py``.
"""
import json
import multiprocessing as mp
import os
from typing import List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ..catalog import DatasetCatalog, MetadataCatalog
from ._paths import require_dir, require_file
from .box_mode import BoxMode
from .builtin_meta import CITYSCAPES_CATEGORIES

__all__ = [
    "CITYSCAPES_LAYOUT",
    "load_cityscapes_semantic",
    "load_cityscapes_instances",
    "load_cityscapes_panoptic",
    "register_cityscapes",
    "register_cityscapes_panoptic",
]

CITYSCAPES_LAYOUT = (
    "cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
    "cityscapes/gtFine/{train,val}/<city>/*_gtFine_{instanceIds,labelTrainIds}.png "
    "(labelTrainIds from cityscapesScripts createTrainIdLabelImgs.py); panoptic: "
    "cityscapes/gtFine/cityscapes_panoptic_{train,val}.json and "
    "cityscapes/gtFine/cityscapes_panoptic_{train,val}/*.png (createPanopticImgs.py)"
)
_IMAGE_SUFFIX = "_leftImg8bit.png"
# Cityscapes label id -> contiguous thing id in [0, 8) (person, rider, ..., bicycle).
_THING_LABEL_TO_CONTIGUOUS = {
    c[0]: i for i, c in enumerate(c for c in CITYSCAPES_CATEGORIES if c[3] == 1)
}


def _image_files(image_dir: str, gt_dir: str) -> List[Tuple[str, str]]:
    """``(image file, gtFine file prefix)`` for every ``*_leftImg8bit.png``, sorted by path."""
    require_dir(image_dir, CITYSCAPES_LAYOUT)
    require_dir(gt_dir, CITYSCAPES_LAYOUT)
    files = []
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        for name in sorted(os.listdir(city_dir)):
            if name.endswith(_IMAGE_SUFFIX):
                stem = name[: -len(_IMAGE_SUFFIX)]
                files.append((os.path.join(city_dir, name), os.path.join(gt_dir, city, stem)))
    if not files:
        raise FileNotFoundError(
            f"No '*{_IMAGE_SUFFIX}' images under '{image_dir}'. Expected layout: "
            f"{CITYSCAPES_LAYOUT}."
        )
    return files


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> List[dict]:
    """Cityscapes semantic dicts: ``file_name``, ``sem_seg_file_name`` (``*_labelTrainIds.png``:
    trainIds 0..18, 255 = ignore), ``height``, ``width``.

    Raises:
        FileNotFoundError: a folder, or the first image's label map, is missing.
    """
    ret = []
    for image_file, gt_prefix in _image_files(image_dir, gt_dir):
        with Image.open(image_file) as img:
            width, height = img.size
        ret.append(
            {
                "file_name": image_file,
                "sem_seg_file_name": gt_prefix + "_gtFine_labelTrainIds.png",
                "height": height,
                "width": width,
            }
        )
    require_file(ret[0]["sem_seg_file_name"], CITYSCAPES_LAYOUT)
    return ret


def _instances_from_png(files: Tuple[str, str]) -> dict:
    """Dataset dict of one image from its ``*_gtFine_instanceIds.png``.

    Pixel value v: ``v < 1000`` is a label id of a region without instances (a crowd region for
    thing classes); ``v >= 1000`` is instance ``v % 1000`` of label id ``v // 1000``.
    """
    image_file, gt_prefix = files
    inst_file = gt_prefix + "_gtFine_instanceIds.png"
    inst = np.asarray(Image.open(inst_file))
    annotations = []
    for value in np.unique(inst):
        label = int(value) // 1000 if value >= 1000 else int(value)
        if label not in _THING_LABEL_TO_CONTIGUOUS:
            continue
        mask = np.asfortranarray(inst == value, dtype=np.uint8)
        rle = mask_util.encode(mask)
        annotations.append(
            {
                "iscrowd": int(value < 1000),
                "category_id": _THING_LABEL_TO_CONTIGUOUS[label],
                "bbox": mask_util.toBbox(rle).tolist(),
                "bbox_mode": BoxMode.XYWH_ABS,
                "segmentation": rle,
            }
        )
    return {
        "file_name": image_file,
        "image_id": os.path.basename(gt_prefix),
        "height": inst.shape[0],
        "width": inst.shape[1],
        "annotations": annotations,
    }


def load_cityscapes_instances(
    image_dir: str, gt_dir: str, num_workers: Optional[int] = None
) -> List[dict]:
    """Cityscapes instance dicts read from ``*_gtFine_instanceIds.png``.

    Each annotation: ``category_id`` in [0, 8) (person, rider, car, truck, bus, train,
    motorcycle, bicycle), ``iscrowd``, ``segmentation`` (compressed RLE), ``bbox`` (XYWH pixels,
    ``BoxMode.XYWH_ABS``).

    Args:
        num_workers: processes decoding the PNGs; ``None`` = ``min(8, cpu count)``, 0 = none.

    Raises:
        FileNotFoundError: a folder or an instance PNG is missing.
    """
    files = _image_files(image_dir, gt_dir)
    require_file(files[0][1] + "_gtFine_instanceIds.png", CITYSCAPES_LAYOUT)
    workers = min(8, mp.cpu_count()) if num_workers is None else num_workers
    if workers > 1 and len(files) > 1:
        with mp.Pool(workers) as pool:
            return pool.map(_instances_from_png, files)
    return [_instances_from_png(f) for f in files]


def load_cityscapes_panoptic(image_dir: str, gt_dir: str, gt_json: str, meta: dict) -> List[dict]:
    """Cityscapes panoptic dicts (COCO panoptic format made by ``createPanopticImgs.py``).

    Returns:
        ``file_name``, ``image_id`` (``<city>_<seq>_<frame>``), ``sem_seg_file_name``
        (``*_labelTrainIds.png``), ``pan_seg_file_name``, ``segments_info`` with
        ``category_id`` mapped to trainIds via ``meta``.

    Raises:
        FileNotFoundError: the json, a folder, an image named by the json, or the first label
            files are missing.
    """
    require_file(gt_json, CITYSCAPES_LAYOUT)
    require_dir(gt_dir, CITYSCAPES_LAYOUT)
    images = {
        os.path.basename(f)[: -len(_IMAGE_SUFFIX)]: f
        for f, _ in _image_files(image_dir, gt_dir.replace("cityscapes_panoptic_", ""))
    }
    with open(gt_json) as f:
        json_info = json.load(f)
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    ret = []
    for ann in json_info["annotations"]:
        image_file = images.get(ann["image_id"])
        if image_file is None:
            raise FileNotFoundError(
                f"Image '{ann['image_id']}{_IMAGE_SUFFIX}' of '{gt_json}' not found under "
                f"'{image_dir}'. Expected layout: {CITYSCAPES_LAYOUT}."
            )
        segments = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            cat = seg["category_id"]
            seg["isthing"] = cat in thing_map
            seg["category_id"] = thing_map[cat] if cat in thing_map else stuff_map[cat]
            segments.append(seg)
        ret.append(
            {
                "file_name": image_file,
                "image_id": ann["image_id"],
                "sem_seg_file_name": image_file.replace("leftImg8bit", "gtFine")[: -len(".png")]
                + "_labelTrainIds.png",
                "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
                "segments_info": segments,
            }
        )
    if not ret:
        raise FileNotFoundError(f"No annotations in '{gt_json}'.")
    require_file(ret[0]["sem_seg_file_name"], CITYSCAPES_LAYOUT)
    require_file(ret[0]["pan_seg_file_name"], CITYSCAPES_LAYOUT)
    return ret


def register_cityscapes(name_template: str, metadata: dict, image_dir: str, gt_dir: str) -> None:
    """Register ``name_template.format(task="instance_seg" | "sem_seg")`` (lazy loading).

    Metadata: ``image_dir``, ``gt_dir``, ``evaluator_type`` (``cityscapes_instance`` /
    ``cityscapes_sem_seg``), ``ignore_label=255`` for semantic, and ``metadata``.
    """
    inst_name = name_template.format(task="instance_seg")
    DatasetCatalog.register(inst_name, lambda: load_cityscapes_instances(image_dir, gt_dir))
    MetadataCatalog.get(inst_name).set(
        image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_instance", **metadata
    )
    sem_name = name_template.format(task="sem_seg")
    DatasetCatalog.register(sem_name, lambda: load_cityscapes_semantic(image_dir, gt_dir))
    MetadataCatalog.get(sem_name).set(
        image_dir=image_dir,
        gt_dir=gt_dir,
        evaluator_type="cityscapes_sem_seg",
        ignore_label=255,
        **metadata,
    )


def register_cityscapes_panoptic(
    name: str, metadata: dict, image_dir: str, panoptic_root: str, panoptic_json: str
) -> None:
    """Register Cityscapes panoptic split ``name`` (lazy loading).

    Metadata: ``panoptic_root``, ``image_root``, ``panoptic_json``, ``gt_dir``,
    ``evaluator_type="cityscapes_panoptic_seg"``, ``ignore_label=255``, ``label_divisor=1000``
    and ``metadata``.
    """
    DatasetCatalog.register(
        name,
        lambda: load_cityscapes_panoptic(image_dir, panoptic_root, panoptic_json, metadata),
    )
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_dir,
        panoptic_json=panoptic_json,
        gt_dir=panoptic_root.replace("cityscapes_panoptic_", ""),
        evaluator_type="cityscapes_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )
