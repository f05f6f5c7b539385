"""Optimizer parameter groups, gradient clipping and learning-rate schedules."""
import pytest
import torch
from fvcore.common.config import CfgNode
from torch import nn

from mask2former.solver import build_lr_scheduler
from mask2former.solver.optimizer import get_param_groups


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.query_feat = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)


def _solver_cfg(**overrides):
    solver = CfgNode({
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR", "MAX_ITER": 100, "STEPS": (80, 90), "GAMMA": 0.1,
        "WARMUP_FACTOR": 1.0, "WARMUP_ITERS": 0, "WARMUP_METHOD": "linear",
        "POLY_LR_POWER": 0.9, "POLY_LR_CONSTANT_ENDING": 0.0,
    })
    solver.update(overrides)
    return CfgNode({"SOLVER": solver})


def test_param_groups_follow_published_recipe():
    model = _Toy()
    groups = get_param_groups(model, base_lr=1e-4, weight_decay=0.05, weight_decay_norm=0.0,
                              weight_decay_embed=0.0, backbone_multiplier=0.1)
    by_param = {id(g["params"][0]): g for g in groups}
    conv, bn = model.backbone[0], model.backbone[1]
    assert by_param[id(conv.weight)]["lr"] == pytest.approx(1e-5)
    assert by_param[id(conv.weight)]["weight_decay"] == 0.05
    assert by_param[id(bn.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.query_feat.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.head.weight)] == {"params": [model.head.weight], "lr": 1e-4, "weight_decay": 0.05}
    assert len(groups) == sum(1 for _ in model.parameters())


def _lrs(cfg, iters):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    values = []
    for _ in range(iters):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_multistep_schedule_decays_at_steps():
    lrs = _lrs(_solver_cfg(), 100)
    assert lrs[79] == pytest.approx(1.0) and lrs[80] == pytest.approx(0.1) and lrs[95] == pytest.approx(0.01)


def test_linear_warmup_then_poly():
    lrs = _lrs(_solver_cfg(LR_SCHEDULER_NAME="WarmupPolyLR", WARMUP_ITERS=10, WARMUP_FACTOR=0.01), 100)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[0] < lrs[5] < lrs[10]
    assert lrs[50] == pytest.approx((1 - 0.5) ** 0.9, rel=1e-6)
    assert lrs[99] == pytest.approx((1 - 0.99) ** 0.9, rel=1e-6)


def test_schedule_errors_name_the_key():
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        _lrs(_solver_cfg(LR_SCHEDULER_NAME="Cosine"), 1)


def test_steps_beyond_max_iter_are_dropped_with_one_warning(caplog):
    with caplog.at_level("WARNING", logger="mask2former.solver.lr_scheduler"):
        lrs = _lrs(_solver_cfg(MAX_ITER=6, STEPS=(3, 327778, 355092)), 6)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "327778" in warnings[0].getMessage()
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])  # the step within MAX_ITER is kept
