"""Helpers for the training tests: a small dataset root over ../shared and a CPU-sized config."""
import os
from pathlib import Path

from mask2former.data.datasets.prepare import coco_panoptic_to_semantic

REPO_ROOT = Path(__file__).resolve().parents[1]

# The published COCO panoptic R50 recipe with a thin network and CPU-sized inputs.
THIN_OVERRIDES = """
MODEL:
  WEIGHTS: ""
  DEVICE: cpu
  RESNETS: {{STEM_OUT_CHANNELS: 16, RES2_OUT_CHANNELS: 64, WIDTH_PER_GROUP: 16}}
  SEM_SEG_HEAD: {{CONVS_DIM: 64, MASK_DIM: 64, TRANSFORMER_ENC_LAYERS: 1}}
  MASK_FORMER: {{HIDDEN_DIM: 64, DIM_FEEDFORWARD: 128, NUM_OBJECT_QUERIES: 20, DEC_LAYERS: 4,
                TRAIN_NUM_POINTS: 1024}}
INPUT: {{IMAGE_SIZE: {size}, MIN_SCALE: 1.0, MAX_SCALE: 1.0, MIN_SIZE_TEST: {size}, MAX_SIZE_TEST: {max_size}}}
DATASETS: {{TRAIN: [{train}], TEST: [{test}]}}
SOLVER: {{IMS_PER_BATCH: {batch}, BASE_LR: 0.001, MAX_ITER: {iters}, STEPS: [{steps}], CHECKPOINT_PERIOD: {ckpt},
         WARMUP_ITERS: 5, AMP: {{ENABLED: False}}}}
TEST: {{EVAL_PERIOD: 0}}
DATALOADER: {{NUM_WORKERS: 0}}
SEED: 0
"""


def make_dataset_root(shared_datasets: Path, root: Path) -> Path:
    """A ``$DETECTRON2_DATASETS`` folder linking the real COCO samples, plus the semantic maps of
    the panoptic annotations (needed by ``coco_2017_val_panoptic_with_sem_seg``)."""
    coco = root / "coco"
    coco.mkdir(parents=True, exist_ok=True)
    for name in ("train2017", "val2017", "annotations", "panoptic_val2017"):
        link = coco / name
        if not link.exists():
            os.symlink(shared_datasets / "coco" / name, link)
    coco_panoptic_to_semantic(
        str(coco / "annotations" / "panoptic_val2017.json"),
        str(coco / "panoptic_val2017"),
        str(coco / "panoptic_semseg_val2017"),
    )
    return root


def write_config(path: Path, *, output_dir: Path, size=128, max_size=192, iters=10, batch=2, ckpt=1000,
                 train="coco_2017_val_panoptic", test="coco_2017_val_panoptic_with_sem_seg",
                 base="configs/coco/panoptic/R50.yaml", extra: str = "") -> Path:
    """Write a YAML config based on ``base`` with the thin overrides, then ``extra`` YAML on top
    (in a second file inheriting the first); returns the path of the last file."""
    text = f"_BASE_: {REPO_ROOT / base}\nOUTPUT_DIR: {output_dir}\n" + THIN_OVERRIDES.format(
        size=size, max_size=max_size, iters=iters, steps=max(iters - 1, 1), batch=batch, ckpt=ckpt,
        train=train, test=test,
    )
    thin = path.with_name(path.stem + "_thin.yaml") if extra else path
    thin.write_text(text)
    if extra:
        path.write_text(f"_BASE_: {thin}\n{extra}")
    return path
