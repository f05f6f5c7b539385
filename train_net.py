#!/usr/bin/env python
"""Train and evaluate Mask2Former (standalone engine, no Detectron2 needed).

    python train_net.py --config-file configs/coco/panoptic/R50.yaml --num-gpus 8
    python train_net.py --config-file configs/coco/panoptic/R50.yaml --eval-only MODEL.WEIGHTS model.pkl
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint

Several machines: run on each with --num-machines N --machine-rank R --dist-url tcp://HOST:PORT.
``torchrun --nproc-per-node 8 train_net.py --config-file ...`` works too.
"""
from mask2former.checkpoint import Checkpointer
from mask2former.engine.defaults import default_argument_parser, setup
from mask2former.engine.evaluation import evaluate_model
from mask2former.engine.launch import launch
from mask2former.engine.trainer import Trainer
from mask2former.modeling.build import build_model


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = build_model(cfg)
        Checkpointer(model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return evaluate_model(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
