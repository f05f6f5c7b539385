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
    starting at ``warmup_factor`` × the scheduler's initial value.

    Raises:
        ValueError: ``warmup_method`` is neither "linear" nor "constant".
    """

    def __init__(self, scheduler: ParamScheduler, warmup_factor: float, warmup_length: float,
                 warmup_method: str = "linear"):
        first = scheduler(0.0) * warmup_factor
        if warmup_method == "linear":
            ramp = LinearParamScheduler(first, scheduler(warmup_length))
        elif warmup_method == "constant":
            ramp = ConstantParamScheduler(first)
        else:
            raise ValueError(f"SOLVER.WARMUP_METHOD={warmup_method!r}; expected 'linear' or 'constant'")
        # The ramp is stretched over its share of training; the main schedule keeps its own clock.
        remaining = 1.0 - warmup_length
        super().__init__([ramp, scheduler], lengths=[warmup_length, remaining],
                         interval_scaling=["rescaled", "fixed"])


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Multiplies every parameter group's initial lr by ``multiplier(iteration / max_iter)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int,
                 last_iter: int = -1):
        self._multiplier, self._max_iter = multiplier, max_iter
        super().__init__(optimizer, last_iter)

    def state_dict(self):
        # Only the position: the schedule itself is rebuilt from the config on resume.
        return {key: getattr(self, key) for key in ("base_lrs", "last_epoch")}

    def get_lr(self):
        progress = min(self.last_epoch / self._max_iter, 1.0 - 1e-9)
        factor = self._multiplier(progress)
        return [factor * lr for lr in self.base_lrs]


class _PolyWithConstantEnding(PolynomialDecayParamScheduler):
    """``(1 - t)^power``, never below ``constant_ending`` when that is positive."""

    def __init__(self, power: float, constant_ending: float):
        super().__init__(1.0, power)
        self._floor = constant_ending

    def __call__(self, where: float) -> float:
        value = super().__call__(where)
        return max(value, self._floor) if self._floor > 0 else value


def _multi_step(solver) -> ParamScheduler:
    steps = [s for s in solver.STEPS if s <= solver.MAX_ITER]
    if len(steps) < len(solver.STEPS):
        logger.warning(
            "SOLVER.STEPS=%s go beyond SOLVER.MAX_ITER=%d; the steps after MAX_ITER are ignored",
            tuple(solver.STEPS), solver.MAX_ITER,
        )
    decays = [solver.GAMMA**k for k in range(len(steps) + 1)]
    return MultiStepParamScheduler(values=decays, milestones=steps, num_updates=solver.MAX_ITER)


def _poly(solver) -> ParamScheduler:
    return _PolyWithConstantEnding(solver.POLY_LR_POWER, solver.POLY_LR_CONSTANT_ENDING)


_SCHEDULES = {"WarmupMultiStepLR": _multi_step, "WarmupPolyLR": _poly}


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """Build ``SOLVER.LR_SCHEDULER_NAME`` ("WarmupMultiStepLR" or "WarmupPolyLR") for ``optimizer``.

    ``SOLVER.STEPS`` beyond ``MAX_ITER`` are dropped with a warning, as in Detectron2 (so a short
    trial run of a published config needs no schedule edits).

    Raises:
        ValueError: for an unknown schedule name.
    """
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name not in _SCHEDULES:
        raise ValueError(
            f"SOLVER.LR_SCHEDULER_NAME={name!r}; expected 'WarmupMultiStepLR' or 'WarmupPolyLR'"
        )
    warmup_length = min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0)
    schedule = WarmupParamScheduler(
        _SCHEDULES[name](solver), solver.WARMUP_FACTOR, warmup_length, solver.WARMUP_METHOD
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=solver.MAX_ITER)
