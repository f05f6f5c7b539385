#!/usr/bin/env python
"""Convert an official Swin Transformer ImageNet checkpoint (.pth) into a Detectron2-format pickle.

The official checkpoints (github.com/microsoft/Swin-Transformer releases, ``{"model": state_dict}``)
already use the parameter names of :class:`mask2former.modeling.backbone.D2SwinTransformer`
(``patch_embed.*``, ``layers.N.*``). This drops what the backbone does not have: the classifier
``head.*``, the final ``norm.*`` (the backbone has per-output ``norm0``..``norm3`` instead) and the
fixed-resolution ``attn_mask`` buffers, and writes ``{"model": {name: numpy.ndarray},
"__author__": "third_party", "matching_heuristics": True}``.

Example::

    wget https://github.com/SwinTransformer/storage/releases/download/v1.0.0/\
swin_tiny_patch4_window7_224.pth
    python tools/convert-pretrained-swin-model-to-d2.py swin_tiny_patch4_window7_224.pth \
        swin_tiny_patch4_window7_224.pkl

Use the result with ``MODEL.WEIGHTS swin_tiny_patch4_window7_224.pkl`` and ``INPUT.FORMAT RGB``.
Keys carry no ``backbone.`` prefix (as the original tool wrote them); pass ``--prefix backbone.``
for loaders that match names exactly.
"""
import argparse
import pickle
from collections import OrderedDict
from typing import Dict

import torch

from mask2former.utils.atomic_io import atomic_write


def is_backbone_key(name: str) -> bool:
    """Whether a Swin classification-model key exists in the detection backbone."""
    return not (name.startswith(("head.", "norm.")) or name.endswith("attn_mask"))


def convert(state_dict: Dict[str, torch.Tensor], prefix: str = "") -> "OrderedDict[str, object]":
    """Official Swin state dict -> OrderedDict of backbone names to numpy arrays."""
    return OrderedDict(
        (prefix + name, tensor.detach().cpu().numpy())
        for name, tensor in state_dict.items()
        if is_backbone_key(name)
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="official Swin checkpoint (.pth) holding {'model': ...}")
    parser.add_argument("output", help="output Detectron2-format pickle (.pkl)")
    parser.add_argument("--prefix", default="", help="prepended to every key, e.g. 'backbone.'")
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.input, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{args.input}: expected a dict with a 'model' state dict")
    state_dict = checkpoint["model"]
    model = convert(state_dict, args.prefix)
    with atomic_write(args.output, "wb") as f:
        pickle.dump({"model": model, "__author__": "third_party", "matching_heuristics": True}, f)
    print(f"Wrote {len(model)} of {len(state_dict)} tensors to {args.output}")


if __name__ == "__main__":
    main()
