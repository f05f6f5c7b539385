"""Fault injection for the crash-safety tests, active only in processes started with this folder
on ``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up, spawned workers included).

``M2F_FAULT_SLOW_CHECKPOINT=1``: ``torch.save`` into a file object writes in 1 MiB pieces with a
pause after each and prints ``CHECKPOINT-WRITE-STARTED`` to stderr first, so that a test can kill
the process in the middle of a checkpoint write.

``M2F_FAULT_RAISE_AT=RANK:ITER``: the trainer of that rank raises ``RuntimeError`` at that iteration;
``M2F_FAULT_KILL_AT=RANK:ITER``: that process SIGKILLs itself there instead.
"""
import io
import os
import signal
import sys
import time

if os.environ.get("M2F_FAULT_SLOW_CHECKPOINT") == "1":
    import torch

    _save = torch.save

    def _slow_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            return _save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        _save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        print("CHECKPOINT-WRITE-STARTED", file=sys.stderr, flush=True)
        piece = 1 << 20
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])
            f.flush()
            time.sleep(0.03)

    torch.save = _slow_save

_FAULT = os.environ.get("M2F_FAULT_RAISE_AT") or os.environ.get("M2F_FAULT_KILL_AT")
if _FAULT:
    from mask2former.engine.trainer import Trainer
    from mask2former.utils import comm

    _rank, _iteration = (int(v) for v in _FAULT.split(":"))
    _kill = "M2F_FAULT_KILL_AT" in os.environ
    _run_step = Trainer.run_step

    def _failing_run_step(self, batch):
        if comm.get_rank() == _rank and self.iter == _iteration:
            if _kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure at iteration {_iteration}")
        return _run_step(self, batch)

    Trainer.run_step = _failing_run_step
