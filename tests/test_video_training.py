"""Training the video model on COCO pseudo-clips cut from the real COCO train images
(../shared/data): a few hundred CPU iterations raise YouTube-VIS AP far above the untrained model,
and ``train_net.py`` trains and evaluates a video config."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mask2former
from mask2former.data import DatasetCatalog, MetadataCatalog
from mask2former.data.datasets import get_builtin_metadata, load_coco_json
from mask2former.engine.evaluation import evaluate_model
from mask2former.engine.trainer import Trainer
from mask2former.modeling.build import build_model

REPO = Path(__file__).resolve().parents[1]
SUBSET = "coco_pseudo_clip_test_subset"

# The published YouTube-VIS R50 recipe with a thin network, 2-frame pseudo-clips of short side 128.
THIN = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.WIDTH_PER_GROUP", 16,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64, "MODEL.SEM_SEG_HEAD.MASK_DIM", 64, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 80,
    "MODEL.MASK_FORMER.HIDDEN_DIM", 64, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 128,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 20, "MODEL.MASK_FORMER.DEC_LAYERS", 4, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 1024,
    "INPUT.DATASET_MAPPER_NAME", "coco_pseudo_clip", "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 192,
    "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 192,
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.001, "SOLVER.WARMUP_ITERS", 5, "SOLVER.AMP.ENABLED", False,
    "SOLVER.CHECKPOINT_PERIOD", 100000, "DATALOADER.NUM_WORKERS", 0, "SEED", 0,
]


@pytest.fixture(scope="module")
def coco_root(datasets_root, tmp_path_factory):
    """A dataset root with the real COCO train/val samples."""
    root = tmp_path_factory.mktemp("datasets")
    (root / "coco").mkdir()
    for name in ("train2017", "val2017", "annotations"):
        os.symlink(datasets_root / "coco" / name, root / "coco" / name)
    return root


@pytest.fixture(scope="module")
def subset(coco_root):
    """The first 4 COCO train images holding 1 to 3 objects, none smaller than 3000 box pixels."""
    coco = coco_root / "coco"

    def load():
        records = load_coco_json(str(coco / "annotations/instances_train2017.json"), str(coco / "train2017"),
                                 "coco_2017_train")
        return [r for r in records if 1 <= len(r["annotations"]) <= 3
                and all(not a["iscrowd"] and a["bbox"][2] * a["bbox"][3] > 3000 for a in r["annotations"])][:4]

    DatasetCatalog.register(SUBSET, load)
    MetadataCatalog.get(SUBSET).set(**get_builtin_metadata("coco"))
    yield SUBSET
    DatasetCatalog.remove(SUBSET)
    MetadataCatalog.remove(SUBSET)


def _cfg(tmp_path, iters, train, test):
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(REPO / "configs/youtubevis_2019/R50.yaml"))
    cfg.merge_from_list(THIN + ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", (iters - 1,), "OUTPUT_DIR", str(tmp_path),
                                "DATASETS.TRAIN", (train,), "DATASETS.TEST", (test,)])
    return cfg


def test_training_on_pseudo_clips_raises_video_ap_far_above_untrained(subset, tmp_path):
    cfg = _cfg(tmp_path, 200, subset, subset)
    torch.manual_seed(0)
    untrained = evaluate_model(cfg, build_model(cfg))["segm"]
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trained = trainer.train() or evaluate_model(cfg, trainer.model)
    trained = trained["segm"]
    assert trained["AP"] > untrained["AP"] + 30, (untrained["AP"], trained["AP"])
    assert trained["AP50"] > 50
    assert (tmp_path / "inference" / subset / "results.json").is_file()


def test_train_net_trains_and_evaluates_a_video_config(coco_root, tmp_path):
    opts = [str(v) if not isinstance(v, tuple) else str(v).replace(" ", "") for v in THIN]
    common = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(REPO / "configs/youtubevis_2019/R50.yaml")]
    env = dict(os.environ, DETECTRON2_DATASETS=str(coco_root), PYTHONPATH=str(REPO))
    datasets = ["DATASETS.TRAIN", "('coco_2017_train',)", "DATASETS.TEST", "('coco_2017_val',)"]
    train = subprocess.run(common + opts + datasets + ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
                                                      "OUTPUT_DIR", str(tmp_path / "run")],
                           capture_output=True, text=True, env=env, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = tmp_path / "run" / "model_final.pth"
    assert checkpoint.is_file()
    evaluate = subprocess.run(common + ["--eval-only"] + opts + datasets + ["MODEL.WEIGHTS", str(checkpoint),
                                                                           "OUTPUT_DIR", str(tmp_path / "eval")],
                              capture_output=True, text=True, env=env, timeout=900)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "segm: AP=" in evaluate.stdout + evaluate.stderr
    assert (tmp_path / "eval" / "inference" / "coco_2017_val" / "results.json").is_file()
