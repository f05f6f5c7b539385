"""Panoptic Quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019), computed exactly as the
COCO panoptic evaluation (``panopticapi.evaluation.pq_compute``) does, without panopticapi.

Data format (COCO panoptic): a segmentation is an RGB PNG whose pixel colour encodes a segment id,
``id = R + 256 * G + 256**2 * B`` (:func:`rgb2id` / :func:`id2rgb`); id 0 is VOID (unlabeled).
A JSON file lists, per image, ``{"image_id", "file_name", "segments_info": [{"id",
"category_id", ...}]}``; ground-truth segments also carry ``"area"`` (pixels) and ``"iscrowd"``.

Per image and category, with gt/pred segments as pixel sets:

- Areas: a predicted segment's area is its pixel count in the PNG; a ground-truth segment's
  area is the ``"area"`` field of the gt JSON.
- A (gt, pred) pair of the same category, gt not crowd, is a true positive when
  ``IoU = |gt & pred| / (area(pred) + area(gt) - |gt & pred| - |pred & gt VOID|) > 0.5``
  (pixels of the prediction on gt VOID are taken out of the union). IoU > 0.5 makes matches
  unique.
- Unmatched non-crowd gt segments are false negatives (crowd gt segments never count).
- An unmatched predicted segment is a false positive unless more than half of its area lies on
  gt VOID plus the gt crowd region of its own category (if an image has several crowd segments of
  one category, the last one listed in ``segments_info`` is that region).
- Over the whole dataset, per category: ``PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2)``,
  ``SQ = sum(IoU of TPs) / TP`` (0 when TP = 0), ``RQ = TP / (TP + FP/2 + FN/2)``;
  All/Things/Stuff average these over the categories of the gt JSON (of that kind) that have
  TP + FP + FN > 0; an average over no category is NaN.
"""
import json
import math
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
import multiprocessing
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.panoptic_format import id2rgb, rgb2id

__all__ = [
    "VOID",
    "read_panoptic_png",
    "PQStatCat",
    "PQStat",
    "pq_compute_single_image",
    "pq_compute",
    "match_annotations",
    "summarize",
]

VOID = 0


def read_panoptic_png(path: str) -> np.ndarray:
    """Segment-id map [H, W] (int64) of a COCO panoptic PNG.

    Raises:
        ValueError: the image is not 3-channel RGB.
    """
    with Image.open(path) as image:
        if image.mode != "RGB":
            raise ValueError(f"Panoptic PNG {path} must be RGB, got mode {image.mode}.")
        return rgb2id(np.asarray(image))


@dataclass
class PQStatCat:
    """Accumulated matching statistics of one category."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: "PQStatCat") -> "PQStatCat":
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category :class:`PQStatCat`, indexed by dataset category id (created on access)."""

    def __init__(self):
        self.pq_per_cat: Dict[int, PQStatCat] = defaultdict(PQStatCat)

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.pq_per_cat[category_id]

    def __iadd__(self, other: "PQStat") -> "PQStat":
        for category_id, stat in other.pq_per_cat.items():
            self.pq_per_cat[category_id] += stat
        return self

    def pq_average(
        self, categories: Dict[int, dict], isthing: Optional[bool]
    ) -> Tuple[dict, Dict[int, dict]]:
        """PQ/SQ/RQ averaged over categories.

        Args:
            categories: dataset category id -> category dict with ``"isthing"`` (0/1).
            isthing: average over thing (True), stuff (False) or all (None) categories.

        Returns:
            ``({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}})`` with values in
            [0, 1]; ``n`` counts the categories with TP + FP + FN > 0 (only they are averaged,
            the others get zeros in the per-category dict); averages over ``n = 0`` are NaN.
        """
        totals = np.zeros(3)
        n = 0
        per_class: Dict[int, dict] = {}
        for category_id, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            stat = self.pq_per_cat.get(category_id, PQStatCat())
            if stat.tp + stat.fp + stat.fn == 0:
                per_class[category_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
            values = (
                stat.iou / denominator,
                stat.iou / stat.tp if stat.tp != 0 else 0.0,
                stat.tp / denominator,
            )
            per_class[category_id] = dict(zip(("pq", "sq", "rq"), values))
            totals += values
        averages = totals / n if n else np.full(3, np.nan)
        summary = dict(zip(("pq", "sq", "rq"), averages.tolist()))
        summary["n"] = n
        return summary, per_class


def _pred_areas(
    pan_pred: np.ndarray, pred_segms: Dict[int, dict], categories: Dict[int, dict], image_id
) -> Dict[int, int]:
    """Pixel count of every predicted segment, after checking that PNG and JSON agree."""
    labels, counts = np.unique(pan_pred, return_counts=True)
    areas = {}
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} is present in the PNG "
                "and not in the JSON."
            )
        category_id = pred_segms[label]["category_id"]
        if category_id not in categories:
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} has unknown "
                f"category_id {category_id}."
            )
        areas[label] = count
    missing = sorted(set(pred_segms) - set(areas))
    if missing:
        raise KeyError(
            f"In the image with ID {image_id} the segment IDs {missing} are present in the JSON "
            "and not in the PNG."
        )
    return areas


def _intersections(pan_gt: np.ndarray, pan_pred: np.ndarray) -> Dict[Tuple[int, int], int]:
    """``{(gt id, pred id): number of pixels}`` over all co-occurring id pairs."""
    gt_ids, gt_index = np.unique(pan_gt, return_inverse=True)
    pred_ids, pred_index = np.unique(pan_pred, return_inverse=True)
    pair_counts = np.bincount(
        gt_index.reshape(-1) * len(pred_ids) + pred_index.reshape(-1),
        minlength=len(gt_ids) * len(pred_ids),
    ).reshape(len(gt_ids), len(pred_ids))
    rows, cols = np.nonzero(pair_counts)
    return {
        (int(gt_ids[r]), int(pred_ids[c])): int(pair_counts[r, c]) for r, c in zip(rows, cols)
    }


def pq_compute_single_image(
    pan_gt: np.ndarray,
    gt_segments_info: Sequence[dict],
    pan_pred: np.ndarray,
    pred_segments_info: Sequence[dict],
    categories: Dict[int, dict],
    image_id=None,
) -> PQStat:
    """Matching statistics of one image (see the module docstring for the rules).

    Args:
        pan_gt: int [H, W] gt segment ids (0 = VOID).
        gt_segments_info: gt segments, dicts with ``"id"``, ``"category_id"``, ``"area"``,
            ``"iscrowd"``.
        pan_pred: int [H, W] predicted segment ids (0 = VOID unless listed in the JSON).
        pred_segments_info: predicted segments, dicts with ``"id"``, ``"category_id"``.
        categories: dataset category id -> category dict.
        image_id: only used in error messages.

    Raises:
        ValueError: the two maps differ in shape.
        KeyError: a predicted id is in the PNG but not the JSON (or vice versa), or has a
            category not in ``categories``.
    """
    if pan_gt.shape != pan_pred.shape:
        raise ValueError(
            f"In the image with ID {image_id} the prediction has shape {pan_pred.shape}, "
            f"the ground truth {pan_gt.shape}."
        )
    gt_segms = {s["id"]: s for s in gt_segments_info}
    pred_segms = {s["id"]: s for s in pred_segments_info}
    pred_areas = _pred_areas(pan_pred, pred_segms, categories, image_id)
    overlap = _intersections(pan_gt, pan_pred)

    stat = PQStat()
    gt_matched, pred_matched = set(), set()
    for (gt_id, pred_id), intersection in overlap.items():
        if gt_id not in gt_segms or pred_id not in pred_segms:
            continue
        gt_seg = gt_segms[gt_id]
        if gt_seg["iscrowd"] == 1:
            continue
        if gt_seg["category_id"] != pred_segms[pred_id]["category_id"]:
            continue
        union = (
            pred_areas[pred_id]
            + gt_seg["area"]
            - intersection
            - overlap.get((VOID, pred_id), 0)
        )
        iou = intersection / union
        if iou > 0.5:
            stat[gt_seg["category_id"]].tp += 1
            stat[gt_seg["category_id"]].iou += iou
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)

    crowd_by_category: Dict[int, int] = {}
    for gt_id, gt_seg in gt_segms.items():
        if gt_id in gt_matched:
            continue
        if gt_seg["iscrowd"] == 1:
            crowd_by_category[gt_seg["category_id"]] = gt_id
            continue
        stat[gt_seg["category_id"]].fn += 1

    for pred_id, pred_seg in pred_segms.items():
        if pred_id in pred_matched:
            continue
        ignored = overlap.get((VOID, pred_id), 0)
        crowd_id = crowd_by_category.get(pred_seg["category_id"])
        if crowd_id is not None:
            ignored += overlap.get((crowd_id, pred_id), 0)
        if ignored / pred_areas[pred_id] > 0.5:
            continue
        stat[pred_seg["category_id"]].fp += 1
    return stat


def _pq_compute_images(
    pairs: Iterable[Tuple[dict, dict]], gt_folder: str, pred_folder: str, categories: Dict[int, dict]
) -> PQStat:
    stat = PQStat()
    for gt_ann, pred_ann in pairs:
        stat += pq_compute_single_image(
            read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"])),
            gt_ann["segments_info"],
            read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"])),
            pred_ann["segments_info"],
            categories,
            image_id=gt_ann["image_id"],
        )
    return stat


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
    num_workers: int = 0,
) -> dict:
    """PQ, SQ, RQ of a prediction set against COCO panoptic ground truth (files on disk).

    Args:
        gt_json_file: COCO panoptic gt JSON (``annotations``, ``categories``).
        pred_json_file: JSON with an ``annotations`` list in the same format (one per gt image).
        gt_folder: folder of the gt PNGs; default: ``gt_json_file`` without ``.json``.
        pred_folder: folder of the predicted PNGs; default: ``pred_json_file`` without ``.json``.
        num_workers: split the images over this many worker processes (0: in this process).

    Returns:
        ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq",
        "sq", "rq"}}}``, values in [0, 1] (see :meth:`PQStat.pq_average`), plus ``"stat"``: the
        summed :class:`PQStat`.

    Raises:
        FileNotFoundError: a folder does not exist.
        KeyError: a gt image has no prediction (message names the image id), or see
            :func:`pq_compute_single_image`.
    """
    categories, pairs, gt_folder, pred_folder = match_annotations(
        gt_json_file, pred_json_file, gt_folder, pred_folder
    )
    if num_workers > 0 and len(pairs) > 1:
        chunks = [pairs[i::num_workers] for i in range(min(num_workers, len(pairs)))]
        stat = PQStat()
        # "fork" (as panopticapi's Pool) needs no importable __main__; the workers only use numpy.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context(method)) as pool:
            futures = [
                pool.submit(_pq_compute_images, chunk, gt_folder, pred_folder, categories)
                for chunk in chunks
            ]
            for future in futures:
                stat += future.result()
    else:
        stat = _pq_compute_images(pairs, gt_folder, pred_folder, categories)

    return summarize(stat, categories)


def summarize(stat, categories: Dict[int, dict]) -> dict:
    """``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": ..., "stat": stat}``
    from the summed statistics (``stat.pq_average``, see :meth:`PQStat.pq_average`); an
    average over no category is NaN."""
    results: dict = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = stat.pq_average(categories, isthing)
        except ZeroDivisionError:  # panopticapi's PQStat divides by n = 0
            results[name] = {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}
            per_class = {c: {"pq": 0.0, "sq": 0.0, "rq": 0.0} for c in categories}
        if isthing is None:
            results["per_class"] = per_class
    results["stat"] = stat
    return results


def match_annotations(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
) -> Tuple[Dict[int, dict], List[Tuple[dict, dict]], str, str]:
    """Read both JSONs and pair every gt annotation with the prediction of its image.

    Returns:
        ``(categories by id, [(gt annotation, predicted annotation)], gt_folder, pred_folder)``;
        folders default to the JSON paths without ``.json``.

    Raises:
        FileNotFoundError: a folder does not exist.
        KeyError: a gt image has no prediction (message names the image id).
    """
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = gt_folder if gt_folder is not None else os.path.splitext(gt_json_file)[0]
    pred_folder = pred_folder if pred_folder is not None else os.path.splitext(pred_json_file)[0]
    for name, folder in (("ground truth", gt_folder), ("prediction", pred_folder)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Folder {folder} with {name} segmentations does not exist.")
    categories = {c["id"]: c for c in gt_json["categories"]}
    pred_by_image = {ann["image_id"]: ann for ann in pred_json["annotations"]}
    pairs: List[Tuple[dict, dict]] = []
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in pred_by_image:
            raise KeyError(f"No prediction for the image with ID {gt_ann['image_id']}.")
        pairs.append((gt_ann, pred_by_image[gt_ann["image_id"]]))
    return categories, pairs, gt_folder, pred_folder
