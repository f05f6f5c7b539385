"""Training metrics: console lines with ETA, ``metrics.json`` (one JSON object per line, each written
with a single system call, so a killed run leaves only whole records) and TensorBoard scalars (when
the ``tensorboard`` package is installed)."""
import datetime
import json
import logging
import os
import time
from collections import defaultdict, deque
from typing import Dict, Optional

import torch

from .atomic_io import append_line

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Collects scalars per iteration and writes them every ``period`` iterations (rank 0 only).

    Args:
        output_dir: folder for ``metrics.json`` and TensorBoard event files (None: console only).
        max_iter: total iterations, for the ETA.
        period: write interval in iterations; values are median-smoothed over that window.
    """

    def __init__(self, output_dir: Optional[str], max_iter: int, period: int = 20):
        self.max_iter = max_iter
        self.period = period
        self._history = defaultdict(lambda: deque(maxlen=period))
        self._latest: Dict[str, float] = {}
        self._json_path = None
        self._tensorboard = None
        self._start_time = None
        self._start_iter = None
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            self._json_path = os.path.join(output_dir, "metrics.json")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(output_dir)
            except ImportError:
                logger.info("tensorboard is not installed: metrics go to metrics.json and the console only")

    def put(self, iteration: int, latest: Optional[Dict[str, float]] = None, **scalars: float) -> None:
        """Record scalars of ``iteration``: ``scalars`` (losses, lr, times) are median-smoothed over
        the write period, ``latest`` (running counts) are written as last given."""
        if self._start_time is None:
            self._start_time, self._start_iter = time.perf_counter(), iteration
        for name, value in scalars.items():
            self._history[name].append(float(value))
        self._latest.update({k: float(v) for k, v in (latest or {}).items()})
        if (iteration + 1) % self.period == 0 or iteration == self.max_iter - 1:
            self.write(iteration)

    def _smoothed(self) -> Dict[str, float]:
        smoothed = {k: float(torch.tensor(list(v)).median()) for k, v in self._history.items() if v}
        return {**smoothed, **self._latest}

    def write(self, iteration: int) -> None:
        values = self._smoothed()
        done = iteration + 1 - self._start_iter
        elapsed = time.perf_counter() - self._start_time
        eta = datetime.timedelta(seconds=int(elapsed / max(done, 1) * (self.max_iter - iteration - 1)))
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in values.items() if "loss" in k)
        others = "  ".join(f"{k}: {v:.4g}" for k, v in values.items() if "loss" not in k)
        logger.info("eta: %s  iter: %d/%d  %s  %s", eta, iteration + 1, self.max_iter, losses, others)
        if self._json_path is not None:
            append_line(self._json_path, json.dumps({"iteration": iteration, **values}, sort_keys=True))
        if self._tensorboard is not None:
            for k, v in values.items():
                self._tensorboard.add_scalar(k, v, iteration)

    def write_results(self, iteration: int, results: Dict[str, Dict[str, float]]) -> None:
        """Record evaluation results ``{task: {metric: value}}`` as ``task/metric`` scalars."""
        flat = {f"{task}/{k}": float(v) for task, res in results.items() for k, v in res.items()}
        if self._json_path is not None:
            append_line(self._json_path, json.dumps({"iteration": iteration, **flat}, sort_keys=True))
        if self._tensorboard is not None:
            for k, v in flat.items():
                self._tensorboard.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
