"""Safe checkpoint loading, crash-safe writes, bad training data and fp16 loss scaling."""
import fractions
import io
import json
import logging
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mask2former
from mask2former.checkpoint import Checkpointer, IncompatibleCheckpointError
from mask2former.checkpoint.safe_pickle import UnsafePickleError, load_pickle
from mask2former.data.build import SKIPPED_KEY, CorruptSampleError, SeededMapDataset
from mask2former.data.catalog import DatasetCatalog
from mask2former.data.dataset_mappers import build_dataset_mapper
from mask2former.data.datasets.coco import load_coco_json
from mask2former.data.datasets.coco_panoptic import load_coco_panoptic_json
from mask2former.engine.trainer import Trainer
from mask2former.modeling.build import build_model
from mask2former.utils.atomic_io import append_line, atomic_write
from training_utils import write_config

FIXTURES = ("thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic")


def _fixture_cfg(reference_dir: Path, name: str, *overrides):
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(reference_dir / name / "config.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *overrides])
    return cfg


class _RunsShellCommand:
    """Unpickling this runs ``touch <marker>``, as a crafted checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- safe loading -------------------------------------------------------------------------------


def test_crafted_pickle_is_refused_before_it_runs_anything(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final_crafted.pkl"
    payload = {"model": {"backbone.stem.conv1.weight": _RunsShellCommand(marker)}, "__author__": "x"}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        Checkpointer(torch.nn.Linear(2, 2)).load(str(path))
    assert str(path) in str(info.value)
    assert "'posix.system'" in str(info.value) and "MASK2FORMER_TRUST_PICKLE" in str(info.value)
    assert not marker.exists(), "the crafted pickle executed its command"


def test_trusted_opt_in_restores_full_pickle(tmp_path, monkeypatch):
    data = pickle.dumps({"ratio": fractions.Fraction(1, 3)})
    with pytest.raises(UnsafePickleError, match="fractions.Fraction"):
        load_pickle(io.BytesIO(data), "ratio.pkl")
    assert load_pickle(io.BytesIO(data), "ratio.pkl", trusted=True) == {"ratio": fractions.Fraction(1, 3)}
    monkeypatch.setenv("MASK2FORMER_TRUST_PICKLE", "1")
    assert load_pickle(io.BytesIO(data), "ratio.pkl")["ratio"] == fractions.Fraction(1, 3)


@pytest.mark.parametrize("name", FIXTURES)
def test_model_zoo_fixture_pickles_load_through_the_restricted_unpickler(reference_dir, name):
    path = reference_dir / name / "model.pkl"
    with open(path, "rb") as f:
        expected = pickle.load(f, encoding="latin1")
    with open(path, "rb") as f:
        got = load_pickle(f, str(path))
    assert got.keys() == expected.keys()
    assert list(got["model"]) == list(expected["model"])
    assert all(np.array_equal(got["model"][k], v) for k, v in expected["model"].items())
    assert got["model"]._metadata == expected["model"]._metadata
    model = build_model(_fixture_cfg(reference_dir, name))
    Checkpointer(model).load(str(path), strict=True)


def test_training_checkpoint_with_numpy_rng_state_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    Checkpointer(model, str(tmp_path)).save("model_0000001", iteration=1, rng={"numpy": np.random.get_state()})
    extra = Checkpointer(torch.nn.Linear(3, 2), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and extra["rng"]["numpy"][0] == "MT19937"


# --- wrong or damaged checkpoints --------------------------------------------------------------


def test_checkpoint_of_another_architecture_is_an_error_naming_file_config_and_groups(reference_dir, caplog):
    cfg = _fixture_cfg(reference_dir, "thin_r50_coco_panoptic")
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swin = str(reference_dir / "thin_swin_coco_instance" / "model.pkl")
    with pytest.raises(IncompatibleCheckpointError) as info:
        Checkpointer.from_config(cfg, model).load(swin)
    message = str(info.value)
    assert swin in message and str(reference_dir / "thin_r50_coco_panoptic" / "config.yaml") in message
    assert "missing in the checkpoint" in message and "backbone.res" in message
    assert "unexpected in the checkpoint" in message and "backbone.layers" in message
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing may be loaded"

    cfg.merge_from_list(["MODEL.ALLOW_PARTIAL_WEIGHTS", True])
    with caplog.at_level(logging.INFO, logger="mask2former.checkpoint.checkpointer"):
        Checkpointer.from_config(cfg, model).load(swin)
    assert "missing" in caplog.text


def test_finetuning_to_another_class_count_reinitialises_only_the_class_head(reference_dir, caplog):
    path = reference_dir / "thin_r50_coco_panoptic" / "model.pkl"
    cfg = _fixture_cfg(reference_dir, "thin_r50_coco_panoptic", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5)
    model = build_model(cfg)
    fresh_head = model.sem_seg_head.predictor.class_embed.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="mask2former.checkpoint.checkpointer"):
        Checkpointer.from_config(cfg, model).load(str(path))
    assert "Class head re-initialised: the checkpoint predicts 133 classes, the model 5" in caplog.text
    assert torch.equal(model.sem_seg_head.predictor.class_embed.weight, fresh_head)
    weights = load_pickle(open(path, "rb"), str(path))["model"]
    mask_embed = "sem_seg_head.predictor.mask_embed.layers.2.weight"
    assert np.array_equal(model.state_dict()[mask_embed].numpy(), weights[mask_embed])


def test_truncated_checkpoint_names_the_file_and_the_earlier_one_to_resume_from(tmp_path):
    model = torch.nn.Linear(3, 2)
    saver = Checkpointer(model, str(tmp_path))
    saver.save("model_0000004", iteration=4)
    os.utime(tmp_path / "model_0000004.pth", (1, 1))  # older than the next one
    saver.save("model_0000009", iteration=9)
    damaged = tmp_path / "model_0000009.pth"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"Cannot read checkpoint {damaged}"):
        Checkpointer(torch.nn.Linear(3, 2)).load(str(damaged))
    with pytest.raises(ValueError) as info:
        Checkpointer(torch.nn.Linear(3, 2), str(tmp_path)).resume_or_load("", resume=True)
    message = str(info.value)
    assert f"Cannot resume from {damaged}" in message
    assert f"the newest intact earlier checkpoint is {tmp_path / 'model_0000004.pth'}" in message


# --- crash-safe writes -------------------------------------------------------------------------


def test_atomic_write_replaces_whole_files_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(target)) as f:
            f.write("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
    with atomic_write(str(target)) as f:
        f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())
    append_line(str(tmp_path / "metrics.json"), json.dumps({"iteration": 0}))
    append_line(str(tmp_path / "metrics.json"), json.dumps({"iteration": 1}))
    assert (tmp_path / "metrics.json").read_text() == '{"iteration": 0}\n{"iteration": 1}\n'


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- bad training data -------------------------------------------------------------------------


def test_malformed_annotation_json_names_the_file(tmp_path, datasets_root):
    broken = tmp_path / "instances_broken.json"
    broken.write_text('{"images": [], "annotations": [')
    with pytest.raises(ValueError, match=f"Cannot parse annotation file {broken}: .* line 1"):
        load_coco_json(str(broken), str(datasets_root / "coco" / "val2017"))
    panoptic = tmp_path / "panoptic_broken.json"
    panoptic.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match=rf"Annotation file {panoptic} lacks the keys \['images'\]"):
        load_coco_panoptic_json(str(panoptic), str(datasets_root / "coco" / "val2017"),
                                str(datasets_root / "coco" / "panoptic_val2017"), {})


def _records_with_a_corrupt_image(tmp_path: Path):
    records = [dict(r) for r in DatasetCatalog.get("coco_2017_val_panoptic")]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(Path(records[0]["file_name"]).read_bytes()[:300])  # truncated JPEG
    records[0]["file_name"] = str(corrupt)
    return records, corrupt


def test_corrupt_image_stops_with_its_name_or_is_skipped_when_asked(dataset_root, tmp_path):
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(write_config(tmp_path / "cfg.yaml", output_dir=tmp_path)))
    records, corrupt = _records_with_a_corrupt_image(tmp_path)
    mapper = build_dataset_mapper(cfg, is_train=True)
    with pytest.raises(CorruptSampleError, match=f"Cannot load training sample {corrupt}"):
        SeededMapDataset(records, mapper, seed=0)[(0, 0)]
    sample = SeededMapDataset(records, mapper, seed=0, skip_corrupt=True)[(0, 0)]
    assert sample[SKIPPED_KEY] == 1 and sample["file_name"] != str(corrupt)


def test_training_skips_corrupt_samples_with_a_running_count(dataset_root, tmp_path):
    records, _ = _records_with_a_corrupt_image(tmp_path)
    DatasetCatalog.register("coco_val_panoptic_one_corrupt", lambda: [dict(r) for r in records])
    try:
        cfg = mask2former.get_cfg()
        cfg.merge_from_file(str(write_config(tmp_path / "cfg.yaml", output_dir=tmp_path / "run", iters=4,
                                             train="coco_val_panoptic_one_corrupt", test="")))
        cfg.merge_from_list(["DATALOADER.SKIP_CORRUPT_SAMPLES", True, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", False])
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        DatasetCatalog.remove("coco_val_panoptic_one_corrupt")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    assert trainer.skipped_samples > 0
    assert records[-1]["data/skipped_samples"] == trainer.skipped_samples


# --- fp16 loss scaling --------------------------------------------------------------------------


def test_fp16_loss_scaling_skips_steps_without_the_scheduler_order_warning(dataset_root, tmp_path):
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(str(write_config(tmp_path / "cfg.yaml", output_dir=tmp_path, iters=2, test="")))
    cfg.merge_from_list(["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.scaler.get_scale() < 2.0**16, "expected the initial loss scale to overflow"
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert trainer.scheduler.last_epoch == 2  # the schedule follows the iteration count
