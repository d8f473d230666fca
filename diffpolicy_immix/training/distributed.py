"""Multi-process training under ``torchrun``: process group, metric averaging, global LSA.

All collective communication of the toolkit lives here; the assignment core stays single-process.

Global LSA: with W ranks and B samples per rank, each rank draws its own B noises, the noise is gathered
to a (W*B, D) matrix, every rank computes its B rows of the global (W*B, W*B) cost with one matmul
(``pairwise_cost``), rank 0 gathers the rows and solves the assignment once (``solve_assignment``), the
permutation (int64) is broadcast, and rank r takes ``noise_global[perm[r*B:(r+1)*B]]``. The result equals
a single-process LSA on the concatenated batch with the same noise.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "GlobalLSAAssigner",
    "all_reduce_mean",
    "detect_distributed",
    "enable_global_lsa",
    "gather_to_main",
    "global_lsa_noise",
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


# ---------------------------------------------------------------------------------------------- global LSA


def _core_cost_and_solve() -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    from diffpolicy_immix.immiscible import pairwise_cost, solve_assignment

    return pairwise_cost, solve_assignment


@torch.no_grad()
def global_lsa_noise(
    x0: Tensor,
    noise: Tensor,
    *,
    metric: str = "l2",
    cost_kwargs: dict[str, Any] | None = None,
    solve_kwargs: dict[str, Any] | None = None,
    cost_fn: Callable[..., Tensor] | None = None,
    solve_fn: Callable[..., Tensor] | None = None,
) -> Tensor:
    """This rank's slice of the assignment of all ranks' noise to all ranks' data.

    Every rank must call it with the same B (the trainer drops partial batches).

    Args:
        x0: Tensor, shape (B, *dims): this rank's data.
        noise: Tensor, shape (B, *dims): this rank's Gaussian noise.
        metric: cost metric passed to ``pairwise_cost`` ("l2" or "sqeuclidean").
        cost_fn, solve_fn: default to the core's ``pairwise_cost`` and ``solve_assignment``.
    Returns:
        Tensor, shape (B, *dims): rows ``perm[rank*B:(rank+1)*B]`` of the gathered noise.
    """
    if cost_fn is None or solve_fn is None:
        core_cost_fn, core_solve_fn = _core_cost_and_solve()
        cost_fn = cost_fn or core_cost_fn
        solve_fn = solve_fn or core_solve_fn
    if x0.shape != noise.shape:
        raise ValueError(f"global LSA: x0 shape {tuple(x0.shape)} differs from noise shape {tuple(noise.shape)}")
    if not (dist.is_available() and dist.is_initialized()):
        world, rank = 1, 0
    else:
        world, rank = dist.get_world_size(), dist.get_rank()
    batch = x0.shape[0]
    noise_flat = rearrange(noise, "b ... -> b (...)").contiguous()  # (B, D)
    if world > 1:
        gathered = [torch.empty_like(noise_flat) for _ in range(world)]
        dist.all_gather(gathered, noise_flat)
        noise_global = torch.cat(gathered)  # (W*B, D)
    else:
        noise_global = noise_flat
    x_flat = rearrange(x0, "b ... -> b (...)")  # (B, D)
    cost_rows = cost_fn(x_flat, noise_global, metric, **(cost_kwargs or {})).contiguous()  # (B, W*B)
    if world > 1:
        rows = [torch.empty_like(cost_rows) for _ in range(world)] if rank == 0 else None
        dist.gather(cost_rows, rows, dst=0)
    else:
        rows = [cost_rows]
    perm = torch.empty(world * batch, dtype=torch.int64, device=x0.device)
    if rank == 0:
        assert rows is not None
        cost = torch.cat(rows)  # (W*B, W*B)
        perm.copy_(solve_fn(cost, **(solve_kwargs or {})).to(torch.int64))
    if world > 1:
        dist.broadcast(perm, src=0)
    local = noise_global[perm[rank * batch : (rank + 1) * batch]]  # (B, D)
    return local.reshape(noise.shape)


class GlobalLSAAssigner:
    """Drop-in replacement for the ``lsa`` assigner that solves one assignment across all ranks.

    Same callable contract as a core assigner: ``assign(x0, generator=None) -> noise`` (B, *dims). The
    local noise is drawn by a ``none`` (plain Gaussian) assigner from ``generator``, which must differ
    between ranks (the trainer seeds rank r with seed + r). ``.name`` stays ``"lsa"``; ``.options`` are
    the local assigner's plus ``global_world_size``.

    Args:
        local: the single-process ``lsa`` assigner being replaced (kept for ``local_assigner``).
        draw_noise: ``draw(x0, generator) -> noise``; default: the core's ``none`` assigner.
    """

    name = "lsa"

    def __init__(self, local: Any, draw_noise: Callable[..., Tensor] | None = None) -> None:
        self.local = local
        options = dict(getattr(local, "options", {}) or {})
        self.metric = options.get("cost", options.get("metric", "l2"))
        self.cost_kwargs = {"dtype": options["cost_dtype"]} if "cost_dtype" in options else {}
        self.solve_kwargs = {"solver": options["solver"]} if "solver" in options else {}
        self._draw = draw_noise
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.options = {**options, "global_world_size": world}

    def default_generator(self, device: torch.device | str) -> torch.Generator:
        """The local assigner's private generator (used by callers that pass no generator)."""
        return self.local.default_generator(device)

    def _draw_noise(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        if generator is None and hasattr(self.local, "default_generator"):
            generator = self.default_generator(x0.device)
        if self._draw is None:
            from diffpolicy_immix.immiscible import make_assigner

            self._draw = make_assigner("none")
        return self._draw(x0, generator)

    def __call__(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noise (B, *dims) for this rank's x0 (B, *dims), globally assigned."""
        noise = self._draw_noise(x0, generator)
        out = global_lsa_noise(
            x0.detach(),
            noise,
            metric=self.metric,
            cost_kwargs=self.cost_kwargs,
            solve_kwargs=self.solve_kwargs,
        )
        return out.to(x0.dtype)

    def __repr__(self) -> str:
        return f"GlobalLSAAssigner(local={self.local!r})"


def _objective_of(model: nn.Module) -> Any:
    return getattr(model, "objective", None)


def enable_global_lsa(model: nn.Module, info: DistInfo) -> bool:
    """Swap ``model.objective.assigner`` for a ``GlobalLSAAssigner`` when it is ``lsa`` and W > 1."""
    objective = _objective_of(model)
    assigner = getattr(objective, "assigner", None)
    if not info.is_distributed or assigner is None or getattr(assigner, "name", None) != "lsa":
        return False
    if isinstance(assigner, GlobalLSAAssigner):
        return True
    objective.assigner = GlobalLSAAssigner(assigner)
    if info.is_main:
        log.info("lsa assignment is solved globally across %d ranks", info.world_size)
    return True


def disable_global_lsa(model: nn.Module) -> None:
    """Put the single-process assigner back (after training, so the model works in one process)."""
    objective = _objective_of(model)
    assigner = getattr(objective, "assigner", None)
    if isinstance(assigner, GlobalLSAAssigner):
        objective.assigner = assigner.local


@contextlib.contextmanager
def local_assigner(model: nn.Module) -> Iterator[None]:
    """Use the single-process assigner inside the block (rank-0-only evaluation must not communicate)."""
    objective = _objective_of(model)
    assigner = getattr(objective, "assigner", None)
    if not isinstance(assigner, GlobalLSAAssigner):
        yield
        return
    objective.assigner = assigner.local
    try:
        yield
    finally:
        objective.assigner = assigner
