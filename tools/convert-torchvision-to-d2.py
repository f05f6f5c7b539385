#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint (.pth) into a Detectron2-format pickle (.pkl).

Renames torchvision's parameters to the names of :mod:`mask2former.modeling.backbone.resnet`
(``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``, ``layerN.B.convK``/``bnK`` ->
``res{N+1}.B.convK``/``convK.norm``, ``downsample.0``/``.1`` -> ``shortcut``/``shortcut.norm``),
drops the classifier ``fc.*`` and the ``num_batches_tracked`` counters, and writes
``{"model": {name: numpy.ndarray}, "__author__": "torchvision", "matching_heuristics": True}``.

Example::

    wget https://download.pytorch.org/models/resnet50-19c8e357.pth -O r50.pth
    python tools/convert-torchvision-to-d2.py r50.pth R-50.pkl

Use the result with ``MODEL.WEIGHTS R-50.pkl``, ``MODEL.RESNETS.STRIDE_IN_1X1 False``,
``INPUT.FORMAT RGB`` and torchvision's ImageNet ``PIXEL_MEAN``/``PIXEL_STD`` (as the Mask2Former
configs do). Keys carry no ``backbone.`` prefix, like Detectron2's ImageNet models; pass
``--prefix backbone.`` for loaders that match names exactly.
"""
import argparse
import pickle
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch

from mask2former.utils.atomic_io import atomic_write

_MODULES = {
    "conv1": "conv1",
    "conv2": "conv2",
    "conv3": "conv3",
    "bn1": "conv1.norm",
    "bn2": "conv2.norm",
    "bn3": "conv3.norm",
    "downsample.0": "shortcut",
    "downsample.1": "shortcut.norm",
}


def torchvision_to_d2_name(name: str) -> Optional[str]:
    """Detectron2 name of a torchvision ResNet parameter, or None for ``fc.*`` and counters."""
    if name.endswith("num_batches_tracked") or name.startswith("fc."):
        return None
    stem = re.fullmatch(r"(conv1|bn1)\.(\w+)", name)
    if stem:
        return f"stem.{_MODULES[stem[1]]}.{stem[2]}"
    block = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)", name)
    if block is None:
        raise ValueError(f"{name!r} is not a torchvision ResNet parameter name")
    return f"res{int(block[1]) + 1}.{block[2]}.{_MODULES[block[3]]}.{block[4]}"


def convert(state_dict: Dict[str, torch.Tensor], prefix: str = "") -> "OrderedDict[str, object]":
    """torchvision ResNet state dict -> OrderedDict of Detectron2 names to numpy arrays."""
    converted = OrderedDict()
    for name, tensor in state_dict.items():
        new_name = torchvision_to_d2_name(name)
        if new_name is not None:
            converted[prefix + new_name] = tensor.detach().cpu().numpy()
    return converted


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="torchvision ResNet checkpoint (.pth)")
    parser.add_argument("output", help="output Detectron2-format pickle (.pkl)")
    parser.add_argument("--prefix", default="", help="prepended to every key, e.g. 'backbone.'")
    args = parser.parse_args(argv)
    state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    model = convert(state_dict, args.prefix)
    with atomic_write(args.output, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f)
    print(f"Wrote {len(model)} of {len(state_dict)} tensors to {args.output}")


if __name__ == "__main__":
    main()
