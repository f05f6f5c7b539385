"""COCO instance segmentation evaluation (mask AP, and box AP of the masks' boxes) via pycocotools."""
import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..structures import instance_rles
from ..utils.atomic_io import atomic_write
from mask2former.utils import comm

from .evaluator import DatasetEvaluator
from .metadata import require_field, resolve_metadata
from .tables import create_per_category_table, create_small_table

__all__ = [
    "COCOEvaluator",
    "InstanceSegEvaluator",
    "instances_to_coco_json",
    "evaluate_predictions_on_coco",
]

logger = logging.getLogger(__name__)

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_TASKS = ("bbox", "segm")


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def instances_to_coco_json(
    instances, image_id: int, contiguous_to_dataset_id: Optional[Dict[int, int]] = None
) -> List[dict]:
    """COCO result dicts (``image_id``, ``category_id``, ``score``, ``segmentation``, ``bbox``).

    Args:
        instances: object with ``pred_masks`` [N, H, W] (bool, or float/uint8 binarised at
            > 0.5) or, compact outputs, ``pred_masks_rle`` (N COCO RLE dicts), ``scores`` [N]
            float and ``pred_classes`` [N] int (contiguous class ids); tensors or arrays.
        image_id: COCO image id.
        contiguous_to_dataset_id: contiguous class id -> dataset category id (``None``: the
            classes are already dataset ids).

    Returns:
        one dict per instance; ``segmentation`` is compressed RLE (``counts`` as str), ``bbox``
        the tight XYWH box of the mask in pixels ([0, 0, 0, 0] for an empty mask).

    Raises:
        KeyError: a class is not in ``contiguous_to_dataset_id``.
        ValueError: the fields disagree in length or ``pred_masks`` is not 3-D.
    """
    scores = _to_numpy(instances.scores).reshape(-1)
    classes = _to_numpy(instances.pred_classes).reshape(-1)
    compact = getattr(instances, "pred_masks_rle", None)
    masks = compact if compact is not None else _to_numpy(instances.pred_masks)
    if (compact is None and masks.ndim != 3) or not len(masks) == len(scores) == len(classes):
        raise ValueError(
            f"Expected pred_masks [N, H, W] or N pred_masks_rle, scores [N], pred_classes [N]; got "
            f"{len(masks)} masks, shapes {scores.shape}, {classes.shape}."
        )
    if len(masks) == 0:
        return []
    rles = instance_rles(instances)
    boxes = mask_util.toBbox(rles).tolist()
    results = []
    for rle, box, score, category in zip(rles, boxes, scores.tolist(), classes.tolist()):
        if contiguous_to_dataset_id is not None:
            if category not in contiguous_to_dataset_id:
                raise KeyError(
                    f"A prediction has class {category}, but the dataset only has contiguous "
                    f"class ids {sorted(contiguous_to_dataset_id)}."
                )
            category = contiguous_to_dataset_id[category]
        results.append(
            {
                "image_id": image_id,
                "category_id": int(category),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("utf-8")},
                "bbox": box,
                "score": float(score),
            }
        )
    return results


def evaluate_predictions_on_coco(
    coco_gt: COCO,
    coco_results: List[dict],
    iou_type: str,
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Sequence[int] = (1, 10, 100),
) -> COCOeval:
    """Run pycocotools' COCOeval (evaluate, accumulate, summarize) on ``coco_results``.

    For ``segm`` the ``bbox`` field is dropped first, so that pycocotools takes the mask area
    (not the box area) as the detection's area for the small/medium/large ranges.

    Args:
        coco_gt: ground truth.
        coco_results: non-empty list of COCO result dicts.
        iou_type: "bbox" or "segm".
        img_ids: evaluate on these images only (default: all gt images).
        max_dets_per_image: COCOeval ``params.maxDets`` (three limits; AP uses the last).
    """
    if iou_type == "segm":
        coco_results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
    coco_dt = coco_gt.loadRes(copy.deepcopy(coco_results))
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.maxDets = list(max_dets_per_image)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class COCOEvaluator(DatasetEvaluator):
    """COCO AP / AP50 / AP75 / APs / APm / APl of instance masks ("segm") and of their boxes
    ("bbox"), computed by pycocotools' official ``COCOeval``; also per-category AP.

    Boxes are the tight boxes of the predicted masks (Mask2Former's ``pred_boxes`` are
    placeholders). Predictions are saved in the COCO result format as
    ``<output_dir>/coco_instances_results.json``. Metrics are in percent; NaN where COCOeval
    gives -1 (nothing to evaluate).
    """

    def __init__(
        self,
        dataset_name: Optional[str] = None,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        json_file: Optional[str] = None,
        thing_dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None,
        thing_classes: Optional[Sequence[str]] = None,
    ):
        """
        Keyword arguments left ``None`` are read from the metadata of ``dataset_name``
        (``MetadataCatalog``) when a name is given.

        Args:
            dataset_name: registered dataset whose metadata supplies the settings below.
            tasks: subset of ("bbox", "segm"); default both.
            distributed: gather predictions from all ranks and evaluate on rank 0; otherwise
                evaluate this rank's predictions only.
            output_dir: folder for ``coco_instances_results.json``.
            max_dets_per_image: detections per image used for AP (default 100).
            json_file: COCO instances gt JSON (required).
            thing_dataset_id_to_contiguous_id: dataset category id -> contiguous class id;
                ``None`` (also in metadata): predicted classes are dataset ids.
            thing_classes: class names by contiguous id, for per-category AP (optional).

        Raises:
            ValueError: unknown task, or ``json_file`` given neither way.
        """
        tasks = tuple(tasks) if tasks is not None else _TASKS
        unknown = set(tasks) - set(_TASKS)
        if unknown:
            raise ValueError(f"Unsupported tasks {sorted(unknown)}; supported: {_TASKS}.")
        given = dict(
            json_file=json_file,
            thing_classes=thing_classes,
            thing_dataset_id_to_contiguous_id=thing_dataset_id_to_contiguous_id,
        )
        fields = resolve_metadata(dataset_name, given)
        self._json_file = require_field(fields, "json_file", dataset_name, type(self).__name__)
        mapping = fields["thing_dataset_id_to_contiguous_id"]
        self._contiguous_to_dataset_id = (
            {v: k for k, v in mapping.items()} if mapping is not None else None
        )
        self._thing_classes = fields["thing_classes"]
        self._tasks = tasks
        self._distributed, self._output_dir = distributed, output_dir
        self._max_dets_per_image = (1, 10, 100 if max_dets_per_image is None else max_dets_per_image)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
            self._coco_api = COCO(self._json_file)
        self._predictions: List[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """
        Args:
            inputs: dataset dicts with ``"image_id"``.
            outputs: dicts with ``"instances"``: an object with ``pred_masks`` [N, H, W] at the
                original image size, ``scores`` [N], ``pred_classes`` [N] (contiguous ids); see
                :func:`instances_to_coco_json`. Outputs without ``"instances"`` are skipped.
        """
        for input_dict, output in zip(inputs, outputs):
            if "instances" not in output:
                continue
            image_id = input_dict["image_id"]
            image_id = int(image_id.item() if hasattr(image_id, "item") else image_id)
            self._predictions.extend(
                instances_to_coco_json(output["instances"], image_id, self._contiguous_to_dataset_id)
            )

    def evaluate(self, img_ids: Optional[Sequence[int]] = None) -> Optional["OrderedDict[str, dict]"]:
        """
        Args:
            img_ids: evaluate on these image ids only (default: all images of the gt JSON).

        Returns:
            on the evaluating rank: ``{"bbox": {...}, "segm": {...}}`` with ``"AP", "AP50",
            "AP75", "APs", "APm", "APl"`` and ``"AP-<class name>"`` (when class names are
            known), in percent; ``{}`` when there are no predictions; ``None`` on other ranks.
        """
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(predictions)
            if comm.get_rank() != 0:
                return None
            predictions = list(itertools.chain.from_iterable(gathered))

        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            results_json = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Writing %d COCO-format predictions to %s", len(predictions), results_json)
            with atomic_write(results_json) as f:
                json.dump(predictions, f)
        if not predictions:
            logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return OrderedDict()

        results: "OrderedDict[str, dict]" = OrderedDict()
        for task in sorted(self._tasks):
            coco_eval = evaluate_predictions_on_coco(
                self._coco_api, predictions, task, img_ids, self._max_dets_per_image
            )
            results[task] = self._derive_results(coco_eval, task)
        return results

    def _derive_results(self, coco_eval: COCOeval, task: str) -> Dict[str, float]:
        results = {
            metric: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
            for i, metric in enumerate(_METRICS)
        }
        logger.info(f"Evaluation results for {task}:\n" + create_small_table(results))
        if not self._thing_classes or len(self._thing_classes) <= 1:
            return results
        # precision: [IoU thresholds, recall thresholds, categories, area ranges, max dets]
        precision_table = coco_eval.eval["precision"]
        category_ids = coco_eval.params.catIds
        if self._contiguous_to_dataset_id is not None:
            name_of = {
                self._contiguous_to_dataset_id[i]: name
                for i, name in enumerate(self._thing_classes)
                if i in self._contiguous_to_dataset_id
            }
        else:
            name_of = {c["id"]: c["name"] for c in self._coco_api.loadCats(category_ids)}
        per_category = []
        for index, category_id in enumerate(category_ids):
            if category_id not in name_of:
                continue
            # All IoU thresholds and recall levels, area "all", the largest detection limit;
            # -1 marks cells without ground truth.
            cells = precision_table[:, :, index, 0, -1]
            valid = cells[cells > -1]
            ap = float(np.mean(valid) * 100) if valid.size else float("nan")
            per_category.append((name_of[category_id], ap))
        logger.info(
            f"Per-category {task} AP:\n"
            + create_per_category_table(per_category, headers=("category", "AP"))
        )
        results.update({f"AP-{name}": ap for name, ap in per_category})
        return results


InstanceSegEvaluator = COCOEvaluator
"""Name used by the original Mask2Former code for the same evaluator (non-contiguous thing ids are
supported by :class:`COCOEvaluator` itself)."""
