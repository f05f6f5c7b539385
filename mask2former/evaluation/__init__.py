"""Evaluators (Detectron2's interface) usable without Detectron2 and without panopticapi;
Cityscapes' official evaluation needs cityscapesscripts."""
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .instance_evaluation import COCOEvaluator, InstanceSegEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .panoptic_quality import pq_compute
from .sem_seg_evaluation import SemSegEvaluator

__all__ = [
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
    "COCOEvaluator",
    "InstanceSegEvaluator",
    "COCOPanopticEvaluator",
    "pq_compute",
    "SemSegEvaluator",
]
