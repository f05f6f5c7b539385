#!/usr/bin/env python
"""Export a Mask2Former model for deployment: ONNX (``model.onnx``, run with ONNX Runtime) or a
``torch.export`` program (``model.pt2``), plus ``metadata.json`` (input convention, test resize,
post-processing settings, class names and colours), so that the directory is usable alone.

The graph maps ``image`` float32 [N, 3, H, W] (0-255, ``INPUT.FORMAT`` channel order; H and W
multiples of the model's size divisibility, dynamic like N) to ``pred_logits`` [N, Q, K+1] and
``pred_masks`` [N, Q, H/4, W/4]; normalisation is inside it. ``ExportedPredictor`` /
``demo/demo.py --exported DIR`` add the resize, padding and post-processing.

Example:
  python tools/export_model.py --config-file configs/coco/panoptic/R50.yaml --format onnx \\
      --output export/r50_panoptic --opts MODEL.WEIGHTS model_final_94dc52.pkl
"""
import argparse
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mask2former.checkpoint import Checkpointer  # noqa: E402
from mask2former.config import get_cfg  # noqa: E402
from mask2former.export import FORMATS, ExportedMaskFormer, ExportError, export_model  # noqa: E402
from mask2former.export.exporter import DEFAULT_OPSET, example_image  # noqa: E402
from mask2former.modeling.build import build_model  # noqa: E402

logger = logging.getLogger("mask2former.export_model")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export Mask2Former to ONNX or torch.export")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument(
        "--no-check", action="store_true",
        help="skip running the exported file once against PyTorch on a random image",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pkl",
    )
    return parser


def setup_cfg(args):
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"Config file not found: {args.config_file}")
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def check_against_pytorch(model, output_dir) -> float:
    """Largest absolute difference of the exported file's raw outputs from PyTorch's, on a random
    image of another size than the traced one."""
    runtime = ExportedMaskFormer(output_dir)
    image = example_image(model.size_divisibility, batch=1, seed=1)[..., : -model.size_divisibility]
    with torch.no_grad():
        expected = model.sem_seg_head(model.backbone((image - model.pixel_mean) / model.pixel_std))
    got = runtime.run(image)
    return max(
        float((got[0] - expected["pred_logits"]).abs().max()),
        float((got[1] - expected["pred_masks"]).abs().max()),
    )


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        cfg = setup_cfg(args)
        model = build_model(cfg).eval()
        if not cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: exporting random weights")
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        path, _ = export_model(cfg, model, args.format, args.output, opset=args.opset)
        logger.info(f"wrote {path} and {os.path.join(args.output, 'metadata.json')}")
        if not args.no_check:
            logger.info(f"max |exported - PyTorch| on a random image: {check_against_pytorch(model, args.output):.3g}")
    except (ExportError, OSError, ValueError, KeyError) as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
