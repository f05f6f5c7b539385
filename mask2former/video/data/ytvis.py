"""YouTube-VIS annotations (Yang et al., "Video Instance Segmentation", ICCV 2019) as dataset dicts,
and the built-in ``ytvis_2019_*`` / ``ytvis_2021_*`` names.

The json has COCO's layout with videos for images: ``videos`` [{id, width, height, length,
file_names}], ``annotations`` [{id, video_id, category_id, iscrowd, segmentations, bboxes, areas}]
with one entry per frame (RLE dict, polygons, or null where the instance is not visible) and
``categories``.
"""
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional

from pycocotools import mask as mask_util

from ...data.catalog import DatasetCatalog, MetadataCatalog
from ...data.datasets._paths import dataset_root, require_dir, require_file
from ...data.datasets.box_mode import BoxMode
from .ytvis_meta import ytvis_metadata

__all__ = ["YTVIS_DATASET_NAMES", "load_ytvis_json", "register_ytvis_instances", "register_all_ytvis"]

logger = logging.getLogger(__name__)

YTVIS_LAYOUT = "ytvis_<year>/{train,valid}/JPEGImages/<video>/<frame>.jpg and ytvis_<year>/{train,valid}.json"

# name -> (year, image folder, json), relative to the dataset root
_SPLITS = {
    f"ytvis_{year}_{split}": (year, f"ytvis_{year}/{folder}/JPEGImages", f"ytvis_{year}/{folder}.json")
    for year in (2019, 2021)
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test"))
}
YTVIS_DATASET_NAMES = tuple(_SPLITS)


def _frame_segmentation(segm):
    """A frame's RLE (compressed) or polygons with >= 3 points; None when invalid."""
    if isinstance(segm, dict):
        return mask_util.frPyObjects(segm, *segm["size"]) if isinstance(segm["counts"], list) else segm
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def load_ytvis_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[Dict]:
    """Read a YouTube-VIS json into one dict per video (sorted by video id).

    Args:
        json_file: the annotation json.
        image_root: folder holding the frames named by ``videos[*].file_names``.
        dataset_name: when given, category ids are mapped to contiguous ids with that dataset's
            ``thing_dataset_id_to_contiguous_id`` (or, if it has none, the sorted json ids).

    Returns:
        dicts with ``file_names`` (T paths), ``height``, ``width``, ``length`` (T), ``video_id``,
        and ``annotations``: T lists (one per frame) of ``{id: instance id, category_id,
        iscrowd, bbox: [x, y, w, h], bbox_mode: BoxMode.XYWH_ABS, segmentation}`` for the instances
        visible in that frame (test splits have no annotations: T empty lists).

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` missing.
        ValueError: the json is not YouTube-VIS json (no ``videos``), or an annotation names an
            unknown category.
    """
    require_file(json_file, YTVIS_LAYOUT)
    require_dir(image_root, YTVIS_LAYOUT)
    with open(json_file) as f:
        data = json.load(f)
    if "videos" not in data:
        raise ValueError(f"{json_file}: not a YouTube-VIS json (no 'videos' list)")
    id_map = None
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        id_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
        if id_map is None:
            cat_ids = sorted(c["id"] for c in data.get("categories", []))
            id_map = {cid: i for i, cid in enumerate(cat_ids)}
            meta.thing_dataset_id_to_contiguous_id = id_map

    by_video = defaultdict(list)
    for anno in data.get("annotations", []):
        by_video[anno["video_id"]].append(anno)
    records, num_invalid = [], 0
    for video in sorted(data["videos"], key=lambda v: v["id"]):
        length = video["length"]
        frames = [[] for _ in range(length)]
        for anno in by_video[video["id"]]:
            category = anno["category_id"]
            if id_map is not None:
                if category not in id_map:
                    raise ValueError(
                        f"{json_file}: category_id {category} of annotation {anno['id']} is unknown"
                    )
                category = id_map[category]
            bboxes = anno.get("bboxes") or [None] * length
            for t, segm in enumerate(anno.get("segmentations") or []):
                if not segm or not bboxes[t]:
                    continue
                segm = _frame_segmentation(segm)
                if segm is None:
                    num_invalid += 1
                    continue
                frames[t].append({
                    "id": anno["id"], "category_id": category, "iscrowd": anno.get("iscrowd", 0),
                    "bbox": bboxes[t], "bbox_mode": BoxMode.XYWH_ABS, "segmentation": segm,
                })
        records.append({
            "file_names": [os.path.join(image_root, name) for name in video["file_names"][:length]],
            "height": video["height"], "width": video["width"], "length": length,
            "video_id": video["id"], "annotations": frames,
        })
    if num_invalid:
        logger.warning(f"{json_file}: dropped {num_invalid} frame annotations without a valid polygon")
    return records


def register_ytvis_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register a YouTube-VIS-format dataset (read lazily by ``DatasetCatalog.get``) with
    ``evaluator_type="ytvis"``, ``json_file`` and ``image_root`` in its metadata."""
    DatasetCatalog.register(name, lambda: load_ytvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="ytvis", **metadata
    )


def register_all_ytvis(root: Optional[str] = None) -> None:
    """Register :data:`YTVIS_DATASET_NAMES` (those not registered yet) under ``root``
    (default ``$DETECTRON2_DATASETS``, else ``./datasets``)."""
    root = dataset_root() if root is None else os.path.expanduser(root)
    for name, (year, image_root, json_file) in _SPLITS.items():
        if name not in DatasetCatalog.list():
            register_ytvis_instances(
                name, ytvis_metadata(year), os.path.join(root, json_file), os.path.join(root, image_root)
            )
