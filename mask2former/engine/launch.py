"""Multi-process launch on PyTorch's own distributed engine (NCCL on GPU, gloo on CPU).

If one worker process fails (an exception, or killed by a signal), the others are stopped (SIGTERM,
then SIGKILL after 30 s if one does not end) and :func:`launch` raises :class:`WorkerProcessError`
naming the failing rank and its error, instead of leaving the survivors waiting in a collective.
"""
import logging
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


class WorkerProcessError(RuntimeError):
    """A worker process of :func:`launch` failed; the other workers on this machine were stopped.

    Attributes:
        rank: global rank of the failed process.
        details: its traceback (exception) or exit status (signal), as text.
    """

    def __init__(self, message: str, rank: int, details: str):
        super().__init__(message)
        self.rank = rank
        self.details = details


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args=(), timeout: timedelta = DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    Started by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set), the current process joins
    the group through ``env://`` and runs ``main_func`` itself. Otherwise, with more than one process
    in total, this spawns ``num_gpus_per_machine`` workers on this machine whose global rank is
    ``machine_rank * num_gpus_per_machine + local_rank``. On CPU, ``num_gpus_per_machine`` is the
    number of gloo worker processes.

    Args:
        dist_url: ``tcp://host:port`` of the rank-0 machine, or "auto" (single machine: a free
            local port).

    Raises:
        ValueError: for "auto" with several machines, or more processes than visible GPUs.
        WorkerProcessError: a spawned worker raised or was killed (the others are stopped first).
    """
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        _init_process_group("env://", int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]),
                            local_rank, timeout)
        return main_func(*args)
    world_size = num_gpus_per_machine * num_machines
    if world_size <= 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} GPUs are visible"
        )
    try:
        mp.start_processes(
            _worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
        )
    except (ProcessRaisedException, ProcessExitedException) as e:
        rank = machine_rank * num_gpus_per_machine + e.error_index
        if isinstance(e, ProcessRaisedException):
            details = e.msg.strip()
            cause = f"failed with {details.splitlines()[-1]}"
        else:
            details = str(e)
            cause = f"was killed by {e.signal_name}" if e.signal_name else f"exited with code {e.exit_code}"
        raise WorkerProcessError(
            f"training process rank {rank} (pid {e.error_pid}) {cause}; the other processes were stopped",
            rank, details,
        ) from None


def _init_process_group(dist_url, world_size, rank, local_rank, timeout):
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # one GPU per process, by local rank
    dist.init_process_group(
        backend=backend,
        init_method=dist_url,
        world_size=world_size,
        rank=rank,
        timeout=timeout,
    )
    dist.barrier()


def _worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout):
    rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        _init_process_group(dist_url, world_size, rank, local_rank, timeout)
    except Exception:
        logger.error("Could not join the process group at %s as rank %d", dist_url, rank)
        raise
    main_func(*args)
    dist.barrier()  # let every rank finish its collectives before the connections close
    dist.destroy_process_group()
    exit_now()


def exit_now() -> None:
    """End a finished worker process at once, after flushing logs and standard streams.

    With torch's gloo backend a worker occasionally aborts in C++ static destructors at interpreter
    exit ("terminate called without an active exception"), after all its work is done; skipping
    interpreter teardown avoids reporting such a run as failed.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
