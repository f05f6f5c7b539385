"""Training and evaluation on Detectron2's engine: ``train_net.py --engine detectron2``.

Detectron2's ``DefaultTrainer`` runs the loop (hooks, ``SimpleTrainer``/``AMPTrainer``, periodic
checkpoints with ``DetectionCheckpointer``, which also resolves ``detectron2://`` weights, LR
scheduler hook, metrics writers, evaluation hook); this module plugs in Mask2Former's pieces:

- model: Detectron2's ``build_model`` (``import mask2former`` registered ``MaskFormer`` and its
  components in Detectron2's registries);
- training data: Detectron2's ``build_detection_train_loader`` with this package's dataset mapper
  named by ``INPUT.DATASET_MAPPER_NAME``;
- optimizer: Mask2Former's AdamW/SGD parameter groups (:func:`mask2former.solver.build_optimizer`),
  gradients clipped as ``SOLVER.CLIP_GRADIENTS`` asks (``full_model`` included) right before each
  optimizer step, after AMP unscaling;
- LR schedule: Detectron2's schedulers; ``WarmupPolyLR`` from ``detectron2.projects.deeplab``
  when that project is importable, else :func:`mask2former.solver.build_lr_scheduler`;
- evaluation: Detectron2's ``COCOPanopticEvaluator``, ``COCOEvaluator``, ``SemSegEvaluator``
  (and Cityscapes evaluators), chosen per dataset as the original Mask2Former ``train_net.py`` does.
  Detectron2's ``COCOPanopticEvaluator`` needs ``panopticapi``; without it PQ is computed by
  :class:`mask2former.evaluation.COCOPanopticEvaluator` (same definition) and the log says so.

Import this module only when Detectron2 is installed: importing it otherwise raises ImportError
with installation instructions.
"""
import importlib.util
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import torch

DETECTRON2_INSTALL_INSTRUCTIONS = (
    "The Detectron2 engine (`--engine detectron2`) needs Detectron2, which is not installed. "
    "Detectron2 is not published on a package registry: build it from its git repository, e.g. "
    "`git clone https://github.com/facebookresearch/detectron2.git && "
    "pip install --no-build-isolation -e detectron2`, then `pip install -e \".[detectron2]\"` in "
    "this repository. The default standalone engine (`--engine standalone`) needs no Detectron2."
)

try:
    import detectron2  # noqa: F401
except ImportError as exc:
    raise ImportError(DETECTRON2_INSTALL_INSTRUCTIONS) from exc

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, default_setup, launch
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    verify_results,
)
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_maskformer2_config, add_maskformer2_video_config
from ..data.dataset_mappers import build_dataset_mapper
from ..evaluation import COCOPanopticEvaluator as StandaloneCOCOPanopticEvaluator
from ..evaluation import InstanceSegEvaluator
from ..modeling.precision import prepare_for_inference
from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA
from ..solver import build_lr_scheduler as standalone_build_lr_scheduler
from ..solver import build_optimizer
from ..solver.optimizer import clip_gradients
from .custom_datasets import configure_datasets, register_datasets

__all__ = [
    "DETECTRON2_INSTALL_INSTRUCTIONS",
    "Detectron2Trainer",
    "build_panoptic_evaluator",
    "main",
    "run",
    "setup",
]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_PANOPTIC_TYPES = (
    "coco_panoptic_seg",
    "ade20k_panoptic_seg",
    "cityscapes_panoptic_seg",
    "mapillary_vistas_panoptic_seg",
)


def build_panoptic_evaluator(dataset_name: str, output_dir: Optional[str]) -> DatasetEvaluator:
    """Detectron2's ``COCOPanopticEvaluator`` when ``panopticapi`` is importable; otherwise
    :class:`mask2former.evaluation.COCOPanopticEvaluator` (same PQ/SQ/RQ definition and result
    keys, no panopticapi needed), with a warning in the log."""
    if importlib.util.find_spec("panopticapi") is not None:
        return COCOPanopticEvaluator(dataset_name, output_dir)
    logger.warning(
        "panopticapi is not installed, and Detectron2's COCOPanopticEvaluator needs it: evaluating "
        f"{dataset_name} with mask2former.evaluation.COCOPanopticEvaluator instead (same metrics)."
    )
    return StandaloneCOCOPanopticEvaluator(dataset_name, output_dir)


def _add_gradient_clipping(cfg, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Clip gradients as ``SOLVER.CLIP_GRADIENTS`` asks at the start of every ``optimizer.step()``.

    Under AMP, ``GradScaler.step`` unscales the gradients before calling ``step``, so the clipping
    sees true gradient values; a step skipped for inf/NaN gradients clips nothing.
    """
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        optimizer.register_step_pre_hook(lambda *_: clip_gradients(cfg, model))


class Detectron2Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with Mask2Former's data mappers, optimizer, LR schedules,
    evaluators and semantic test-time augmentation (see the module docstring)."""

    def __init__(self, cfg):
        """
        Raises:
            ValueError: ``SOLVER.AMP.PRECISION`` is neither "float16" nor "bfloat16".
        """
        precision = cfg.SOLVER.AMP.PRECISION
        if precision not in _AMP_DTYPES:
            raise ValueError(
                f"SOLVER.AMP.PRECISION={precision!r}; expected one of {sorted(_AMP_DTYPES)}"
            )
        super().__init__(cfg)
        if isinstance(self._trainer, AMPTrainer):
            self._trainer.precision = _AMP_DTYPES[precision]

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's training loader over ``DATASETS.TRAIN`` with the dataset mapper named by
        ``INPUT.DATASET_MAPPER_NAME`` (``KeyError`` naming the registered ones if unknown)."""
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_optimizer(cls, cfg, model):
        """AdamW/SGD with Mask2Former's parameter groups, clipping as ``SOLVER.CLIP_GRADIENTS`` says."""
        adamw_or_sgd = build_optimizer(cfg, model)
        _add_gradient_clipping(cfg, model, adamw_or_sgd)
        return adamw_or_sgd

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's schedulers; ``WarmupPolyLR`` from Detectron2's DeepLab project, or this
        package's implementation of it when that project is not importable."""
        try:
            from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build_lr_scheduler
        except ImportError:
            if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
                return standalone_build_lr_scheduler(cfg, optimizer)
            return d2_build_lr_scheduler(cfg, optimizer)
        return deeplab_build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        """Evaluators for ``dataset_name`` by its metadata ``evaluator_type`` and the enabled
        outputs (``MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``).

        Raises:
            NotImplementedError: no evaluator applies (``DefaultTrainer.test`` then skips the
                dataset with a warning).
        """
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        test = cfg.MODEL.MASK_FORMER.TEST
        evaluators: List[DatasetEvaluator] = []
        if kind in ("sem_seg", "ade20k_panoptic_seg") or (
            kind in ("coco_panoptic_seg", "mapillary_vistas_panoptic_seg") and test.SEMANTIC_ON
        ):
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        if kind == "coco" or (kind == "coco_panoptic_seg" and test.INSTANCE_ON):
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        if kind in _PANOPTIC_TYPES and test.PANOPTIC_ON:
            evaluators.append(build_panoptic_evaluator(dataset_name, output_folder))
        if kind in ("ade20k_panoptic_seg", "mapillary_vistas_panoptic_seg") and test.INSTANCE_ON:
            evaluators.append(InstanceSegEvaluator(dataset_name, output_dir=output_folder))
        if kind in ("cityscapes_sem_seg", "cityscapes_panoptic_seg") and (
            kind == "cityscapes_sem_seg" or test.SEMANTIC_ON
        ):
            evaluators.append(CityscapesSemSegEvaluator(dataset_name))
        if kind in ("cityscapes_instance", "cityscapes_panoptic_seg") and (
            kind == "cityscapes_instance" or test.INSTANCE_ON
        ):
            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        if not evaluators:
            raise NotImplementedError(
                f"No evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}) with the enabled "
                f"outputs (MODEL.MASK_FORMER.TEST: PANOPTIC_ON={test.PANOPTIC_ON}, "
                f"INSTANCE_ON={test.INSTANCE_ON}, SEMANTIC_ON={test.SEMANTIC_ON})"
            )
        return DatasetEvaluators(evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model) -> Dict[str, Dict[str, float]]:
        """Evaluate ``model`` with multi-scale (and flip) semantic test-time augmentation
        (``TEST.AUG.*``); result keys get the suffix ``_TTA``."""
        logger.info("Evaluating with test-time augmentation (TEST.AUG: scales %s, flip %s)",
                    tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.FLIP)
        tta_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=tta_folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, SemanticSegmentorWithTTA(cfg, model), evaluators)
        return OrderedDict((f"{k}_TTA", v) for k, v in results.items())


def setup(args):
    """Detectron2 config (``detectron2.config.get_cfg``) with the DeepLab and Mask2Former keys,
    merged from ``args.config_file`` and ``args.opts``, frozen; Detectron2's ``default_setup``
    (output dir, ``config.yaml``, logging, seeding) plus a ``mask2former`` logger. The
    ``--dataset``s are registered first and the config fitted to them (:mod:`.custom_datasets`)."""
    register_datasets(getattr(args, "datasets", []))
    cfg = get_cfg()
    try:
        from detectron2.projects.deeplab import add_deeplab_config
    except ImportError:  # add_maskformer2_config adds the same DeepLab keys itself
        pass
    else:
        add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    changes = configure_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    for change in changes:
        logging.getLogger("mask2former").info("Config fitted to the datasets: %s", change)
    return cfg


def main(args):
    """Train (or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``) on one process."""
    cfg = setup(args)
    if args.eval_only:
        model = Detectron2Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        prepare_for_inference(model, cfg.TEST.PRECISION)
        results = Detectron2Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Detectron2Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Detectron2Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    """Launch :func:`main` on ``args.num_gpus`` processes per machine with Detectron2's launcher."""
    machines = {"num_machines": args.num_machines, "machine_rank": args.machine_rank, "dist_url": args.dist_url}
    return launch(main, args.num_gpus, args=(args,), **machines)
