"""Linear assignment over the batches of all ranks of a ``torch.distributed`` job (the global LSA).

With W ranks holding B_r samples each (B_r may differ between ranks, and may be 0), every rank draws its
own B_r noises; the noise is gathered to an (N, D) matrix, N = sum B_r; every rank computes its B_r rows
of the global (N, N) cost with one GEMM (``pairwise_cost``); the root (rank 0 of the group) gathers the
rows, solves the assignment once (``solve_assignment``) and broadcasts the permutation (int64); rank r
keeps ``noise_global[perm[offset_r : offset_r + B_r]]``. The result equals a single-process LSA on the
concatenated batch with the same noise.

All collective communication of the core is in the three ``_collective_*`` functions below. Every rank
of the group must call ``global_lsa_noise`` (or the ``lsa`` assigner) the same number of times, in the
same order -- including ranks whose batch is empty. Work that runs on one rank only (evaluation on rank
0, say) must run inside ``local_assignment()``, where every assigner solves on its own batch.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .cost import pairwise_cost, solve_assignment

__all__ = ["PROCESS_GROUP_CHOICES", "global_lsa_noise", "local_assignment", "resolve_process_group"]

PROCESS_GROUP_CHOICES = ("auto", None)
"""Accepted values of an assigner's ``process_group`` option, besides a ``ProcessGroup`` object."""

_state = threading.local()


@contextlib.contextmanager
def local_assignment() -> Iterator[None]:
    """Inside the block every assigner assigns within its own batch: no collective call is made (for work
    that runs on one rank only, such as evaluation on rank 0). Nests; per thread."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def check_process_group(value: Any, owner: str) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is ``"auto"``, None or a ``ProcessGroup``."""
    if value is None or value == "auto":
        return
    if dist.is_available() and isinstance(value, dist.ProcessGroup):
        return
    raise ValueError(
        f"{owner} option process_group={value!r} is invalid; use 'auto', None or a torch.distributed ProcessGroup"
    )


def resolve_process_group(value: Any) -> Any:
    """The group an assigner communicates over now, or None to assign within the local batch.

    ``None`` -> None. ``"auto"`` -> the default group when ``torch.distributed`` is initialized with a
    world size > 1, else None. A ``ProcessGroup`` -> itself when it has more than one rank. Always None
    inside ``local_assignment()``.
    """
    if value is None or getattr(_state, "depth", 0) > 0:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.group.WORLD if value == "auto" else value
    return group if dist.get_world_size(group) > 1 else None


@torch.no_grad()
def global_lsa_noise(
    x0: Tensor,
    noise: Tensor,
    group: Any = "auto",
    *,
    cost: str = "l2",
    cost_dtype: str = "float32",
    solver: str = "auto",
) -> Tensor:
    """This rank's rows of the assignment of all ranks' noise to all ranks' data.

    Args:
        x0: Tensor, shape (B_r, *dims): this rank's data (B_r may be 0 and may differ between ranks).
        noise: Tensor, shape (B_r, *dims): this rank's Gaussian noise.
        group: a ``ProcessGroup``, ``"auto"`` (the default group when initialized) or None (local solve).
        cost, cost_dtype, solver: as the ``lsa`` assigner (``pairwise_cost`` / ``solve_assignment``).
    Returns:
        Tensor, shape (B_r, *dims), dtype of ``noise``: a permutation of the gathered noise, restricted to
        this rank's rows.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"global LSA: x0 shape {tuple(x0.shape)} differs from noise shape {tuple(noise.shape)}")
    group = resolve_process_group(group)
    batch = x0.shape[0]
    width = math.prod(x0.shape[1:])
    x_flat = x0.reshape(batch, width)  # (B_r, D)
    noise_flat = noise.reshape(batch, width).contiguous()  # (B_r, D)
    if group is None:
        if batch <= 1:
            return noise
        return noise[solve_assignment(pairwise_cost(x_flat, noise_flat, cost, cost_dtype), solver).to(x0.device)]
    sizes, noise_global = _collective_all_gather_rows(noise_flat, group)  # list of W ints, (N, D)
    rank = dist.get_rank(group)
    offset, total = sum(sizes[:rank]), sum(sizes)
    if total == 0:
        return noise
    cost_rows = pairwise_cost(x_flat, noise_global, cost, cost_dtype).contiguous()  # (B_r, N)
    full = _collective_gather_rows_to_root(cost_rows, sizes, group)  # (N, N) on the root, else None
    perm = solve_assignment(full, solver).to(x0.device) if full is not None else None
    perm = _collective_broadcast_from_root(perm, total, group, x0.device)  # (N,)
    return noise_global[perm[offset : offset + batch]].reshape(noise.shape)


# -------------------------------------------------------------------------- the only collective calls


def _root(group: Any) -> int:
    """Global rank of the group's rank 0."""
    return dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0


def _collective_all_gather_rows(rows: Tensor, group: Any) -> tuple[list[int], Tensor]:
    """Every rank's ``rows`` (B_r, D) concatenated in rank order, (sum B_r, D), plus the list of B_r."""
    world = dist.get_world_size(group)
    size = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    sizes_t = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size, group=group)
    sizes = [int(s) for s in sizes_t]
    padded = rows.new_zeros((max(sizes), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return sizes, torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def _collective_gather_rows_to_root(rows: Tensor, sizes: list[int], group: Any) -> Tensor | None:
    """Every rank's cost rows (B_r, N) stacked in rank order on the group's root, (N, N); None elsewhere."""
    world, is_root = dist.get_world_size(group), dist.get_rank(group) == 0
    padded = rows.new_zeros((max(sizes), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    bucket = [torch.empty_like(padded) for _ in range(world)] if is_root else None
    dist.gather(padded, bucket, dst=_root(group), group=group)
    return torch.cat([b[:n] for b, n in zip(bucket, sizes)]) if bucket is not None else None


def _collective_broadcast_from_root(perm: Tensor | None, total: int, group: Any, device: torch.device) -> Tensor:
    """The root's permutation (N,) int64 on every rank."""
    out = perm.to(torch.int64) if perm is not None else torch.empty(total, dtype=torch.int64, device=device)
    dist.broadcast(out, src=_root(group), group=group)
    return out
