#!/usr/bin/env python3
"""Make ADE20K panoptic annotations (COCO panoptic format) for ``ade20k_panoptic_*``.

Needs, under ``ADEChallengeData2016``: ``images/<split>/*.jpg``, the raw semantic labels
``annotations/<split>/*.png`` and the instance labels of the ADE20K instance-segmentation
release, ``annotations_instance/<split>/*.png`` (R = instance class 1..100, G = instance id).
Writes ``ade20k_panoptic_{train,val}/*.png`` and ``ade20k_panoptic_{train,val}.json``.

Usage::

    python datasets/prepare_ade20k_pan_seg.py [--dataset-root $DETECTRON2_DATASETS] \
        [--output-root DIR] [--splits train val]
"""
import argparse
import os

from mask2former.data.datasets._paths import dataset_root
from mask2former.data.datasets.prepare import ade20k_panoptic_from_instances, mirror_inputs

_FOLDERS = {"train": "training", "val": "validation"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", default=dataset_root())
    parser.add_argument("--output-root", default=None)
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=list(_FOLDERS))
    args = parser.parse_args(argv)
    ade_dir = os.path.join(args.dataset_root, "ADEChallengeData2016")
    out_dir = os.path.join(args.output_root or args.dataset_root, "ADEChallengeData2016")
    os.makedirs(out_dir, exist_ok=True)
    for split in args.splits:
        folder = _FOLDERS[split]
        count = ade20k_panoptic_from_instances(
            os.path.join(ade_dir, "images", folder),
            os.path.join(ade_dir, "annotations", folder),
            os.path.join(ade_dir, "annotations_instance", folder),
            os.path.join(out_dir, f"ade20k_panoptic_{split}"),
            os.path.join(out_dir, f"ade20k_panoptic_{split}.json"),
        )
        print(f"{split}: {count} panoptic annotations in {out_dir}/ade20k_panoptic_{split}.json")
    mirror_inputs(ade_dir, out_dir)


if __name__ == "__main__":
    main()
