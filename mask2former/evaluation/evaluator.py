"""Evaluator interface and the loop that runs a model over a dataset (Detectron2 semantics)."""
import datetime
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from mask2former.utils import comm

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)

_LOG_PERIOD_S = 5.0


class DatasetEvaluator:
    """Accumulates model inputs/outputs with :meth:`process` and summarises them in :meth:`evaluate`.

    Call order: ``reset()`` once, ``process(inputs, outputs)`` once per batch, ``evaluate()``
    once (on every rank in distributed runs: evaluators gather to rank 0 inside it).
    """

    def reset(self) -> None:
        """Forget everything processed so far (start a new round)."""

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Consume one batch.

        Args:
            inputs: the list of dataset dicts given to the model (one per image).
            outputs: the list returned by ``model(inputs)``, aligned with ``inputs``.
        """

    def evaluate(self) -> Optional[dict]:
        """Summarise everything processed.

        Returns:
            ``{task name: {metric name: value}}`` on the main process (metrics in percent for
            the evaluators of this package); ``None`` (or ``{}``) on other ranks.
        """
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators side by side and merges their results."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]):
        """
        Args:
            evaluators: the evaluators to combine; their result keys (task names) must differ.
        """
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for member in self._evaluators:
            member.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for member in self._evaluators:
            member.process(inputs, outputs)

    def evaluate(self) -> "OrderedDict[str, dict]":
        """
        Raises:
            ValueError: two evaluators returned the same task name.
        """
        merged: "OrderedDict[str, dict]" = OrderedDict()
        # Every member evaluates on every rank (they gather inside); only rank 0 merges.
        per_member = [(member, member.evaluate()) for member in self._evaluators]
        if not comm.is_main_process():
            return merged
        for member, result in per_member:
            clash = set(result or {}) & set(merged)
            if clash:
                raise ValueError(
                    f"{type(member).__name__} and an earlier evaluator return the same key "
                    f"'{sorted(clash)[0]}'; each task name may come from one evaluator only"
                )
            merged.update(result or {})
        return merged


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode; its previous mode is restored on exit."""
    was_training = model.training
    model.train(False)
    try:
        yield
    finally:
        model.train(was_training)


class _PhaseTimer:
    """Wall-clock seconds spent in each phase of the loop since the last :meth:`restart`."""

    PHASES = ("data", "inference", "eval")

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - begin


_END = object()


def _timed_batches(data_loader: Iterable, timer: _PhaseTimer) -> Iterator:
    """The batches of ``data_loader``, with the time spent fetching each counted as "data"."""
    batches = iter(data_loader)
    while True:
        with timer.phase("data"):
            batch = next(batches, _END)
        if batch is _END:
            return
        yield batch


def _as_evaluator(evaluator) -> DatasetEvaluator:
    if evaluator is None:
        return DatasetEvaluators([])
    if isinstance(evaluator, (list, tuple)):
        return DatasetEvaluators(evaluator)
    return evaluator


def inference_on_dataset(
    model,
    data_loader: Iterable,
    evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
) -> dict:
    """Run ``model`` over every batch of ``data_loader`` and evaluate the outputs.

    The model runs under ``torch.no_grad()``; an ``nn.Module`` is put in eval mode for the
    duration and restored afterwards. Progress (batches done, seconds per batch for data loading,
    inference and evaluation, ETA) is logged every few seconds; the first
    ``min(5, len(data_loader) - 1)`` batches are treated as warm-up and left out of the timing.

    Args:
        model: callable taking one batch (``list[dict]``) and returning ``list[dict]``.
        data_loader: iterable of batches with a ``len()`` (in distributed runs: this rank's share).
        evaluator: an evaluator, a list of evaluators (combined with :class:`DatasetEvaluators`),
            or ``None`` to only run (and time) the model.

    Returns:
        ``evaluator.evaluate()`` on the main process; ``{}`` on other ranks or without evaluator.
    """
    total = len(data_loader)
    logger.info("Running inference on %d batches", total)
    collector = _as_evaluator(evaluator)
    collector.reset()
    warmup = max(min(5, total - 1), 0)
    timer = _PhaseTimer()
    next_report = time.perf_counter() + _LOG_PERIOD_S
    eval_mode = inference_context(model) if isinstance(model, nn.Module) else nullcontext()
    with eval_mode, torch.no_grad():
        for done, inputs in enumerate(_timed_batches(data_loader, timer), start=1):
            with timer.phase("inference"):
                outputs = model(inputs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
            with timer.phase("eval"):
                collector.process(inputs, outputs)
            if done == total or time.perf_counter() >= next_report:
                next_report = time.perf_counter() + _LOG_PERIOD_S
                _log_progress(timer, done, total, done - warmup if done > warmup else done)
            if done == warmup:
                timer.restart()

    timed = max(total - warmup, 1)
    wall, compute = timer.elapsed(), timer.seconds["inference"]
    devices = comm.get_world_size()
    logger.info(
        "Inference took %s in all, %.6f s per batch and device (%d devices)",
        datetime.timedelta(seconds=wall), wall / timed, devices,
    )
    logger.info(
        "Model forward alone took %s, %.6f s per batch and device (%d devices)",
        datetime.timedelta(seconds=int(compute)), compute / timed, devices,
    )
    summary = collector.evaluate()
    return {} if summary is None else summary


def _log_progress(timer: _PhaseTimer, done: int, total: int, timed: int) -> None:
    """One progress line: per-batch seconds of each phase over the ``timed`` batches, and the ETA."""
    per_batch = timer.elapsed() / timed
    phases = ", ".join(f"{name} {timer.seconds[name] / timed:.4f}" for name in timer.PHASES)
    eta = datetime.timedelta(seconds=int(per_batch * (total - done)))
    logger.info(f"Inference done {done}/{total}: s/batch {phases}, total {per_batch:.4f}; ETA={eta}")
