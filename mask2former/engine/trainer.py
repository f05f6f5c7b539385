"""Iteration-based trainer for Mask2Former on plain PyTorch (no Detectron2 needed).

One iteration: next batch -> forward under autocast (fp16 with loss scaling, or bf16) -> sum of
weighted losses -> backward -> unscale + gradient clipping -> optimizer and lr-scheduler step.
Checkpoints every ``SOLVER.CHECKPOINT_PERIOD`` hold the model, optimizer, scheduler, grad scaler,
iteration and RNG states, so ``--resume`` continues exactly where training stopped; they are
written atomically, so a run killed at any moment resumes bitwise as if uninterrupted.

With ``DATALOADER.SKIP_CORRUPT_SAMPLES``, samples that cannot be read are skipped (the loader logs
each) and ``data/skipped_samples`` in the metrics counts them over the whole run.
"""
import logging
import random
import re
import time
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import Checkpointer
from ..data.build import SKIPPED_KEY, build_train_loader, get_dataset_dicts
from ..data.dataset_mappers import build_dataset_mapper
from ..modeling.build import build_model
from ..solver import build_lr_scheduler, build_optimizer
from ..solver.optimizer import clip_gradients
from ..utils import comm
from ..utils.events import MetricsWriter
from .evaluation import evaluate_model

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _rng_state() -> Dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train the model described by ``cfg`` (Detectron2 ``DefaultTrainer`` behaviour, standalone).

    Attributes:
        model: the meta-architecture (wrapped in DistributedDataParallel with several processes).
        iter: the next iteration to run; ``start_iter`` after :meth:`resume_or_load`.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        model = build_model(cfg)
        if comm.get_world_size() > 1:
            model = DistributedDataParallel(
                model,
                device_ids=[torch.cuda.current_device()] if cfg.MODEL.DEVICE == "cuda" else None,
                broadcast_buffers=False,
            )
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        amp = cfg.SOLVER.AMP
        if amp.PRECISION not in _AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP.PRECISION={amp.PRECISION!r}; expected one of {sorted(_AMP_DTYPES)}")
        self.amp_dtype = _AMP_DTYPES[amp.PRECISION] if amp.ENABLED else None
        self.scaler = torch.amp.GradScaler(
            cfg.MODEL.DEVICE.split(":")[0], enabled=amp.ENABLED and amp.PRECISION == "float16"
        )
        self.checkpointer = Checkpointer.from_config(
            cfg, self._unwrapped, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
        )
        self.start_iter = self.iter = self.skipped_samples = 0
        self.max_iter = int(cfg.SOLVER.MAX_ITER)

    @property
    def _unwrapped(self) -> torch.nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a ``last_checkpoint`` in OUTPUT_DIR, restore the full training state
        from it; otherwise load only the model weights from ``MODEL.WEIGHTS`` (if set)."""
        if resume and self.checkpointer.has_checkpoint():
            extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=True)
            self.start_iter = extra["iteration"] + 1
            if "rng" in extra:
                _set_rng_state(extra["rng"])
            self.skipped_samples = extra.get("skipped_samples", 0)
            logger.info("Resumed from iteration %d", extra["iteration"])
        elif self.cfg.MODEL.WEIGHTS:
            self.checkpointer.load(self.cfg.MODEL.WEIGHTS, checkpointables=[])
        self.iter = self.start_iter

    def _data_loader(self):
        cfg = self.cfg
        records = get_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        return build_train_loader(
            records,
            build_dataset_mapper(cfg, is_train=True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            seed=cfg.SEED if cfg.SEED >= 0 else 0,
            start_iter=self.start_iter,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            skip_corrupt=cfg.DATALOADER.SKIP_CORRUPT_SAMPLES,
        )

    def run_step(self, batch: List[Dict]) -> Dict[str, float]:
        """One optimisation step on ``batch``; returns the (unweighted-sum) loss values."""
        device_type = self.cfg.MODEL.DEVICE.split(":")[0]
        with torch.autocast(device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss_dict = self.model(batch)
        total = sum(loss_dict.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration {self.iter}: {loss_dict}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.cfg, self.model)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._step_scheduler(skipped=self.scaler.get_scale() < scale)
        values = {k: v.detach() for k, v in loss_dict.items()}
        values = comm.reduce_dict(values) if comm.get_world_size() > 1 else values
        values = {k: float(v) for k, v in values.items()}
        values["total_loss"] = sum(values.values())
        return values

    def _step_scheduler(self, skipped: bool) -> None:
        """Advance the lr schedule, a function of the iteration, also when fp16 loss scaling skipped
        the optimizer step (inf/NaN gradients; the scale was lowered), as Detectron2 does. Only
        then is torch's "lr_scheduler.step() before optimizer.step()" warning expected and muted:
        the first iterations of an fp16 run usually overflow at the initial scale of 2^16."""
        if not skipped:
            self.scheduler.step()
            return
        logger.info("Iteration %d: optimizer step skipped by fp16 loss scaling (inf/NaN gradients); "
                    "loss scale lowered to %g", self.iter, self.scaler.get_scale())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()

    def _count_skipped(self, batch: List[Dict]) -> int:
        """Remove the loader's skipped-sample counts from ``batch``; the total over all ranks."""
        local = sum(sample.pop(SKIPPED_KEY, 0) for sample in batch)
        if comm.get_world_size() < 2:
            return local
        count = torch.tensor(float(local), device=self.cfg.MODEL.DEVICE)
        total = comm.reduce_dict({"skipped": count}, average=False)["skipped"]
        return int(total)

    def train(self) -> Optional[Dict]:
        """Run iterations ``start_iter .. MAX_ITER - 1`` with checkpoints every
        ``SOLVER.CHECKPOINT_PERIOD`` and evaluation every ``TEST.EVAL_PERIOD`` (0: never) and after
        the last iteration, as Detectron2's ``DefaultTrainer`` does.

        Returns:
            The results of the final evaluation (rank 0), or None when DATASETS.TEST is empty.
        """
        cfg = self.cfg
        writer = MetricsWriter(cfg.OUTPUT_DIR if comm.is_main_process() else None, self.max_iter)
        self.model.train()
        loader = iter(self._data_loader())
        results = None
        logger.info("Starting training from iteration %d", self.start_iter)
        try:
            for self.iter in range(self.start_iter, self.max_iter):
                start = time.perf_counter()
                batch = next(loader)
                fetched = time.perf_counter()
                counts = {}
                if cfg.DATALOADER.SKIP_CORRUPT_SAMPLES:
                    self.skipped_samples += self._count_skipped(batch)
                    counts["data/skipped_samples"] = self.skipped_samples
                values = self.run_step(batch)
                if comm.is_main_process():
                    writer.put(self.iter, latest=counts, **values, lr=self.optimizer.param_groups[0]["lr"],
                               data_time=fetched - start, time=time.perf_counter() - start)
                last = self.iter == self.max_iter - 1
                if (self.iter + 1) % cfg.SOLVER.CHECKPOINT_PERIOD == 0 or last:
                    name = "model_final" if last else f"model_{self.iter:07d}"
                    self.checkpointer.save(name, iteration=self.iter, rng=_rng_state(),
                                           skipped_samples=self.skipped_samples)
                periodic = cfg.TEST.EVAL_PERIOD > 0 and (self.iter + 1) % cfg.TEST.EVAL_PERIOD == 0
                if (periodic or last) and len(cfg.DATASETS.TEST):
                    results = evaluate_model(cfg, self._unwrapped)
                    if comm.is_main_process() and results:
                        writer.write_results(self.iter, results)
                    self.model.train()
        finally:
            writer.close()
        comm.synchronize()
        return results

