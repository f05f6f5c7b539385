"""COCO-format instance annotations (``instances_*.json``) -> Detectron2 dataset dicts."""
import contextlib
import io
import logging
import os
from typing import Dict, List, Optional

import pycocotools.mask as mask_util
from pycocotools.coco import COCO

from ..catalog import DatasetCatalog, MetadataCatalog
from ._paths import read_json, require_dir, require_file
from .box_mode import BoxMode

__all__ = ["COCO_LAYOUT", "load_coco_json", "register_coco_instances"]

logger = logging.getLogger(__name__)

COCO_LAYOUT = "coco/{train,val}2017/*.jpg and coco/annotations/instances_{train,val}2017.json"


def _contiguous_id_map(coco_api: COCO, dataset_name: Optional[str]) -> Dict[int, int]:
    """Dataset category id -> contiguous id in [0, #categories).

    Uses ``thing_dataset_id_to_contiguous_id`` of the dataset's metadata when it is set (built-in
    datasets); otherwise derives it from the json's categories sorted by id and stores it, with
    ``thing_classes``, in the metadata of ``dataset_name`` (if given).
    """
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        known = meta.get("thing_dataset_id_to_contiguous_id")
        if known is not None:
            return dict(known)
    cat_ids = sorted(coco_api.getCatIds())
    id_map = {cat_id: i for i, cat_id in enumerate(cat_ids)}
    if dataset_name is not None:
        meta.set(
            thing_classes=[c["name"] for c in coco_api.loadCats(cat_ids)],
            thing_dataset_id_to_contiguous_id=id_map,
        )
    return id_map


def _segmentation(segm):
    """Polygons with >= 3 points (list[list[float]]) or a compressed RLE dict; None if invalid."""
    if isinstance(segm, dict):
        if isinstance(segm["counts"], list):
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[List[str]] = None,
    layout: str = COCO_LAYOUT,
) -> List[dict]:
    """Read a COCO instances json into Detectron2 dataset dicts (images sorted by id).

    Args:
        json_file: path of the COCO instances json.
        image_root: folder holding the images named by ``images[*].file_name``.
        dataset_name: when given, category ids are mapped to contiguous ids with that dataset's
            metadata (or the map derived from the json is stored in it).
        extra_annotation_keys: further per-annotation keys copied as they are.
        layout: expected-layout text used in ``FileNotFoundError`` messages.

    Returns:
        One dict per image: ``file_name``, ``image_id`` (int), ``height``, ``width`` (pixels),
        ``annotations``: list of ``{bbox: [x, y, w, h] float pixels, bbox_mode:
        BoxMode.XYWH_ABS, category_id: int (contiguous when ``dataset_name`` is given, else
        the json id), iscrowd: 0/1, segmentation: polygons list[list[float]] (x, y pixel
        coordinates, alternating) or compressed RLE dict}``. Annotations whose polygons are all
        degenerate (< 3 points) are dropped.

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` missing.
        KeyError: an annotation's category id is not in the category map.
        ValueError: ``json_file`` cannot be parsed, or an annotation has an empty bbox or the
            ``ignore`` flag.
    """
    require_file(json_file, layout)
    require_dir(image_root, layout)
    coco_api = COCO()
    coco_api.dataset = read_json(json_file, required_keys=("images", "annotations", "categories"))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_api.createIndex()
    id_map = _contiguous_id_map(coco_api, dataset_name) if dataset_name else None

    keys = ["iscrowd", "bbox", "category_id"] + list(extra_annotation_keys or [])
    dataset_dicts = []
    num_dropped = 0
    for image_id in sorted(coco_api.imgs):
        img = coco_api.imgs[image_id]
        annotations = []
        for anno in coco_api.imgToAnns[image_id]:
            if anno.get("ignore", 0):
                raise ValueError(f"'ignore' annotations are not supported ({json_file}).")
            obj = {key: anno[key] for key in keys if key in anno}
            if "bbox" in obj and len(obj["bbox"]) == 0:
                raise ValueError(f"Empty 'bbox' in an annotation of image {image_id}.")
            if anno.get("segmentation"):
                segm = _segmentation(anno["segmentation"])
                if segm is None:
                    num_dropped += 1
                    continue
                obj["segmentation"] = segm
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map is not None:
                if obj["category_id"] not in id_map:
                    raise KeyError(
                        f"category_id={obj['category_id']} of image {image_id} is not in the "
                        f"category map of '{dataset_name}' ({json_file})."
                    )
                obj["category_id"] = id_map[obj["category_id"]]
            annotations.append(obj)
        dataset_dicts.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "image_id": img["id"],
                "height": img["height"],
                "width": img["width"],
                "annotations": annotations,
            }
        )
    if num_dropped:
        logger.warning(f"Dropped {num_dropped} annotations without a valid polygon ({json_file}).")
    return dataset_dicts


def register_coco_instances(
    name: str, metadata: dict, json_file: str, image_root: str, layout: str = COCO_LAYOUT
) -> None:
    """Register a COCO-format instance dataset (lazy: the json is read by ``DatasetCatalog.get``).

    Sets metadata ``json_file``, ``image_root``, ``evaluator_type="coco"`` and ``metadata``;
    ``layout`` is the expected-layout text of ``FileNotFoundError`` messages.
    """
    DatasetCatalog.register(
        name, lambda: load_coco_json(json_file, image_root, name, layout=layout)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
