#!/usr/bin/env python
"""Train and evaluate Mask2Former.

    python train_net.py --config-file configs/coco/panoptic/R50.yaml --num-gpus 8
    python train_net.py --config-file configs/coco/panoptic/R50.yaml --eval-only MODEL.WEIGHTS model.pkl
    (with TEST.AUG.ENABLED True, semantic models are also evaluated with flip/multi-scale TTA)
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint

Several machines: run on each with --num-machines N --machine-rank R --dist-url tcp://HOST:PORT.
``torchrun --nproc-per-node 8 train_net.py --config-file ...`` works too.

``--engine standalone`` (default) trains on plain PyTorch, no Detectron2 needed.
``--engine detectron2`` trains with Detectron2's ``DefaultTrainer`` and evaluates with Detectron2's
evaluators (see :mod:`mask2former.engine.d2_trainer`); it needs Detectron2 installed.
"""
import importlib.util
import sys

from mask2former.checkpoint import Checkpointer
from mask2former.engine.defaults import default_argument_parser, setup
from mask2former.engine.evaluation import evaluate_model
from mask2former.engine.launch import WorkerProcessError, launch
from mask2former.engine.trainer import Trainer
from mask2former.modeling.build import build_model
from mask2former.modeling.precision import prepare_for_inference
from mask2former.modeling.test_time_augmentation import SemanticSegmentorWithTTA


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = build_model(cfg)
        Checkpointer.from_config(cfg, model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        prepare_for_inference(model, cfg.TEST.PRECISION)
        results = evaluate_model(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(evaluate_model(cfg, SemanticSegmentorWithTTA(cfg, model), tag="_TTA"))
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _run_detectron2_engine(args):
    """Hand over to the Detectron2 engine; exit with installation instructions without Detectron2."""
    try:
        from mask2former.engine import d2_trainer
    except ImportError as exc:
        if importlib.util.find_spec("detectron2") is not None:
            raise  # Detectron2 is installed but broken: show the real error
        sys.exit(f"error: {exc}")
    return d2_trainer.run(args)


def argument_parser():
    """The common options (:func:`default_argument_parser`) plus ``--engine``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--engine",
        choices=("standalone", "detectron2"),
        default="standalone",
        help="training loop and evaluators: this package's (default) or Detectron2's DefaultTrainer "
        "and evaluators (needs Detectron2 installed)",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    if args.engine == "detectron2":
        _run_detectron2_engine(args)
    else:
        try:
            launch(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
        except WorkerProcessError as e:
            print(e.details, file=sys.stderr)
            sys.exit(f"error: {e}")
