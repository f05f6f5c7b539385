"""YouTube-VIS evaluation (Yang et al., "Video Instance Segmentation", ICCV 2019): COCO-style AP and
AR of mask tubes, with the spatio-temporal mask IoU

    IoU(d, g) = sum_t |d_t & g_t| / sum_t |d_t | g_t|

over the frames of a video (a frame where one of the two is absent adds its area to the union
only). Computed by pycocotools' ``COCOeval`` with videos as its images and the IoU replaced; the
thresholds (IoU 0.50:0.05:0.95, 101 recall points, 1/10/100 detections, area ranges on the mean
per-frame area over the frames where the instance is visible) are COCO's, as in the official
YouTube-VIS evaluation code.
"""
import contextlib
import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..evaluation.evaluator import DatasetEvaluator
from ..evaluation.metadata import resolve_metadata
from ..evaluation.tables import create_small_table
from ..utils import comm

__all__ = [
    "YTVISEvaluator",
    "YTVISeval",
    "build_video_evaluator",
    "evaluate_ytvis",
    "instances_to_ytvis_gt",
    "load_ytvis_ground_truth",
    "mask_to_rle",
    "video_output_to_ytvis_json",
]

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def mask_to_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE (``counts`` as ASCII text, JSON-serialisable) of a bool [H, W] mask."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _mean_visible_area(segmentations: Sequence[Optional[dict]]) -> float:
    areas = [float(mask_util.area(s)) for s in segmentations if s is not None]
    areas = [a for a in areas if a > 0]
    return float(np.mean(areas)) if areas else 0.0


def video_output_to_ytvis_json(video_id: int, output: Dict, contiguous_to_dataset_id: Optional[Dict[int, int]]
                               ) -> List[Dict]:
    """YouTube-VIS results of one video: one ``{"video_id", "score", "category_id" (dataset id),
    "segmentations": T compressed RLEs (ASCII counts)}`` per predicted tube.

    Args:
        output: ``VideoMaskFormer``'s output (``pred_scores``, ``pred_labels`` contiguous ids,
            ``pred_masks``: bool [T, H, W] each).
        contiguous_to_dataset_id: label -> dataset category id; None keeps the labels.
    """
    results = []
    for score, label, masks in zip(output["pred_scores"], output["pred_labels"], output["pred_masks"]):
        masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        category = contiguous_to_dataset_id[int(label)] if contiguous_to_dataset_id else int(label)
        results.append({"video_id": int(video_id), "score": float(score), "category_id": int(category),
                        "segmentations": [mask_to_rle(m) for m in masks]})
    return results


def instances_to_ytvis_gt(video_id: int, frames: Sequence, contiguous_to_dataset_id: Optional[Dict[int, int]]
                          ) -> List[Dict]:
    """Ground-truth annotations of one clip from a mapper's per-frame ``Instances`` (``gt_ids``,
    ``gt_classes``, ``gt_masks`` at the evaluation resolution): one ``{"video_id", "category_id",
    "iscrowd": 0, "segmentations"}`` per instance visible in some frame, None on frames where its
    id is -1."""
    annotations = []
    ids = torch.stack([inst.gt_ids for inst in frames], dim=1)
    for g in range(ids.shape[0]):
        if not bool((ids[g] != -1).any()):
            continue
        segms = [
            mask_to_rle(inst.gt_masks[g].cpu().numpy()) if int(inst.gt_ids[g]) != -1 else None for inst in frames
        ]
        label = int(frames[0].gt_classes[g])
        category = contiguous_to_dataset_id[label] if contiguous_to_dataset_id else label
        annotations.append({"video_id": int(video_id), "category_id": int(category), "iscrowd": 0,
                            "segmentations": segms})
    return annotations


class YTVISeval(COCOeval):
    """``COCOeval`` whose images are videos and whose IoU is the spatio-temporal mask IoU of the
    annotations' per-frame ``segmentations`` (compressed RLEs, None where absent). Build it with
    :func:`evaluate_ytvis`. ``iouType`` is "bbox" only so that ``COCOeval`` does not convert the
    (absent) ``segmentation`` fields; its parameters are the same as for "segm"."""

    def __init__(self, coco_gt: COCO, coco_dt: COCO):
        super().__init__(coco_gt, coco_dt, "bbox")

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        ious = np.zeros((len(dt), len(gt)))
        for row, col in np.ndindex(ious.shape):
            ious[row, col] = _tube_iou(dt[row]["segmentations"], gt[col]["segmentations"])
        return ious


def _tube_iou(pred_rles: Sequence[Optional[dict]], gt_rles: Sequence[Optional[dict]]) -> float:
    """Spatio-temporal IoU of two mask tubes given as per-frame RLEs (None: empty in that frame):
    sum over frames of |intersection| / sum over frames of |union|; 0 when both are empty."""
    inter = union = 0.0
    for pred, gt in zip(pred_rles, gt_rles):
        present = [rle for rle in (pred, gt) if rle is not None]
        if len(present) == 2:
            inter += float(mask_util.area(mask_util.merge(present, intersect=True)))
            union += float(mask_util.area(mask_util.merge(present, intersect=False)))
        elif present:
            union += float(mask_util.area(present[0]))
    return inter / union if union > 0 else 0.0


def _api(videos: Sequence[Dict], annotations: Sequence[Dict], categories: Sequence[Dict]) -> COCO:
    anns = []
    for i, a in enumerate(annotations, start=1):
        anns.append(dict(a, id=i, image_id=a["video_id"], area=_mean_visible_area(a["segmentations"]),
                         iscrowd=a.get("iscrowd", 0)))
    api = COCO()
    api.dataset = {"images": [dict(v) for v in videos], "annotations": anns, "categories": list(categories)}
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _as_rle(segm, height: int, width: int) -> Optional[dict]:
    if not segm:
        return None
    if isinstance(segm, list):  # polygons
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return mask_util.frPyObjects(segm, height, width)
    return segm


def load_ytvis_ground_truth(json_file: str):
    """(videos, annotations, categories) of a YouTube-VIS json, segmentations as compressed RLEs.

    Raises:
        FileNotFoundError: missing file. ValueError: not a YouTube-VIS json.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"YouTube-VIS ground truth not found: '{json_file}'")
    with open(json_file) as f:
        data = json.load(f)
    if "videos" not in data:
        raise ValueError(f"{json_file}: not a YouTube-VIS json (no 'videos' list)")
    size = {v["id"]: (v["height"], v["width"]) for v in data["videos"]}
    annotations = [
        {"video_id": a["video_id"], "category_id": a["category_id"], "iscrowd": a.get("iscrowd", 0),
         "segmentations": [_as_rle(s, *size[a["video_id"]]) for s in a["segmentations"]]}
        for a in data.get("annotations", [])
    ]
    return data["videos"], annotations, data.get("categories", [])


def evaluate_ytvis(videos: Sequence[Dict], gt_annotations: Sequence[Dict], results: Sequence[Dict],
                   categories: Sequence[Dict], max_dets: Sequence[int] = (1, 10, 100)) -> YTVISeval:
    """Run :class:`YTVISeval` (evaluate, accumulate, summarize).

    Args:
        videos: ``{"id", "height", "width"}`` per video.
        gt_annotations: ``{"video_id", "category_id", "iscrowd", "segmentations"}`` (RLE or None per frame).
        results: ``{"video_id", "category_id", "score", "segmentations"}``.
        categories: ``{"id", "name"}`` of every category (AP averages those with ground truth).
        max_dets: the three detection limits (AP uses the last).
    """
    coco_gt = _api(videos, gt_annotations, categories)
    coco_dt = _api(videos, results, categories)
    evaluator = YTVISeval(coco_gt, coco_dt)
    evaluator.params.maxDets = list(max_dets)
    with contextlib.redirect_stdout(io.StringIO()) as summary:
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.info(summary.getvalue())
    return evaluator


class YTVISEvaluator(DatasetEvaluator):
    """YouTube-VIS AP/AR (in percent) of :class:`~mask2former.video.VideoMaskFormer` outputs.

    Ground truth comes from ``json_file`` (the dataset's metadata by default) or, when there is none,
    from the ``instances`` that the test mapper put in each input (COCO pseudo-clips). Predictions
    are written to ``<output_dir>/results.json`` (the YouTube-VIS submission format); when the
    ground truth has no annotations (the official val/test splits) only that file is produced.
    """

    def __init__(self, dataset_name: Optional[str] = None, distributed: bool = True,
                 output_dir: Optional[str] = None, *, json_file: Optional[str] = None,
                 thing_dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None,
                 thing_classes: Optional[Sequence[str]] = None, gt_from_inputs: Optional[bool] = None):
        """
        Args:
            dataset_name: registered dataset whose metadata supplies the settings below.
            distributed: gather from all ranks and evaluate on rank 0.
            output_dir: where ``results.json`` is written (atomically).
            json_file: YouTube-VIS ground-truth json.
            thing_dataset_id_to_contiguous_id: dataset category id -> label; None: labels are ids.
            thing_classes: names by label (for the category list when there is no json).
            gt_from_inputs: take the ground truth from the inputs' ``instances``; default: when
                no ``json_file`` is known.
        """
        fields = resolve_metadata(dataset_name, {
            "json_file": json_file, "thing_dataset_id_to_contiguous_id": thing_dataset_id_to_contiguous_id,
            "thing_classes": thing_classes,
        })
        self._json_file = None if gt_from_inputs else fields["json_file"]
        mapping = fields["thing_dataset_id_to_contiguous_id"]
        self._to_dataset_id = {v: k for k, v in mapping.items()} if mapping else None
        self._thing_classes = fields["thing_classes"]
        self._distributed = distributed
        self._output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        self._results: List[Dict] = []
        self._gt: List[Dict] = []
        self._videos: List[Dict] = []

    def process(self, inputs: List[Dict], outputs) -> None:
        """
        Args:
            inputs: one clip dict (``video_id``, and ``instances`` when the ground truth comes
                from the inputs); a list of one, as given to the model.
            outputs: the model's output dict for it (or a list of one).
        """
        outputs = [outputs] if isinstance(outputs, dict) else outputs
        for video, output in zip(inputs, outputs):
            video_id = int(video["video_id"])
            self._results.extend(video_output_to_ytvis_json(video_id, output, self._to_dataset_id))
            if self._json_file is None:
                height, width = output["image_size"]
                self._videos.append({"id": video_id, "height": int(height), "width": int(width)})
                self._gt.extend(instances_to_ytvis_gt(video_id, video["instances"], self._to_dataset_id))

    def _categories(self) -> List[Dict]:
        labels = range(len(self._thing_classes or []))
        names = self._thing_classes or []
        if self._to_dataset_id:
            return [
                {"id": self._to_dataset_id[i], "name": names[i] if i < len(names) else str(i)} for i in labels
            ]
        return [{"id": i, "name": n} for i, n in enumerate(names)]

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """``{"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}}`` in percent (NaN where nothing is evaluated) on the main rank; ``{}`` without
        ground-truth annotations; None on other ranks."""
        results, gt, videos = self._results, self._gt, self._videos
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather((results, gt, videos))
            if not comm.is_main_process():
                return None
            results, gt, videos = (list(itertools.chain.from_iterable(x)) for x in zip(*gathered))
        if self._output_dir:
            self._save(results)
        if self._json_file is not None:
            videos, gt, categories = load_ytvis_ground_truth(self._json_file)
        else:
            categories = self._categories()
            if not categories:
                used = sorted({a["category_id"] for a in gt + results})
                categories = [{"id": c, "name": str(c)} for c in used]
        if not gt:
            logger.warning("[YTVISEvaluator] no ground-truth annotations: results saved for submission only")
            return OrderedDict()
        evaluator = evaluate_ytvis(videos, gt, results, categories)
        metrics = {m: float(s * 100) if s >= 0 else float("nan") for m, s in zip(METRICS, evaluator.stats)}
        logger.info("YouTube-VIS evaluation:\n" + create_small_table(metrics))
        return OrderedDict(segm=metrics)

    def _save(self, results: List[Dict]) -> None:
        os.makedirs(self._output_dir, exist_ok=True)
        path = os.path.join(self._output_dir, "results.json")
        fd, tmp = tempfile.mkstemp(dir=self._output_dir, suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(results, f)
        os.replace(tmp, path)
        logger.info("Saved %d YouTube-VIS results to %s", len(results), path)


def build_video_evaluator(dataset_name: str, output_dir: Optional[str] = None) -> YTVISEvaluator:
    """The evaluator of a video model on ``dataset_name``: YouTube-VIS json ground truth for
    ``evaluator_type == "ytvis"`` datasets, otherwise (COCO pseudo-clips) the ground truth that the
    clip mapper puts in the inputs."""
    from ..data.catalog import MetadataCatalog

    ytvis = MetadataCatalog.get(dataset_name).get("evaluator_type", None) == "ytvis"
    return YTVISEvaluator(dataset_name, output_dir=output_dir, gt_from_inputs=not ytvis)
