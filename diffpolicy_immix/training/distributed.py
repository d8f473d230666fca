"""Multi-process training under ``torchrun``: process group, metric averaging, rank-local assignment.

Assignment across ranks is the core's: an ``lsa`` assigner built with ``process_group="auto"`` (its
default) solves one assignment over the batches of all ranks when a process group is running
(``diffpolicy_immix.immiscible.collective``). Work that runs on rank 0 alone (evaluation) runs inside
``local_assigner``, where no assigner communicates.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "detect_distributed",
    "gather_to_main",
    "init_distributed",
    "local_assigner",
    "shutdown_distributed",
]

log = logging.getLogger(__name__)

# Rank 0 may evaluate (rollouts, sampling) for a long time while the other ranks wait at a barrier.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_distributed() -> DistInfo:
    """Rank and world size from an initialized process group, else from torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), local, dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)


def init_distributed(use_cuda: bool) -> tuple[DistInfo, bool]:
    """Start the process group when launched by torchrun (gloo on CPU, nccl on CUDA).

    Returns:
        The job layout, and whether this call created the process group (and so should destroy it).
    """
    info = detect_distributed()
    if not info.is_distributed or dist.is_initialized():
        return info, False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={info.world_size} but this torch build has no torch.distributed")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    log.info("process group started: rank %d of %d (%s)", info.rank, info.world_size, dist.get_backend())
    return info, True


def shutdown_distributed(created: bool) -> None:
    """Tear down cleanly: the caller drops its DDP model and optimizer first, then this collects garbage,
    waits for every rank, and destroys the group it created (a bare destroy sometimes aborts a rank)."""
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        if created:
            dist.destroy_process_group()


def barrier() -> None:
    """``dist.barrier()`` when a process group is running."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (identity in a single process). Every rank passes the same keys."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed /= dist.get_world_size()
    return dict(zip(keys, packed.tolist()))


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (a list in rank order); None on the other ranks. [obj] alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------ assignment under DDP


@contextlib.contextmanager
def local_assigner(model: nn.Module | None = None) -> Iterator[None]:
    """Inside the block every assigner of the core assigns within its own batch and makes no collective
    call (``immiscible.local_assignment``): for rank-0-only work such as evaluation. ``model`` is unused."""
    from diffpolicy_immix.immiscible import local_assignment

    with local_assignment():
        yield
