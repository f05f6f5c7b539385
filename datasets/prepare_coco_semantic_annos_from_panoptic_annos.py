#!/usr/bin/env python3
"""Make COCO semantic label PNGs from the panoptic annotations.

Writes ``coco/panoptic_semseg_{train,val}2017/*.png`` (uint8: contiguous class id 0..132 of the
133 COCO panoptic categories, 255 = unlabeled), needed by the
``coco_2017_*_panoptic_with_sem_seg`` datasets (Mask2Former COCO panoptic training).

Usage::

    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py \
        [--dataset-root $DETECTRON2_DATASETS] [--output-root DIR] [--splits val2017 train2017] \
        [--workers N]

``--output-root`` (default: the dataset root) may differ from the dataset root, e.g. when that
one is read-only: the other entries of ``<dataset-root>/coco`` are then symlinked into
``<output-root>/coco`` so that ``<output-root>`` is a complete dataset root.
"""
import argparse
import os

from mask2former.data.datasets._paths import dataset_root
from mask2former.data.datasets.prepare import (
    coco_panoptic_to_semantic,
    default_workers,
    mirror_inputs,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", default=dataset_root())
    parser.add_argument("--output-root", default=None)
    parser.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    parser.add_argument(
        "--workers", type=int, default=None, help="processes; 0 = no multiprocessing"
    )
    args = parser.parse_args(argv)
    coco_dir = os.path.join(args.dataset_root, "coco")
    out_dir = os.path.join(args.output_root or args.dataset_root, "coco")
    for split in args.splits:
        count = coco_panoptic_to_semantic(
            os.path.join(coco_dir, "annotations", f"panoptic_{split}.json"),
            os.path.join(coco_dir, f"panoptic_{split}"),
            os.path.join(out_dir, f"panoptic_semseg_{split}"),
            workers=default_workers(args.workers),
        )
        print(f"{split}: wrote {count} semantic PNGs to {out_dir}/panoptic_semseg_{split}")
    mirror_inputs(coco_dir, out_dir)


if __name__ == "__main__":
    main()
