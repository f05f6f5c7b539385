#!/usr/bin/env python3
"""Shift ADE20K SceneParsing labels to the Detectron2 convention.

Reads ``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = other, 1..150) and
writes ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png`` (0..149,
255 = ignore), needed by ``ade20k_sem_seg_*`` and ``ade20k_panoptic_*``.

Usage::

    python datasets/prepare_ade20k_sem_seg.py [--dataset-root $DETECTRON2_DATASETS] \
        [--output-root DIR] [--splits training validation] [--workers N]

With ``--output-root`` different from the dataset root, the other entries of
``ADEChallengeData2016`` are symlinked there so that it is a complete dataset root.
"""
import argparse
import os

from mask2former.data.datasets._paths import dataset_root
from mask2former.data.datasets.prepare import ade20k_sem_seg_convert, mirror_inputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", default=dataset_root())
    parser.add_argument("--output-root", default=None)
    parser.add_argument("--splits", nargs="+", default=["training", "validation"])
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = none")
    args = parser.parse_args(argv)
    ade_dir = os.path.join(args.dataset_root, "ADEChallengeData2016")
    out_dir = os.path.join(args.output_root or args.dataset_root, "ADEChallengeData2016")
    for split in args.splits:
        count = ade20k_sem_seg_convert(
            os.path.join(ade_dir, "annotations", split),
            os.path.join(out_dir, "annotations_detectron2", split),
            workers=args.workers,
        )
        print(f"{split}: wrote {count} label PNGs to {out_dir}/annotations_detectron2/{split}")
    mirror_inputs(ade_dir, out_dir)


if __name__ == "__main__":
    main()
