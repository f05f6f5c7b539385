"""Evaluator interface and the loop that runs a model over a dataset (Detectron2 semantics)."""
import datetime
import logging
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
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
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> "OrderedDict[str, dict]":
        """
        Raises:
            ValueError: two evaluators returned the same task name.
        """
        results: "OrderedDict[str, dict]" = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if not comm.is_main_process() or not result:
                continue
            for task, metrics in result.items():
                if task in results:
                    raise ValueError(
                        f"Evaluators {self._evaluators} produce results with the same key '{task}'."
                    )
                results[task] = metrics
        return results


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode; its previous mode is restored on exit."""
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


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
    num_devices = comm.get_world_size()
    total = len(data_loader)
    logger.info("Start inference on %d batches", total)
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()

    num_warmup = max(min(5, total - 1), 0)
    start_time = time.perf_counter()
    data_time = compute_time = eval_time = 0.0
    last_log = time.perf_counter()
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())

        data_start = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            data_time += time.perf_counter() - data_start
            if idx == num_warmup:
                start_time = time.perf_counter()
                data_time = compute_time = eval_time = 0.0

            compute_start = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - compute_start

            eval_start = time.perf_counter()
            evaluator.process(inputs, outputs)
            eval_time += time.perf_counter() - eval_start

            timed_iters = idx + 1 - num_warmup * int(idx >= num_warmup)
            seconds_per_iter = (time.perf_counter() - start_time) / timed_iters
            now = time.perf_counter()
            if idx + 1 == total or now - last_log >= _LOG_PERIOD_S:
                last_log = now
                eta = datetime.timedelta(seconds=int(seconds_per_iter * (total - idx - 1)))
                logger.info(
                    f"Inference done {idx + 1}/{total}. "
                    f"Dataloading: {data_time / timed_iters:.4f} s/iter. "
                    f"Inference: {compute_time / timed_iters:.4f} s/iter. "
                    f"Eval: {eval_time / timed_iters:.4f} s/iter. "
                    f"Total: {seconds_per_iter:.4f} s/iter. "
                    f"ETA={eta}"
                )
            data_start = time.perf_counter()

    total_time = time.perf_counter() - start_time
    timed_total = max(total - num_warmup, 1)
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=total_time)} "
        f"({total_time / timed_total:.6f} s / iter per device, on {num_devices} devices)"
    )
    logger.info(
        f"Total inference pure compute time: {datetime.timedelta(seconds=int(compute_time))} "
        f"({compute_time / timed_total:.6f} s / iter per device, on {num_devices} devices)"
    )

    results = evaluator.evaluate()
    return results if results is not None else {}
