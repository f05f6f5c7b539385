"""Cityscapes' official evaluation (``cityscapesscripts``, optional: ``pip install cityscapesscripts``)
of semantic and instance outputs; panoptic outputs go through
:class:`~.panoptic_evaluation.COCOPanopticEvaluator` with ``pq_implementation="cityscapesscripts"``.

Both evaluators write the prediction files the scripts read into one temporary folder (shared
by the ranks of one machine), run the scripts with their module-level ``args`` pointed at that
folder (nothing is written elsewhere: the scripts' result JSON is off, their ground-truth
instance cache goes to the folder) and delete it. Ground truth is every
``<gt_dir>/<city>/*_gtFine_labelIds.png`` (semantic) or ``*_gtFine_instanceIds.png``
(instance), label ids of ``cityscapesscripts.helpers.labels``; every such image needs a
prediction. Images are matched by the Cityscapes file stem ``<city>_<seq>_<frame>``.

cityscapesscripts 2.3 still calls ``numpy.in1d``, which numpy 2.4 removed; while the scripts
run (only then), a missing ``numpy.in1d`` is provided as its documented equivalent
``numpy.isin`` on the flattened input.
"""
import contextlib
import glob
import io
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..structures import instance_masks, semantic_labels
from ..utils import comm
from .evaluator import DatasetEvaluator
from .metadata import require_field, resolve_metadata

__all__ = ["CityscapesSemSegEvaluator", "CityscapesInstanceEvaluator", "cityscapes_stem"]

logger = logging.getLogger(__name__)

_INSTALL = "Cityscapes evaluation needs cityscapesscripts: pip install cityscapesscripts"


def cityscapes_stem(file_name: str) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes image or label file name."""
    return "_".join(os.path.basename(file_name).split("_")[:3])


def _label_ids(class_names: Sequence[str]) -> np.ndarray:
    """Cityscapes label id of each contiguous class (looked up by name in ``labels.py``).

    Raises:
        KeyError: a class name is not a Cityscapes label.
    """
    from cityscapesscripts.helpers.labels import name2label

    unknown = [n for n in class_names if n not in name2label]
    if unknown:
        raise KeyError(f"Classes {unknown} are not Cityscapes labels (cityscapesscripts labels.py).")
    return np.array([name2label[n].id for n in class_names], dtype=np.uint8)


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


def _set_official_args(args, prediction_path: str) -> None:
    """Point a cityscapesscripts evaluation module's global ``args`` at ``prediction_path`` and turn
    off its own prediction search, JSON export, colourised output and console printing."""
    args.predictionPath = prediction_path
    args.predictionWalk = None
    args.JSONOutput = False
    args.colorized = False
    args.quiet = True


@contextlib.contextmanager
def _quiet_official_run(folder: str):
    """Run a cityscapesscripts routine inside ``folder`` with its console output kept out, its
    ``printError`` exits turned into ``RuntimeError`` with the printed message, and
    ``numpy.in1d`` available (see the module docstring)."""
    stdout = io.StringIO()
    cwd = os.getcwd()
    shim = not hasattr(np, "in1d")
    if shim:
        np.in1d = _in1d
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(stdout):
            yield
    except SystemExit as e:
        lines = [line for line in stdout.getvalue().splitlines() if line.strip()]
        raise RuntimeError(f"cityscapesscripts failed: {lines[-1] if lines else e}") from None
    finally:
        os.chdir(cwd)
        if shim:
            del np.in1d


class _CityscapesEvaluator(DatasetEvaluator):
    """Shared set-up: ``gt_dir`` and class names from the arguments or the dataset metadata,
    and a temporary prediction folder made on rank 0 and shared with the other ranks."""

    def __init__(self, dataset_name: Optional[str], *, gt_dir: Optional[str], class_key: str,
                 class_names: Optional[Sequence[str]]):
        try:
            import cityscapesscripts  # noqa: F401
        except ImportError as e:
            raise ImportError(_INSTALL) from e
        fields = resolve_metadata(dataset_name, {"gt_dir": gt_dir, class_key: class_names})
        owner = type(self).__name__
        self._gt_dir = require_field(fields, "gt_dir", dataset_name, owner)
        self._label_ids = _label_ids(require_field(fields, class_key, dataset_name, owner))
        self._temp_dir: Optional[str] = None

    def reset(self) -> None:
        self._cleanup()
        folder = tempfile.mkdtemp(prefix="cityscapes_eval_") if comm.is_main_process() else None
        self._temp_dir = comm.all_gather(folder)[0]

    def _cleanup(self) -> None:
        if self._temp_dir is not None and comm.is_main_process():
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        self._temp_dir = None

    def _gt_files(self, suffix: str) -> List[str]:
        files = sorted(glob.glob(os.path.join(self._gt_dir, "*", f"*_gtFine_{suffix}.png")))
        if not files:
            raise FileNotFoundError(f"No '*_gtFine_{suffix}.png' under '{self._gt_dir}/<city>/'.")
        return files

    def _official_inputs(self, official, gt_suffix: str, prediction_suffix: str, prediction_path: str):
        """The ground-truth files ``*_gtFine_<gt_suffix>.png`` and their predictions
        (``<stem><prediction_suffix>`` in the temporary folder), with the official module's
        ``args`` pointed at ``prediction_path``.

        Raises:
            FileNotFoundError / KeyError: as :meth:`_gt_files` / :meth:`_prediction_for`.
        """
        gt_files = self._gt_files(gt_suffix)
        predictions = [self._prediction_for(f, prediction_suffix) for f in gt_files]
        _set_official_args(official.args, prediction_path=prediction_path)
        return gt_files, predictions

    def _prediction_for(self, gt_file: str, suffix: str) -> str:
        path = os.path.join(self._temp_dir, cityscapes_stem(gt_file) + suffix)
        if not os.path.isfile(path):
            raise KeyError(f"No prediction for the Cityscapes ground truth '{gt_file}'.")
        return path


class CityscapesSemSegEvaluator(_CityscapesEvaluator):
    """Cityscapes pixel-level semantic labelling metrics by ``evalPixelLevelSemanticLabeling``:
    class IoU and instance-weighted iIoU over the 19 evaluation classes, and both over the 7
    categories (``IoU_sup``, ``iIoU_sup``), in percent (Cordts et al., CVPR 2016, Sec. 3.2)."""

    def __init__(self, dataset_name: Optional[str] = None, *, gt_dir: Optional[str] = None,
                 stuff_classes: Optional[Sequence[str]] = None):
        """
        Args:
            dataset_name: registered dataset whose metadata gives the arguments left ``None``.
            gt_dir: ``gtFine/<split>`` (``<city>/*_gtFine_{labelIds,instanceIds}.png``).
            stuff_classes: Cityscapes label names of the model's classes (contiguous order).

        Raises:
            ImportError: cityscapesscripts is not installed.
            ValueError: ``gt_dir`` / ``stuff_classes`` given neither way.
            KeyError: a class name is not a Cityscapes label.
        """
        super().__init__(dataset_name, gt_dir=gt_dir, class_key="stuff_classes", class_names=stuff_classes)

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """
        Args:
            inputs: dicts with ``file_name`` (``<city>_<seq>_<frame>_leftImg8bit.png``).
            outputs: dicts with ``sem_seg``: float [K, H, W] class scores, or the compact int
                [H, W] class ids, at the image size.
        """
        for input_dict, output in zip(inputs, outputs):
            classes = semantic_labels(output["sem_seg"]).to(torch.uint8).cpu().numpy()
            path = os.path.join(self._temp_dir, cityscapes_stem(input_dict["file_name"]) + "_pred.png")
            Image.fromarray(self._label_ids[classes]).save(path)

    def evaluate(self) -> Optional["OrderedDict[str, dict]"]:
        """Returns on rank 0 ``{"sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup", "IoU-<class>"...}}``
        (NaN for a class neither in the ground truth nor predicted); None elsewhere.

        Raises:
            FileNotFoundError: no ground truth under ``gt_dir``.
            KeyError: a ground-truth image has no prediction.
        """
        comm.synchronize()
        if not comm.is_main_process():
            return None
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

        try:
            gt_files, predictions = self._official_inputs(official, "labelIds", "_pred.png", self._temp_dir)
            logger.info("Evaluating %d images with cityscapesscripts (pixel level)", len(gt_files))
            with _quiet_official_run(self._temp_dir):
                res = official.evaluateImgLists(predictions, gt_files, official.args)
        finally:
            self._cleanup()
        keys = {"IoU": "averageScoreClasses", "iIoU": "averageScoreInstClasses",
                "IoU_sup": "averageScoreCategories", "iIoU_sup": "averageScoreInstCategories"}
        results = {k: 100.0 * float(res[v]) for k, v in keys.items()}
        results.update({f"IoU-{name}": 100.0 * float(v) for name, v in res["classScores"].items()})
        return OrderedDict({"sem_seg": results})


class CityscapesInstanceEvaluator(_CityscapesEvaluator):
    """Cityscapes instance-level metrics by ``evalInstanceLevelSemanticLabeling``: AP averaged
    over IoU 0.5:0.95 and AP at IoU 0.5 over the 8 instance classes, in percent."""

    def __init__(self, dataset_name: Optional[str] = None, *, gt_dir: Optional[str] = None,
                 thing_classes: Optional[Sequence[str]] = None):
        """
        Args:
            dataset_name: registered dataset whose metadata gives the arguments left ``None``.
            gt_dir: ``gtFine/<split>`` (``<city>/*_gtFine_{labelIds,instanceIds}.png``).
            thing_classes: Cityscapes label names indexed by the predicted ``pred_classes``.

        Raises:
            ImportError: cityscapesscripts is not installed.
            ValueError: ``gt_dir`` / ``thing_classes`` given neither way.
            KeyError: a class name is not a Cityscapes label.
        """
        super().__init__(dataset_name, gt_dir=gt_dir, class_key="thing_classes", class_names=thing_classes)

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """
        Args:
            inputs: dicts with ``file_name`` (``<city>_<seq>_<frame>_leftImg8bit.png``).
            outputs: dicts with ``instances``: ``pred_masks`` bool [N, H, W] (or compact
                ``pred_masks_rle``), ``scores`` [N], ``pred_classes`` [N] (indices into
                ``thing_classes``).
        """
        for input_dict, output in zip(inputs, outputs):
            stem = cityscapes_stem(input_dict["file_name"])
            instances = output["instances"]
            masks = instance_masks(instances)
            scores = instances.scores.cpu().numpy()
            classes = instances.pred_classes.cpu().numpy()
            lines = []
            for i, (mask, score, cls) in enumerate(zip(masks, scores, classes)):
                name = f"{stem}_{i}_{int(self._label_ids[cls])}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(self._temp_dir, name))
                lines.append(f"{name} {int(self._label_ids[cls])} {float(score)}\n")
            with open(os.path.join(self._temp_dir, stem + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def evaluate(self) -> Optional["OrderedDict[str, dict]"]:
        """Returns on rank 0 ``{"segm": {"AP", "AP50", "AP-<class>"...}}`` (NaN for a class
        without ground truth or prediction); None elsewhere.

        Raises:
            FileNotFoundError: no ground truth under ``gt_dir``.
            KeyError: a ground-truth image has no prediction.
        """
        comm.synchronize()
        if not comm.is_main_process():
            return None
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official

        try:
            gt_files, predictions = self._official_inputs(
                official, "instanceIds", "_pred.txt", os.path.abspath(self._temp_dir)
            )
            official.args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")
            logger.info("Evaluating %d images with cityscapesscripts (instance level)", len(gt_files))
            # evaluateImgLists' steps, without its matches.json dump (numpy-2 scalars in the
            # matches are not JSON-serialisable there) and result export.
            with _quiet_official_run(self._temp_dir):
                official.setInstanceLabels(official.args)
                gt_instances = official.getGtInstances(gt_files, official.args)
                matches = official.matchGtWithPreds(predictions, gt_files, gt_instances, official.args)
                ap_scores = official.evaluateMatches(matches, official.args)
                res = official.computeAverages(ap_scores, official.args)
        finally:
            self._cleanup()
        results = {"AP": 100.0 * float(res["allAp"]), "AP50": 100.0 * float(res["allAp50%"])}
        results.update({f"AP-{name}": 100.0 * float(v["ap"]) for name, v in res["classes"].items()})
        return OrderedDict({"segm": results})
