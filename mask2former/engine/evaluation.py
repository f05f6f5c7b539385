"""Evaluation of a model on the datasets of ``cfg.DATASETS.TEST`` with the matching evaluators."""
import logging
import os
from collections import OrderedDict
from typing import Dict, List

import numpy as np
import torch

from ..data.build import build_test_loader
from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.dataset_mappers import build_dataset_mapper
from ..data.datasets.panoptic_derived import instances_json_from_panoptic, semantic_loader_from_panoptic
from ..data.image_io import read_image
from ..data.transforms import ResizeShortestEdge
from ..evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    inference_on_dataset,
)
from ..evaluation.official_pq import pq_module_available
from ..utils import comm
from ..video.evaluation import build_video_evaluator
from ..video.meta_arch import VideoMaskFormer

logger = logging.getLogger(__name__)


class TestMapper:
    """Reads a dataset record's image in ``INPUT.FORMAT`` and applies the test resize.

    Returns the record with ``image`` uint8 [3, H', W'] added; ``height``/``width`` stay the
    original size, so the model's outputs come back at the original resolution.
    """

    def __init__(self, cfg):
        self.image_format = cfg.INPUT.FORMAT
        self.resize = ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, record: Dict) -> Dict:
        image = read_image(record["file_name"], format=self.image_format)
        record.setdefault("height", image.shape[0])
        record.setdefault("width", image.shape[1])
        image = self.resize.get_transform(image).apply_image(image)
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record


def _instances_json(metadata, output_dir: str) -> str:
    """COCO instances JSON of a panoptic dataset without one, derived from its panoptic
    annotations into ``output_dir`` (by rank 0; the ranks share the folder)."""
    path = os.path.join(output_dir, "instances_from_panoptic.json")
    if comm.is_main_process():
        count = instances_json_from_panoptic(metadata.panoptic_json, metadata.panoptic_root, path)
        logger.info("Instance ground truth for AP: %d thing segments of %s -> %s", count,
                    metadata.panoptic_json, path)
    comm.synchronize()
    return path


def build_evaluator(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """Evaluators for ``dataset_name`` by its metadata ``evaluator_type`` and the enabled outputs
    (``MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``). Panoptic datasets without
    an instances JSON (metadata ``json_file``) or semantic label maps (``sem_seg_root``) get AP
    and mIoU against ground truth derived from their panoptic annotations
    (:mod:`mask2former.data.datasets.panoptic_derived`); their PQ is computed by
    ``TEST.PQ_IMPLEMENTATION`` (see :class:`COCOPanopticEvaluator`). Cityscapes datasets are
    evaluated by the official ``cityscapesscripts`` (semantic, instance and panoptic; without
    it, semantic datasets get :class:`SemSegEvaluator` and a warning).

    Raises:
        NotImplementedError: no evaluator for the evaluator type and the enabled outputs.
        ImportError: a Cityscapes dataset without cityscapesscripts installed.
    """
    metadata = MetadataCatalog.get(dataset_name)
    kind = metadata.get("evaluator_type", None)
    test = cfg.MODEL.MASK_FORMER.TEST
    evaluators: List[DatasetEvaluator] = []
    if kind in ("coco_panoptic_seg", "ade20k_panoptic_seg"):
        if test.PANOPTIC_ON:
            evaluators.append(
                COCOPanopticEvaluator(
                    dataset_name, output_dir, pq_implementation=cfg.TEST.PQ_IMPLEMENTATION
                )
            )
        if test.INSTANCE_ON:
            json_file = metadata.get("json_file", None) or _instances_json(metadata, output_dir)
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_dir, json_file=json_file))
        if test.SEMANTIC_ON and metadata.get("sem_seg_root", None):
            evaluators.append(SemSegEvaluator(dataset_name, output_dir=output_dir))
        elif test.SEMANTIC_ON:
            records = DatasetCatalog.get(dataset_name)
            evaluators.append(
                SemSegEvaluator(
                    dataset_name,
                    output_dir=output_dir,
                    sem_seg_loading_fn=semantic_loader_from_panoptic(records),
                    input_file_to_gt_file={r["file_name"]: r["pan_seg_file_name"] for r in records},
                )
            )
    elif kind == "cityscapes_panoptic_seg":
        if test.PANOPTIC_ON:
            evaluators.append(
                COCOPanopticEvaluator(dataset_name, output_dir, pq_implementation="cityscapesscripts")
            )
        if test.INSTANCE_ON:
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        if test.SEMANTIC_ON:
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif kind == "coco":
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_dir))
    elif kind == "cityscapes_instance":
        evaluators.append(CityscapesInstanceEvaluator(dataset_name))
    elif kind == "cityscapes_sem_seg" and pq_module_available("cityscapesscripts"):
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif kind == "cityscapes_sem_seg":
        logger.warning("cityscapesscripts is not installed: %s gets this package's mIoU, not the "
                       "official Cityscapes metrics (pip install cityscapesscripts)", dataset_name)
        evaluators.append(SemSegEvaluator(dataset_name, output_dir=output_dir))
    elif kind == "sem_seg":
        evaluators.append(SemSegEvaluator(dataset_name, output_dir=output_dir))
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}) with the enabled outputs "
            f"(MODEL.MASK_FORMER.TEST: PANOPTIC_ON={test.PANOPTIC_ON}, INSTANCE_ON={test.INSTANCE_ON}, "
            f"SEMANTIC_ON={test.SEMANTIC_ON})"
        )
    return DatasetEvaluators(evaluators)


def evaluate_model(cfg, model: torch.nn.Module, tag: str = "") -> Dict[str, Dict[str, float]]:
    """Run ``model`` over every dataset of ``cfg.DATASETS.TEST`` and evaluate it.

    Args:
        tag: appended to the task names and to the output folder (e.g. "_TTA").

    Returns:
        ``{task: {metric: value}}`` (metrics in percent) on rank 0; with several test datasets the
        tasks are prefixed by the dataset name. Writes prediction files under
        ``OUTPUT_DIR/inference<tag>/<dataset>``.
    """
    results = OrderedDict()
    for name in cfg.DATASETS.TEST:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference" + tag, name)
        if comm.is_main_process():
            os.makedirs(output_dir, exist_ok=True)
        if isinstance(model, VideoMaskFormer):  # clips in, YouTube-VIS AP out
            mapper = build_dataset_mapper(cfg, is_train=False)
            evaluator = build_video_evaluator(name, output_dir)
        else:
            mapper, evaluator = TestMapper(cfg), build_evaluator(cfg, name, output_dir)
        loader = build_test_loader(DatasetCatalog.get(name), mapper, cfg.DATALOADER.NUM_WORKERS)
        dataset_results = inference_on_dataset(model, loader, evaluator) or {}
        prefix = f"{name}/" if len(cfg.DATASETS.TEST) > 1 else ""
        results.update({prefix + task + tag: metrics for task, metrics in dataset_results.items()})
    if comm.is_main_process() and results:
        for task, metrics in results.items():
            headline = {k: v for k, v in metrics.items() if "-" not in k}
            logger.info("%s: %s", task, ", ".join(f"{k}={v:.2f}" for k, v in headline.items()))
    return results
