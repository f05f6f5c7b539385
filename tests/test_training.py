"""Training end to end on the real COCO samples: learning, exact resumption, multi-process
equivalence, ``train_net.py`` evaluation and the demo on a trained checkpoint."""
import json
import os
import subprocess
import sys

import pytest
import torch

import mask2former
from mask2former.engine.evaluation import evaluate_model
from mask2former.engine.trainer import Trainer
from mask2former.modeling.build import build_model
from training_utils import REPO_ROOT, write_config


def _cfg(path):
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(path))
    return cfg


class _RecordingTrainer(Trainer):
    """Records the loss values of every step; optionally stops (as if killed) at ``stop_at``."""

    def __init__(self, cfg, stop_at=None):
        super().__init__(cfg)
        self.history = {}
        self.stop_at = stop_at

    def run_step(self, batch):
        if self.iter == self.stop_at:
            raise KeyboardInterrupt
        values = super().run_step(batch)
        self.history[self.iter] = values
        return values


def test_overfitting_raises_pq_far_above_untrained(dataset_root, tmp_path):
    cfg = _cfg(write_config(tmp_path / "cfg.yaml", output_dir=tmp_path, iters=150, batch=3))
    torch.manual_seed(0)
    untrained = evaluate_model(cfg, build_model(cfg))
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trained = trainer.train() or evaluate_model(cfg, trainer.model)
    before, after = untrained["panoptic_seg"]["PQ"], trained["panoptic_seg"]["PQ"]
    assert after > before + 15, (before, after)
    assert trained["sem_seg"]["mIoU"] > untrained["sem_seg"]["mIoU"] + 10
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [m for m in lines if "total_loss" in m]
    assert losses[-1]["iteration"] == 149 and losses[-1]["total_loss"] < losses[0]["total_loss"]
    assert lines[-1]["iteration"] == 149 and lines[-1]["panoptic_seg/PQ"] == after


def test_resume_continues_with_identical_losses(dataset_root, tmp_path):
    full_cfg = _cfg(write_config(tmp_path / "a.yaml", output_dir=tmp_path / "a", iters=4, ckpt=2))
    torch.manual_seed(0)
    full = _RecordingTrainer(full_cfg)
    full.resume_or_load(resume=False)
    full.train()

    cut_cfg = _cfg(write_config(tmp_path / "b.yaml", output_dir=tmp_path / "b", iters=4, ckpt=2))
    torch.manual_seed(0)
    interrupted = _RecordingTrainer(cut_cfg, stop_at=2)
    interrupted.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    torch.manual_seed(123)  # a different RNG state: resumption must restore the saved one
    resumed = _RecordingTrainer(cut_cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    assert interrupted.history.keys() == {0, 1} and resumed.history.keys() == {2, 3}
    for it in range(4):
        expected = full.history[it]
        got = interrupted.history.get(it) or resumed.history[it]
        assert got == expected, it


def test_train_net_eval_only_and_demo_use_a_trained_checkpoint(dataset_root, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", output_dir=tmp_path / "run", iters=2)
    env = dict(os.environ, DETECTRON2_DATASETS=str(dataset_root), PYTHONPATH=str(REPO_ROOT))
    train = subprocess.run([sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", str(config)],
                           capture_output=True, text=True, env=env, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = tmp_path / "run" / "model_final.pth"
    assert checkpoint.is_file() and (tmp_path / "run" / "last_checkpoint").read_text() == "model_final.pth"
    evaluate = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", str(config), "--eval-only",
         "MODEL.WEIGHTS", str(checkpoint), "OUTPUT_DIR", str(tmp_path / "eval")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    for metric in ("panoptic_seg: PQ=", "segm: AP=", "sem_seg: mIoU="):
        assert metric in evaluate.stdout
    assert (tmp_path / "eval" / "inference" / "coco_2017_val_panoptic_with_sem_seg" / "predictions.json").is_file()
    image = dataset_root / "coco" / "val2017" / "000000439180.jpg"
    demo = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo" / "demo.py"), "--config-file", str(config), "--input", str(image),
         "--output", str(tmp_path / "demo"), "--opts", "MODEL.WEIGHTS", str(checkpoint)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo" / "000000439180.png").is_file()
