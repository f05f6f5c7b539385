"""Annotation conversions behind the ``datasets/prepare_*.py`` scripts.

- :func:`coco_panoptic_to_semantic`: COCO panoptic PNGs -> semantic label PNGs
  (``coco/panoptic_semseg_{train,val}2017``, used by ``coco_2017_*_panoptic_with_sem_seg``).
- :func:`ade20k_sem_seg_convert`: raw ADE20K labels (0 = other, 1..150) -> 0..149 with 255 = ignore
  (``ADEChallengeData2016/annotations_detectron2``).
- :func:`ade20k_panoptic_from_instances`, :func:`ade20k_instance_json`: ADE20K panoptic /
  instance annotations in COCO format from the ADE20K instance-segmentation release
  (``annotations_instance/*.png``: R = instance class 1..100, G = instance id, 0 = void).

Label PNGs are uint8 single-channel; panoptic PNGs are RGB with segment id = R + 256 G + 256^2 B.
"""
import json
import multiprocessing as mp
import os
from functools import partial
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
import tqdm
from PIL import Image

from ...utils.atomic_io import atomic_write
from ..panoptic_format import id2rgb, rgb2id
from ._paths import require_dir, require_file
from .builtin_meta import (
    ADE20K_150_CATEGORIES,
    ADE20K_INSTANCE_CATEGORIES,
    COCO_PANOPTIC_CATEGORIES,
)

__all__ = [
    "mirror_inputs",
    "coco_panoptic_to_semantic",
    "ade20k_sem_seg_convert",
    "ade20k_panoptic_from_instances",
    "ade20k_instance_json",
    "default_workers",
]

_COCO_PANOPTIC_LAYOUT = "coco/panoptic_{train,val}2017/*.png and coco/annotations/panoptic_*.json"
_ADE_LAYOUT = (
    "ADEChallengeData2016/images/{training,validation}/*.jpg, "
    "ADEChallengeData2016/annotations/{training,validation}/*.png and (panoptic/instance only) "
    "ADEChallengeData2016/annotations_instance/{training,validation}/*.png"
)


def mirror_inputs(src_dir: str, dst_dir: str) -> None:
    """Symlink every entry of ``src_dir`` into ``dst_dir`` unless ``dst_dir`` has that name.

    Lets outputs be written to a new dataset root (e.g. when the original root is read-only)
    that still holds the original images and annotations.
    """
    if os.path.realpath(src_dir) == os.path.realpath(dst_dir):
        return
    os.makedirs(dst_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        dst = os.path.join(dst_dir, name)
        if not os.path.lexists(dst):
            os.symlink(os.path.abspath(os.path.join(src_dir, name)), dst)


def _panoptic_png_to_semantic(
    job: Tuple[str, str, List[dict]], id_map: Dict[int, int]
) -> None:
    src, dst, segments = job
    ids = rgb2id(np.asarray(Image.open(src).convert("RGB")))
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for seg in segments:
        out[ids == seg["id"]] = id_map[seg["category_id"]]
    with atomic_write(dst, "wb") as f:
        Image.fromarray(out).save(f, format="PNG")


def _run(fn, jobs: List, workers: int, desc: str) -> None:
    """Apply ``fn`` to every job with a tqdm bar, in ``workers`` processes (0/1 = inline)."""
    if workers > 1:
        with mp.Pool(workers) as pool:
            results = pool.imap_unordered(fn, jobs, chunksize=16)
            for _ in tqdm.tqdm(results, total=len(jobs), desc=desc):
                pass
    else:
        for job in tqdm.tqdm(jobs, desc=desc):
            fn(job)


def coco_panoptic_to_semantic(
    panoptic_json: str,
    panoptic_root: str,
    sem_seg_root: str,
    categories: Iterable[tuple] = COCO_PANOPTIC_CATEGORIES,
    workers: int = 0,
) -> int:
    """Write one semantic label PNG per panoptic annotation (same file name).

    Pixel value = contiguous id (row index in ``categories``; 0..132 for COCO) of the segment's
    category, crowd segments included; pixels of no segment (id 0) are 255.

    Args:
        categories: ``(dataset id, ...)`` rows; the row index is the output label.
        workers: processes (0 or 1 = no multiprocessing).

    Returns:
        The number of PNGs written.

    Raises:
        FileNotFoundError: the json or ``panoptic_root`` is missing.
        ValueError: more than 255 categories.
    """
    require_file(panoptic_json, _COCO_PANOPTIC_LAYOUT)
    require_dir(panoptic_root, _COCO_PANOPTIC_LAYOUT)
    id_map = {row[0]: i for i, row in enumerate(categories)}
    if len(id_map) > 255:
        raise ValueError(f"{len(id_map)} categories do not fit uint8 labels with 255 = ignore.")
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    os.makedirs(sem_seg_root, exist_ok=True)
    jobs = [
        (
            os.path.join(panoptic_root, ann["file_name"]),
            os.path.join(sem_seg_root, ann["file_name"]),
            ann["segments_info"],
        )
        for ann in annotations
    ]
    _run(partial(_panoptic_png_to_semantic, id_map=id_map), jobs, workers, sem_seg_root)
    return len(jobs)


def _shift_label(job: Tuple[str, str]) -> None:
    src, dst = job
    label = np.asarray(Image.open(src))
    if label.dtype != np.uint8:
        raise ValueError(f"ADE20K label '{src}' is {label.dtype}, expected uint8.")
    Image.fromarray(label - np.uint8(1)).save(dst)  # 0 (other) wraps to 255


def ade20k_sem_seg_convert(annotation_dir: str, output_dir: str, workers: int = 0) -> int:
    """Raw ADE20K label PNGs (0 = other, 1..150) -> labels 0..149 with 255 = ignore.

    Returns:
        The number of PNGs written.
    """
    require_dir(annotation_dir, _ADE_LAYOUT)
    os.makedirs(output_dir, exist_ok=True)
    jobs = [
        (os.path.join(annotation_dir, n), os.path.join(output_dir, n))
        for n in sorted(os.listdir(annotation_dir))
        if n.endswith(".png")
    ]
    _run(_shift_label, jobs, workers, output_dir)
    return len(jobs)


# ADE20K instance class (1..100, R channel of annotations_instance) -> 150-class id (0..149).
_ADE_INSTANCE_TO_SEMANTIC = {k + 1: row[0] for k, row in enumerate(ADE20K_INSTANCE_CATEGORIES)}
_ADE_THING_IDS = {row[0] for row in ADE20K_150_CATEGORIES if row[2] == 1}


def _read_instance_png(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(semantic class id 0..149 or 255, instance id 0 = none)`` maps from an instance PNG."""
    ins = np.asarray(Image.open(path).convert("RGB"))
    classes = np.full(ins.shape[:2], 255, dtype=np.uint8)
    for k in np.unique(ins[..., 0]):
        if k != 0:
            classes[ins[..., 0] == k] = _ADE_INSTANCE_TO_SEMANTIC[int(k)]
    return classes, ins[..., 1]


def _instance_masks(classes: np.ndarray, instance_ids: np.ndarray, path: str):
    """Yield ``(semantic class id, bool mask)`` per instance id > 0 (one class each)."""
    for inst in np.unique(instance_ids):
        if inst == 0:
            continue
        mask = instance_ids == inst
        cats = np.unique(classes[mask])
        if len(cats) != 1 or cats[0] == 255:
            raise ValueError(f"Instance {inst} of '{path}' has classes {cats.tolist()}.")
        yield int(cats[0]), mask


def _bbox_xywh(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _image_entries(image_dir: str) -> List[dict]:
    entries = []
    for name in sorted(os.listdir(require_dir(image_dir, _ADE_LAYOUT))):
        if name.endswith(".jpg"):
            with Image.open(os.path.join(image_dir, name)) as img:
                width, height = img.size
            stem = os.path.splitext(name)[0]
            entries.append({"id": stem, "file_name": name, "width": width, "height": height})
    return entries


def ade20k_panoptic_from_instances(
    image_dir: str,
    semantic_dir: str,
    instance_dir: str,
    out_folder: str,
    out_json: str,
) -> int:
    """ADE20K panoptic annotations in COCO panoptic format.

    Stuff segments come from the raw semantic labels (one segment per stuff class present);
    thing segments from the instance PNGs (one per instance id), pasted over the stuff. Segment
    ids are ``(class id + 1) * 1000 + k`` (k counts the class's segments in the image); ``area``
    and ``bbox`` (XYWH) are measured on the written PNG. ``categories`` are the 150 classes
    (``id`` 0..149, ``isthing``, ``color``).

    Args:
        semantic_dir: raw labels (``annotations/<split>``, 0 = other, 1..150).
        instance_dir: ``annotations_instance/<split>``.

    Returns:
        The number of images converted.

    Raises:
        FileNotFoundError: a folder or an image's label file is missing.
    """
    require_dir(semantic_dir, _ADE_LAYOUT)
    require_dir(instance_dir, _ADE_LAYOUT)
    os.makedirs(out_folder, exist_ok=True)
    images = _image_entries(image_dir)
    annotations = []
    for image in tqdm.tqdm(images, desc=out_folder):
        sem_file = require_file(os.path.join(semantic_dir, image["id"] + ".png"), _ADE_LAYOUT)
        ins_file = require_file(os.path.join(instance_dir, image["id"] + ".png"), _ADE_LAYOUT)
        semantic = np.asarray(Image.open(sem_file)) - np.uint8(1)
        pan = np.zeros(semantic.shape, dtype=np.int64)
        counts: Dict[int, int] = {}
        categories: Dict[int, int] = {}

        def paste(cat: int, mask: np.ndarray) -> None:
            segment_id = (cat + 1) * 1000 + counts.get(cat, 0)
            counts[cat] = counts.get(cat, 0) + 1
            pan[mask] = segment_id
            categories[segment_id] = cat

        for cat in np.unique(semantic):
            if cat != 255 and int(cat) not in _ADE_THING_IDS:
                paste(int(cat), semantic == cat)
        classes, instance_ids = _read_instance_png(ins_file)
        for cat, mask in _instance_masks(classes, instance_ids, ins_file):
            paste(cat, mask)

        segments = []
        for segment_id, cat in categories.items():
            mask = pan == segment_id
            if mask.any():
                segments.append(
                    {
                        "id": segment_id,
                        "category_id": cat,
                        "area": int(mask.sum()),
                        "bbox": _bbox_xywh(mask),
                        "iscrowd": 0,
                    }
                )
        with atomic_write(os.path.join(out_folder, image["id"] + ".png"), "wb") as f:
            Image.fromarray(id2rgb(pan)).save(f, format="PNG")
        annotations.append(
            {"image_id": image["id"], "file_name": image["id"] + ".png", "segments_info": segments}
        )
    categories_json = [
        {"id": row[0], "name": row[1], "isthing": row[2], "color": list(row[3])}
        for row in ADE20K_150_CATEGORIES
    ]
    with atomic_write(out_json) as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories_json}, f)
    return len(images)


def ade20k_instance_json(image_dir: str, instance_dir: str, out_json: str) -> int:
    """ADE20K instance annotations (100 thing classes) as a COCO instances json.

    One annotation per instance id: ``category_id`` = 150-class id (as in
    :data:`ADE20K_INSTANCE_CATEGORIES`), compressed-RLE ``segmentation`` (counts as str),
    ``bbox`` XYWH, ``area``, ``iscrowd`` 0; annotation ids count from 1, image ids are file stems.

    Returns:
        The number of annotations written.

    Raises:
        FileNotFoundError: a folder or an image's instance PNG is missing.
    """
    require_dir(instance_dir, _ADE_LAYOUT)
    images = _image_entries(image_dir)
    annotations = []
    for image in tqdm.tqdm(images, desc=out_json):
        ins_file = require_file(os.path.join(instance_dir, image["id"] + ".png"), _ADE_LAYOUT)
        classes, instance_ids = _read_instance_png(ins_file)
        for cat, mask in _instance_masks(classes, instance_ids, ins_file):
            rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": _bbox_xywh(mask),
                    "area": int(mask.sum()),
                    "segmentation": rle,
                }
            )
    categories = [{"id": row[0], "name": row[1]} for row in ADE20K_INSTANCE_CATEGORIES]
    with atomic_write(out_json) as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return len(annotations)


def default_workers(requested: Optional[int]) -> int:
    """``requested`` if given, else half the CPU cores (at least 1)."""
    return max(1, mp.cpu_count() // 2) if requested is None else requested
