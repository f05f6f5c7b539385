"""Command-line set-up shared by ``train_net.py`` and tools: arguments, config, logging, seeds."""
import argparse
import os
import random
import sys

import numpy as np
import torch

from ..utils.atomic_io import atomic_write
from ..config import get_cfg
from ..utils import comm
from ..utils.logger import setup_logger
from .custom_datasets import DatasetArgumentParser, configure_datasets, register_datasets


def default_argument_parser(description: str = "Mask2Former training and evaluation") -> argparse.ArgumentParser:
    """Detectron2-compatible options: ``--config-file``, ``--resume``, ``--eval-only``,
    ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, trailing
    ``KEY VALUE`` config overrides, and ``--dataset NAME TYPE PATH [PATH ...]``
    (:class:`DatasetArgumentParser`)."""
    parser = DatasetArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python train_net.py --config-file configs/coco/panoptic/R50.yaml "
        "--num-gpus 8 SOLVER.IMS_PER_BATCH 16",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a YAML config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT_DIR (full training state)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine (GPUs; gloo worker processes on CPU)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    parser.add_argument("--dist-url", default="auto",
                        help="tcp://HOST:PORT of the rank-0 machine; 'auto' picks a local port")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 1000")
    return parser


def setup(args):
    """Register the ``--dataset``s, build the frozen config from ``args`` (fitted to their types
    and checked against their classes, see :mod:`.custom_datasets`), create OUTPUT_DIR, set up
    logging and seed the RNGs (``SEED + rank``; a random seed when SEED < 0). Writes the merged
    config to ``OUTPUT_DIR/config.yaml``.

    Raises:
        ValueError: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` differs from a dataset's classes, or bad
            ``--dataset`` files.
    """
    register_datasets(getattr(args, "datasets", []))
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    changes = configure_datasets(cfg)
    if cfg.SEED < 0:
        cfg.SEED = int.from_bytes(os.urandom(2), "little")
    cfg.freeze()
    rank = comm.get_rank()
    logger = setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info("Command line: %s", " ".join(sys.argv))
    logger.info("World size: %d, rank %d", comm.get_world_size(), rank)
    for change in changes:
        logger.info("Config fitted to the datasets: %s", change)
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with atomic_write(os.path.join(cfg.OUTPUT_DIR, "config.yaml")) as f:
            f.write(cfg.dump())
    seed = cfg.SEED + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return cfg
