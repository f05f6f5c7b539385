"""Instance and semantic ground truth derived from COCO-format panoptic annotations, so that a
panoptic dataset given only as panoptic JSON + PNGs is also evaluated for AP and mIoU.

Panoptic PNGs: segment id = R + 256 G + 256^2 B, 0 = unlabeled.
"""
import json
import os
from typing import Callable, Dict, List

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from ..panoptic_format import rgb2id

__all__ = ["instances_json_from_panoptic", "semantic_loader_from_panoptic"]


def _read_ids(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


def instances_json_from_panoptic(panoptic_json: str, panoptic_root: str, out_json: str) -> int:
    """Write a COCO instances JSON with one annotation per thing segment of ``panoptic_json``.

    Annotations: ``segmentation`` (compressed RLE of the segment's pixels, counts as str),
    ``bbox`` (XYWH pixels of the RLE), ``area`` (pixels), ``iscrowd`` and ``category_id`` (the
    dataset id) from ``segments_info``; ``images`` as in the panoptic JSON; ``categories`` its
    ``isthing`` categories. Written to a temporary file renamed to ``out_json``.

    Returns:
        The number of annotations.

    Raises:
        FileNotFoundError: the JSON or a PNG is missing.
    """
    with open(panoptic_json) as f:
        panoptic = json.load(f)
    things = {c["id"] for c in panoptic["categories"] if c.get("isthing")}
    annotations: List[dict] = []
    for ann in panoptic["annotations"]:
        ids = _read_ids(os.path.join(panoptic_root, ann["file_name"]))
        for segment in ann["segments_info"]:
            if segment["category_id"] not in things:
                continue
            rle = mask_util.encode(np.asfortranarray(ids == segment["id"], dtype=np.uint8))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": ann["image_id"],
                    "category_id": segment["category_id"],
                    "iscrowd": int(segment.get("iscrowd", 0)),
                    "area": int(mask_util.area(rle)),
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                }
            )
    data = {
        "images": panoptic["images"],
        "annotations": annotations,
        "categories": [c for c in panoptic["categories"] if c.get("isthing")],
    }
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, out_json)
    return len(annotations)


def semantic_loader_from_panoptic(records: List[dict]) -> Callable[..., np.ndarray]:
    """A ``SemSegEvaluator`` ``sem_seg_loading_fn`` reading each record's panoptic PNG as a
    semantic label map: pixel = the contiguous ``category_id`` of its segment (crowd segments
    included), 255 where no segment is.

    Args:
        records: panoptic dataset dicts (``pan_seg_file_name``, ``segments_info`` with
            contiguous ids).
    """
    segments: Dict[str, list] = {r["pan_seg_file_name"]: r["segments_info"] for r in records}

    def load(path: str, dtype=np.int64) -> np.ndarray:
        ids = _read_ids(path)
        labels = np.full(ids.shape, 255, dtype=dtype)
        for segment in segments[path]:
            labels[ids == segment["id"]] = segment["category_id"]
        return labels

    return load
