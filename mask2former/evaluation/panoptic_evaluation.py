"""COCO panoptic evaluation (PQ / SQ / RQ) of model outputs, without Detectron2; panopticapi is
optional (``pq_implementation="panopticapi"``)."""
import io
import itertools
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from contextlib import ExitStack
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..utils.atomic_io import atomic_write
from mask2former.utils import comm

from .evaluator import DatasetEvaluator
from .metadata import require_field, resolve_metadata
from ..data.panoptic_format import id2rgb
from .official_pq import PQ_IMPLEMENTATIONS, pq_compute_official, pq_module_available
from .panoptic_quality import pq_compute
from .tables import create_per_category_table

__all__ = ["COCOPanopticEvaluator"]

logger = logging.getLogger(__name__)

_PARALLEL_MIN_IMAGES = 64


class COCOPanopticEvaluator(DatasetEvaluator):
    """Panoptic Quality on a COCO-panoptic-format dataset (see :mod:`.panoptic_quality`).

    Predictions are written in the COCO panoptic result format: one RGB PNG per image in
    ``<output_dir>/predictions/`` and ``<output_dir>/predictions.json`` (the gt JSON with its
    ``annotations`` replaced by the predictions, category ids in dataset ids), i.e. exactly the
    files ``panopticapi``'s ``pq_compute(gt_json, <output_dir>/predictions.json)`` reads. Without
    ``output_dir`` they go to a temporary folder that is deleted after evaluation.

    ``evaluate()`` gathers the predictions of all ranks to rank 0 and must be called on every rank.
    """

    def __init__(
        self,
        dataset_name: Optional[str] = None,
        output_dir: Optional[str] = None,
        *,
        panoptic_json: Optional[str] = None,
        panoptic_root: Optional[str] = None,
        thing_dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None,
        stuff_dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None,
        label_divisor: Optional[int] = None,
        num_workers: Optional[int] = None,
        pq_implementation: str = "mask2former",
    ):
        """
        Every keyword argument left ``None`` is read from the metadata of ``dataset_name``
        (``MetadataCatalog``) when a name is given.

        Args:
            dataset_name: registered dataset whose metadata supplies the settings below.
            output_dir: folder for ``predictions.json`` and ``predictions/*.png``.
            panoptic_json: COCO panoptic gt JSON (required).
            panoptic_root: folder of the gt PNGs (required).
            thing_dataset_id_to_contiguous_id / stuff_dataset_id_to_contiguous_id: dataset
                category id -> contiguous model class id; needed to map predicted segments that
                carry ``"isthing"`` back to dataset ids.
            label_divisor: needed only for outputs without ``segments_info`` (see :meth:`process`).
            num_workers: worker processes for the PQ computation; ``None``: ``min(8, CPUs)`` when
                at least 64 images were predicted, else 0 (in this process).
            pq_implementation: "mask2former" (:func:`.panoptic_quality.pq_compute`, the
                default: no extra dependency), "panopticapi" or "cityscapesscripts" (official
                code, see :mod:`.official_pq`; ``num_workers`` is then one per CPU). The log
                names the one that ran.

        Raises:
            ValueError: ``panoptic_json`` or ``panoptic_root`` is given neither way, or an
                unknown ``pq_implementation``.
            ImportError: an official implementation whose package is not installed.
        """
        if pq_implementation not in PQ_IMPLEMENTATIONS:
            raise ValueError(
                f"pq_implementation={pq_implementation!r}; expected one of "
                f"{sorted(PQ_IMPLEMENTATIONS)}."
            )
        if pq_implementation != "mask2former" and not pq_module_available(pq_implementation):
            raise ImportError(
                f"pq_implementation={pq_implementation!r} needs the {pq_implementation} package "
                "(see mask2former.evaluation.official_pq)."
            )
        self._pq_implementation = pq_implementation
        self._dataset_name = dataset_name
        fields = resolve_metadata(
            dataset_name,
            {
                "panoptic_json": panoptic_json,
                "panoptic_root": panoptic_root,
                "thing_dataset_id_to_contiguous_id": thing_dataset_id_to_contiguous_id,
                "stuff_dataset_id_to_contiguous_id": stuff_dataset_id_to_contiguous_id,
                "label_divisor": label_divisor,
            },
        )
        owner = type(self).__name__
        self._panoptic_json = require_field(fields, "panoptic_json", dataset_name, owner)
        self._panoptic_root = require_field(fields, "panoptic_root", dataset_name, owner)
        self._thing_dataset_id_to_contiguous_id = fields["thing_dataset_id_to_contiguous_id"] or {}
        self._stuff_dataset_id_to_contiguous_id = fields["stuff_dataset_id_to_contiguous_id"] or {}
        self._thing_contiguous_to_dataset = {
            v: k for k, v in self._thing_dataset_id_to_contiguous_id.items()
        }
        self._stuff_contiguous_to_dataset = {
            v: k for k, v in self._stuff_dataset_id_to_contiguous_id.items()
        }
        self._label_divisor = fields["label_divisor"]
        self._output_dir = output_dir
        self._num_workers = num_workers
        self._predictions: List[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def _dataset_category_id(self, segment: dict) -> dict:
        """A JSON-ready copy of ``segment`` with ``category_id`` as a dataset id, no ``isthing``."""
        segment = {k: (v.item() if hasattr(v, "item") else v) for k, v in segment.items()}
        isthing = segment.pop("isthing", None)
        if isthing is None:
            return segment
        table, name = (
            (self._thing_contiguous_to_dataset, "thing_dataset_id_to_contiguous_id")
            if isthing
            else (self._stuff_contiguous_to_dataset, "stuff_dataset_id_to_contiguous_id")
        )
        if segment["category_id"] not in table:
            raise KeyError(
                f"Predicted segment {segment} (isthing={bool(isthing)}) has contiguous "
                f"category_id {segment['category_id']}, which is not a value of {name}."
            )
        segment["category_id"] = table[segment["category_id"]]
        return segment

    def _segments_from_labels(self, panoptic_img: np.ndarray) -> Tuple[np.ndarray, List[dict]]:
        """Segments of a ``class * label_divisor + instance`` map (-1 = VOID), ids shifted by +1."""
        if self._label_divisor is None:
            raise ValueError(
                "Outputs without segments_info need 'label_divisor' (argument or metadata)."
            )
        thing_classes = set(self._thing_dataset_id_to_contiguous_id.values())
        segments = []
        for label in np.unique(panoptic_img).tolist():
            if label == -1:
                continue
            pred_class = label // self._label_divisor
            segments.append(
                {"id": label + 1, "category_id": pred_class, "isthing": pred_class in thing_classes}
            )
        return panoptic_img + 1, segments

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """
        Args:
            inputs: dataset dicts with ``"image_id"`` and ``"file_name"`` (the image path; the
                prediction PNG is named after it, extension ``.png``).
            outputs: dicts with ``"panoptic_seg": (panoptic_img, segments_info)``:
                ``panoptic_img`` int Tensor/array [H, W] at the original image size, and either
                ``segments_info`` = list of ``{"id", "category_id", "isthing"}`` (id 0 in the
                image = VOID; ``category_id`` contiguous, mapped back through the
                thing/stuff maps by ``isthing``; without ``"isthing"`` it is taken as a dataset
                id), or ``segments_info = None`` with ``panoptic_img`` holding
                ``contiguous class * label_divisor + instance`` and -1 for VOID.

        Raises:
            KeyError: a contiguous category id is not in the thing/stuff map.
            ValueError: ids do not fit the 24-bit PNG encoding, or ``label_divisor`` is needed
                and missing.
        """
        for input_dict, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            if isinstance(panoptic_img, torch.Tensor):
                panoptic_img = panoptic_img.cpu().numpy()
            panoptic_img = np.asarray(panoptic_img).astype(np.int64)
            if segments_info is None:
                panoptic_img, segments_info = self._segments_from_labels(panoptic_img)
            file_name = os.path.splitext(os.path.basename(input_dict["file_name"]))[0] + ".png"
            with io.BytesIO() as buffer:
                Image.fromarray(id2rgb(panoptic_img)).save(buffer, format="PNG")
                png_bytes = buffer.getvalue()
            image_id = input_dict["image_id"]
            self._predictions.append(
                {
                    "image_id": image_id.item() if hasattr(image_id, "item") else image_id,
                    "file_name": file_name,
                    "png_string": png_bytes,
                    "segments_info": [self._dataset_category_id(s) for s in segments_info],
                }
            )

    def _resolved_num_workers(self, num_images: int) -> int:
        if self._num_workers is not None:
            return self._num_workers
        return min(8, os.cpu_count() or 1) if num_images >= _PARALLEL_MIN_IMAGES else 0

    def _pq_compute(self, pred_json_file: str, pred_dir: str, num_images: int) -> dict:
        if self._pq_implementation != "mask2former":
            logger.info(
                "Panoptic quality computed by %s (official code)",
                PQ_IMPLEMENTATIONS[self._pq_implementation],
            )
            return pq_compute_official(
                self._pq_implementation,
                self._panoptic_json,
                pred_json_file,
                self._panoptic_root,
                pred_dir,
            )
        logger.info(
            "Panoptic quality computed by mask2former.evaluation.panoptic_quality%s",
            " (panopticapi is installed too: TEST.PQ_IMPLEMENTATION panopticapi runs the "
            "official code)" if pq_module_available("panopticapi") else "",
        )
        return pq_compute(
            self._panoptic_json,
            pred_json_file,
            gt_folder=self._panoptic_root,
            pred_folder=pred_dir,
            num_workers=self._resolved_num_workers(num_images),
        )

    def evaluate(self) -> Optional["OrderedDict[str, dict]"]:
        """
        Returns:
            on rank 0: ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st",
            "SQ_st", "RQ_st", "PQ-<name>", "SQ-<name>", "RQ-<name>", ...}}`` in percent
            (per-category values are NaN for categories with no gt and no predicted segment);
            ``None`` on other ranks.
        """
        comm.synchronize()
        predictions = list(itertools.chain.from_iterable(comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None

        with open(self._panoptic_json) as f:
            gt_json = json.load(f)
        with ExitStack() as stack:
            output_dir = self._output_dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="panoptic_eval")
            )
            pred_json_file = os.path.join(output_dir, "predictions.json")
            pred_dir = os.path.join(output_dir, "predictions")
            os.makedirs(pred_dir, exist_ok=True)
            logger.info("Writing %d panoptic predictions to %s", len(predictions), pred_dir)
            annotations = []
            for prediction in predictions:
                with atomic_write(os.path.join(pred_dir, prediction["file_name"]), "wb") as f:
                    f.write(prediction["png_string"])
                annotations.append({k: v for k, v in prediction.items() if k != "png_string"})
            with atomic_write(pred_json_file) as f:
                json.dump(dict(gt_json, annotations=annotations), f)

            pq_res = self._pq_compute(pred_json_file, pred_dir, len(predictions))

        results: Dict[str, float] = {}
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                results[metric.upper() + suffix] = 100 * pq_res[name][metric]
        names = {c["id"]: c["name"] for c in gt_json["categories"]}
        stat = pq_res["stat"]
        for category_id, values in pq_res["per_class"].items():
            s = stat.pq_per_cat.get(category_id)
            counted = s is not None and s.tp + s.fp + s.fn > 0
            for metric in ("pq", "sq", "rq"):
                key = f"{metric.upper()}-{names[category_id]}"
                results[key] = 100 * values[metric] if counted else math.nan
        _log_panoptic_results(pq_res, names)
        return OrderedDict({"panoptic_seg": results})


def _log_panoptic_results(pq_res: dict, names: Dict[int, str]) -> None:
    summary = create_per_category_table(
        [
            (name, *(100 * pq_res[name][k] for k in ("pq", "sq", "rq")), pq_res[name]["n"])
            for name in ("All", "Things", "Stuff")
        ],
        headers=("", "PQ", "SQ", "RQ", "#categories"),
        max_columns=5,
    )
    logger.info("Panoptic Evaluation Results:\n" + summary)
    stat = pq_res["stat"]
    rows = [
        (names[cid], *(100 * v[k] for k in ("pq", "sq", "rq")))
        for cid, v in pq_res["per_class"].items()
        if cid in stat.pq_per_cat and stat[cid].tp + stat[cid].fp + stat[cid].fn > 0
    ]
    if rows:
        table = create_per_category_table(rows, headers=("category", "PQ", "SQ", "RQ"), max_columns=8)
        logger.info("Per-category panoptic results:\n" + table)
