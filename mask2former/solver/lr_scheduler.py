"""Iteration-based learning-rate schedules built on fvcore's ``ParamScheduler``s.

``WarmupMultiStepLR`` (step decay by ``GAMMA`` at ``STEPS``, used for COCO and Cityscapes
instance/panoptic) and ``WarmupPolyLR`` (``(1 - t)^POLY_LR_POWER``, used for semantic configs),
both with linear or constant warm-up over ``WARMUP_ITERS`` starting at ``WARMUP_FACTOR``.
"""
import logging

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
)

logger = logging.getLogger(__name__)


class WarmupParamScheduler(CompositeParamScheduler):
    """``scheduler`` preceded by a warm-up over the first ``warmup_length`` fraction of training,
    starting at ``warmup_factor`` × the scheduler's initial value."""

    def __init__(self, scheduler: ParamScheduler, warmup_factor: float, warmup_length: float,
                 warmup_method: str = "linear"):
        end_value = scheduler(warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(f"SOLVER.WARMUP_METHOD={warmup_method!r}; expected 'linear' or 'constant'")
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "fixed"],
            lengths=[warmup_length, 1 - warmup_length],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Multiplies every parameter group's initial lr by ``multiplier(iteration / max_iter)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int,
                 last_iter: int = -1):
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self):
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self):
        factor = self._multiplier(min(self.last_epoch / self._max_iter, 1.0 - 1e-9))
        return [base_lr * factor for base_lr in self.base_lrs]


class _PolyWithConstantEnding(PolynomialDecayParamScheduler):
    def __init__(self, power: float, constant_ending: float):
        super().__init__(1.0, power)
        self._constant_ending = constant_ending

    def __call__(self, where: float) -> float:
        value = super().__call__(where)
        if self._constant_ending > 0 and value < self._constant_ending:
            return self._constant_ending
        return value


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """Build ``SOLVER.LR_SCHEDULER_NAME`` ("WarmupMultiStepLR" or "WarmupPolyLR") for ``optimizer``.

    ``SOLVER.STEPS`` beyond ``MAX_ITER`` are dropped with a warning, as in Detectron2 (so a short
    trial run of a published config needs no schedule edits).

    Raises:
        ValueError: for an unknown schedule name.
    """
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name == "WarmupMultiStepLR":
        steps = [s for s in solver.STEPS if s <= solver.MAX_ITER]
        if len(steps) != len(solver.STEPS):
            logger.warning(
                "SOLVER.STEPS=%s go beyond SOLVER.MAX_ITER=%d; the steps after MAX_ITER are ignored",
                tuple(solver.STEPS), solver.MAX_ITER,
            )
        scheduler = MultiStepParamScheduler(
            values=[solver.GAMMA**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=solver.MAX_ITER,
        )
    elif name == "WarmupPolyLR":
        scheduler = _PolyWithConstantEnding(solver.POLY_LR_POWER, solver.POLY_LR_CONSTANT_ENDING)
    else:
        raise ValueError(
            f"SOLVER.LR_SCHEDULER_NAME={name!r}; expected 'WarmupMultiStepLR' or 'WarmupPolyLR'"
        )
    scheduler = WarmupParamScheduler(
        scheduler,
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=scheduler, max_iter=solver.MAX_ITER)
