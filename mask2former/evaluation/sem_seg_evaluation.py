"""Semantic segmentation evaluation: mIoU, fwIoU, mACC, pACC and per-class IoU / accuracy."""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from ..structures import semantic_labels
from ..utils.atomic_io import atomic_write
from mask2former.utils import comm

from .evaluator import DatasetEvaluator
from .metadata import dataset_dicts, require_field, resolve_metadata
from .tables import create_per_category_table, create_small_table

__all__ = ["SemSegEvaluator", "load_image_into_numpy_array"]

logger = logging.getLogger(__name__)


def load_image_into_numpy_array(filename: str, dtype=None) -> np.ndarray:
    """The pixels of an image file as an array ([H, W] for a single-channel label map)."""
    with Image.open(filename) as image:
        return np.asarray(image, dtype=dtype)


class SemSegEvaluator(DatasetEvaluator):
    """Semantic segmentation metrics from a confusion matrix accumulated over the dataset.

    With K classes, ``conf[p, g]`` ((K+1) x (K+1), int64) counts pixels predicted ``p`` with gt
    ``g``; gt pixels equal to ``ignore_label`` are counted in the extra column K and left out of
    every metric. Per class c (over pixels with valid gt): ``ACC_c = TP_c / GT_c``,
    ``IoU_c = TP_c / (GT_c + PRED_c - TP_c)``, NaN when class c never occurs in the gt.
    ``mIoU`` / ``mACC``: means over classes present in the gt; ``fwIoU``: IoU weighted by gt
    frequency; ``pACC``: correctly labelled pixels / valid gt pixels (COCO-stuff definitions,
    as in Detectron2's SemSegEvaluator).
    """

    def __init__(
        self,
        dataset_name: Optional[str] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        sem_seg_loading_fn: Callable[..., np.ndarray] = load_image_into_numpy_array,
        stuff_classes: Optional[Sequence[str]] = None,
        ignore_label: Optional[int] = None,
        input_file_to_gt_file: Optional[Dict[str, str]] = None,
        stuff_dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None,
    ):
        """
        Keyword arguments left ``None`` are read from the metadata of ``dataset_name``
        (``MetadataCatalog``) when a name is given.

        Args:
            dataset_name: registered dataset supplying the settings below; when
                ``input_file_to_gt_file`` is not given, its dataset dicts (``DatasetCatalog``)
                supply ``file_name -> sem_seg_file_name``.
            distributed: gather the confusion matrices of all ranks and evaluate on rank 0.
            output_dir: folder for ``sem_seg_predictions.json`` (COCO-stuff result format, RLE
                per predicted class and image) and ``sem_seg_evaluation.pth`` (the results).
            sem_seg_loading_fn: ``fn(path, dtype=int) -> [H, W]`` gt label map reader.
            stuff_classes: class names by contiguous id; K = their number (required).
            ignore_label: gt value excluded from evaluation (default 255).
            input_file_to_gt_file: image path (input ``"file_name"``) -> gt label map path.
            stuff_dataset_id_to_contiguous_id: dataset id -> contiguous id, used to write
                dataset ids into ``sem_seg_predictions.json`` (default: contiguous ids).

        Raises:
            ValueError: ``stuff_classes`` is given neither way.
        """
        given = dict(
            stuff_classes=stuff_classes,
            ignore_label=ignore_label,
            stuff_dataset_id_to_contiguous_id=stuff_dataset_id_to_contiguous_id,
        )
        fields = resolve_metadata(dataset_name, given)
        self._class_names = list(
            require_field(fields, "stuff_classes", dataset_name, type(self).__name__)
        )
        self._num_classes = len(self._class_names)
        self._ignore_label = 255 if fields["ignore_label"] is None else fields["ignore_label"]
        mapping = fields["stuff_dataset_id_to_contiguous_id"]
        self._contiguous_to_dataset_id = (
            {v: k for k, v in mapping.items()} if mapping is not None else None
        )
        if input_file_to_gt_file is None and dataset_name is not None:
            input_file_to_gt_file = {
                d["file_name"]: d["sem_seg_file_name"] for d in dataset_dicts(dataset_name)
            }
        self._input_file_to_gt_file = input_file_to_gt_file or {}
        self._sem_seg_loading_fn = sem_seg_loading_fn
        self._distributed, self._output_dir = distributed, output_dir
        self.reset()

    def reset(self) -> None:
        size = self._num_classes + 1
        self._conf_matrix = np.zeros((size, size), dtype=np.int64)
        self._predictions: List[dict] = []

    def _gt_file(self, input_dict: dict) -> str:
        if "sem_seg_file_name" in input_dict:
            return input_dict["sem_seg_file_name"]
        try:
            return self._input_file_to_gt_file[input_dict["file_name"]]
        except KeyError as e:
            raise KeyError(
                f"No gt label map for input '{input_dict.get('file_name')}': the input has no "
                "'sem_seg_file_name' and input_file_to_gt_file does not list it."
            ) from e

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """
        Args:
            inputs: dataset dicts with ``"file_name"`` (looked up in ``input_file_to_gt_file``)
                or ``"sem_seg_file_name"`` (the gt label map itself).
            outputs: dicts with ``"sem_seg"``: float Tensor [K, H, W] of per-class scores
                (argmax taken) or integer Tensor/array [H, W] of class ids (the compact output
                format), at the gt size.

        Raises:
            ValueError: prediction and gt differ in shape, or hold labels outside
                [0, K) (gt: outside [0, K) and not ``ignore_label``).
        """
        k = self._num_classes
        for input_dict, output in zip(inputs, outputs):
            pred = _label_map(output["sem_seg"])
            gt_file = self._gt_file(input_dict)
            gt = np.asarray(self._sem_seg_loading_fn(gt_file, dtype=int), dtype=np.int64)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"Prediction of shape {pred.shape} for gt {gt_file} of shape {gt.shape}."
                )
            gt = np.where(gt == self._ignore_label, k, gt)  # ignored pixels: extra row/column K
            if pred.size and (pred.min() < 0 or pred.max() >= k):
                raise ValueError(f"Predicted labels must lie in [0, {k}), got {np.unique(pred)}.")
            if gt.size and (gt.min() < 0 or gt.max() > k):
                raise ValueError(
                    f"gt {gt_file} has labels outside [0, {k}) that are not the ignore label "
                    f"{self._ignore_label}."
                )
            # Cell (pred, gt) of the (K+1) x (K+1) confusion matrix, counted by one bincount.
            cells = pred.ravel() * (k + 1) + gt.ravel()
            self._conf_matrix += np.bincount(cells, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
            if self._output_dir:
                self._predictions.extend(self._encode_json_sem_seg(pred, input_dict["file_name"]))

    def _encode_json_sem_seg(self, sem_seg: np.ndarray, file_name: str) -> List[dict]:
        """COCO-stuff result dicts: one RLE ``segmentation`` per predicted class."""
        results = []
        for label in np.unique(sem_seg).tolist():
            category_id = (
                self._contiguous_to_dataset_id[label]
                if self._contiguous_to_dataset_id is not None
                else label
            )
            mask = np.asfortranarray((sem_seg == label)[:, :, None].astype(np.uint8))
            encoded = mask_util.encode(mask)[0]
            rle = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
            results.append({"file_name": file_name, "category_id": category_id, "segmentation": rle})
        return results

    def evaluate(self) -> Optional["OrderedDict[str, dict]"]:
        """
        Returns:
            on the evaluating rank: ``{"sem_seg": {"mIoU", "fwIoU", "IoU-<class>"..., "mACC",
            "pACC", "ACC-<class>"...}}`` in percent; ``None`` on other ranks when distributed.
        """
        if self._distributed:
            comm.synchronize()
            conf_matrices = comm.all_gather(self._conf_matrix)
            predictions = comm.all_gather(self._predictions)
            if not comm.is_main_process():
                return None
            conf_matrix = np.sum(conf_matrices, axis=0)
            predictions = list(itertools.chain.from_iterable(predictions))
        else:
            conf_matrix, predictions = self._conf_matrix, self._predictions

        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with atomic_write(os.path.join(self._output_dir, "sem_seg_predictions.json")) as f:
                json.dump(predictions, f)

        k = self._num_classes
        tp = conf_matrix.diagonal()[:k].astype(float)
        pos_gt = conf_matrix[:k, :k].sum(axis=0).astype(float)
        pos_pred = conf_matrix[:k, :k].sum(axis=1).astype(float)
        union = pos_pred + pos_gt - tp
        acc_valid = pos_gt > 0
        iou_valid = acc_valid & (union > 0)
        acc = np.divide(tp, pos_gt, out=np.full(k, np.nan), where=acc_valid)
        iou = np.divide(tp, union, out=np.full(k, np.nan), where=iou_valid)
        total_gt = pos_gt.sum()
        nan = float("nan")

        res: Dict[str, float] = {
            "mIoU": 100 * float(np.mean(iou[iou_valid])) if iou_valid.any() else nan,
            "fwIoU": (
                100 * float(np.sum(iou[iou_valid] * pos_gt[iou_valid]) / total_gt) if total_gt else nan
            ),
        }
        res.update({f"IoU-{name}": 100 * float(iou[i]) for i, name in enumerate(self._class_names)})
        res["mACC"] = 100 * float(np.mean(acc[acc_valid])) if acc_valid.any() else nan
        res["pACC"] = 100 * float(tp.sum() / total_gt) if total_gt else nan
        res.update({f"ACC-{name}": 100 * float(acc[i]) for i, name in enumerate(self._class_names)})

        if self._output_dir:
            with atomic_write(os.path.join(self._output_dir, "sem_seg_evaluation.pth"), "wb") as f:
                torch.save(res, f)
        logger.info(
            "Semantic segmentation results:\n"
            + create_small_table({m: res[m] for m in ("mIoU", "fwIoU", "mACC", "pACC")})
        )
        rows = [
            (name, 100 * iou[i], 100 * acc[i])
            for i, name in enumerate(self._class_names)
            if acc_valid[i]
        ]
        if rows:
            logger.info(
                "Per-class results:\n"
                + create_per_category_table(rows, headers=("class", "IoU", "ACC"), max_columns=6)
            )
        return OrderedDict({"sem_seg": res})


def _label_map(sem_seg) -> np.ndarray:
    """int64 [H, W] class ids from scores [K, H, W] (argmax) or a label map (Tensor or array)."""
    if isinstance(sem_seg, torch.Tensor):
        return semantic_labels(sem_seg).cpu().numpy().astype(np.int64)
    return np.asarray(sem_seg).astype(np.int64)
