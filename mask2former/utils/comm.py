"""Small helpers for single- and multi-process (``torch.distributed``) runs.

Every function works without ``torch.distributed`` being initialised: it then behaves as a
world of one process (rank 0, nothing to synchronise, gathers return ``[data]``).

Object collectives (:func:`all_gather`, :func:`gather`) pickle arbitrary Python data and run on
a CPU (gloo) process group, so gathering evaluation results does not use GPU memory; when the
default group is NCCL, one gloo group spanning all ranks is created on first use (every rank
must make that first call, as with any collective).
"""
import functools
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

__all__ = [
    "get_world_size",
    "get_rank",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "reduce_dict",
]


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _is_distributed() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _is_distributed() else 0


def is_main_process() -> bool:
    """True on global rank 0 (and in every non-distributed run)."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op with fewer than two processes."""
    if get_world_size() < 2:
        return
    # NCCL barriers need to know this rank's GPU, else they guess one and may hang.
    kwargs = {"device_ids": [torch.cuda.current_device()]} if _uses_nccl() else {}
    dist.barrier(**kwargs)


def _uses_nccl() -> bool:
    return dist.get_backend() == "nccl"


@functools.lru_cache()
def _cpu_group() -> Any:
    """A gloo group with all ranks (the default group itself unless it is NCCL)."""
    return dist.new_group(backend="gloo") if _uses_nccl() else dist.group.WORLD


def all_gather(data: Any, group: Optional[Any] = None) -> List[Any]:
    """Gather picklable ``data`` from every rank onto every rank.

    Args:
        data: any picklable object.
        group: process group; default: all ranks on a CPU (gloo) group.

    Returns:
        list with one entry per rank of ``group``, in rank order.
    """
    if get_world_size() == 1:
        return [data]
    group = _cpu_group() if group is None else group
    received: List[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(received, data, group)
    return received


def gather(data: Any, dst: int = 0, group: Optional[Any] = None) -> List[Any]:
    """Gather picklable ``data`` from every rank onto global rank ``dst``.

    Args:
        data: any picklable object.
        dst: global rank that receives the data.
        group: process group; default: all ranks on a CPU (gloo) group.

    Returns:
        on ``dst``: a list with one entry per rank of ``group``, in rank order;
        on every other rank: an empty list.
    """
    if get_world_size() == 1:
        return [data]
    group = _cpu_group() if group is None else group
    receiving = dist.get_rank() == dst
    received: Optional[List[Any]] = [None] * dist.get_world_size(group) if receiving else None
    dist.gather_object(data, received, dst, group)
    return received if receiving else []


def reduce_dict(input_dict: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """Sum (or average) scalar tensors over all ranks onto rank 0.

    Args:
        input_dict: name -> scalar tensor; every rank must pass the same keys, and the tensors
            must live on a device the default backend supports (CUDA for NCCL).
        average: divide the sums by the world size.

    Returns:
        a dict with the same keys. On rank 0 the values are the reduced ones; on other ranks
        they are unspecified (``torch.distributed.reduce`` semantics).
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if average and get_rank() == 0:
            values /= world_size
        return dict(zip(names, values))
