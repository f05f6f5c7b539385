"""Two gloo worker processes with one image each train exactly like one process with both."""
import pickle

import pytest
import torch

import mask2former
from mask2former.data.build import SeededMapDataset
from mask2former.data.dataset_mappers import build_dataset_mapper
from mask2former.data.datasets import get_builtin_metadata, load_coco_panoptic_json
from mask2former.engine.launch import launch
from mask2former.engine.trainer import Trainer
from mask2former.modeling import matcher, point_sampling
from training_utils import make_dataset_root, write_config


class _TorchWithFixedRand:
    """``torch`` whose ``rand(n, ...)`` repeats one fixed row ``n`` times, so every mask gets the
    same sampled points whatever process, batch position or number of masks it comes with."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def rand(*size, device=None, **kwargs):
        generator = torch.Generator().manual_seed(sum(size[1:]) * 7919 + len(size))
        row = torch.rand(*size[1:], generator=generator)
        return row.expand(*size).clone().to(device)


def _step(cfg_path, batch, out_path):
    matcher.torch = point_sampling.torch = _TorchWithFixedRand()
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(cfg_path)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    shard = batch[rank::world]
    losses = trainer.run_step(shard)
    grads = {n: p.grad.clone() for n, p in trainer._unwrapped.named_parameters() if p.grad is not None}
    if rank == 0:
        with open(out_path, "wb") as f:
            pickle.dump({"losses": losses, "grads": grads}, f)


def test_two_gloo_workers_match_one_worker(datasets_root, tmp_path):
    root = make_dataset_root(datasets_root, tmp_path / "datasets")
    extra = "MODEL: {MASK_FORMER: {NO_OBJECT_WEIGHT: 1.0}}\nSOLVER: {CLIP_GRADIENTS: {ENABLED: False}}\n"
    config = str(write_config(tmp_path / "cfg.yaml", output_dir=tmp_path / "out", batch=2, extra=extra))
    cfg = mask2former.get_cfg()
    cfg.merge_from_file(config)
    records = load_coco_panoptic_json(
        str(root / "coco/annotations/panoptic_val2017.json"), str(root / "coco/val2017"),
        str(root / "coco/panoptic_val2017"), get_builtin_metadata("coco_panoptic"),
    )
    dataset = SeededMapDataset(records, build_dataset_mapper(cfg, is_train=True), seed=0)
    batch = [dataset[(0, 0)], dataset[(1, 1)]]

    _step(config, batch, tmp_path / "single.pkl")
    launch(_step, 2, dist_url="auto", args=(config, batch, tmp_path / "double.pkl"))
    with open(tmp_path / "single.pkl", "rb") as f:
        single = pickle.load(f)
    with open(tmp_path / "double.pkl", "rb") as f:
        double = pickle.load(f)
    assert single["losses"].keys() == double["losses"].keys()
    for name, value in single["losses"].items():
        assert double["losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert single["grads"].keys() == double["grads"].keys()
    for name, grad in single["grads"].items():
        # float summation noise grows with each tensor's scale (elements near zero of a large
        # gradient differ by ~1e-5 of its maximum); a gradient-averaging error would be O(max)
        atol = max(1e-4 * float(grad.abs().max()), 1e-7)
        torch.testing.assert_close(double["grads"][name], grad, rtol=1e-3, atol=atol, msg=lambda m: f"{name}: {m}")
