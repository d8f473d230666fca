"""Cost matrices between data and noise, and the exact linear-assignment solve.

The cost is built by the matmul expansion ``|x|^2 + |n|^2 - 2 x n^T``: O(B^2 D) arithmetic in one GEMM
and O(B^2) memory, never a (B, B, D) difference tensor.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["COST_METRICS", "COST_DTYPES", "SOLVERS", "pairwise_cost", "solve_assignment", "available_solver"]

COST_METRICS = ("l2", "sqeuclidean")
COST_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SOLVERS = ("auto", "lapjv", "scipy")


def pairwise_cost(x: Tensor, n: Tensor, metric: str = "l2", dtype: str = "float32") -> Tensor:
    """Pairwise distances between rows of ``x`` and rows of ``n``.

    Args:
        x: Tensor, shape (B, D) (or (B, *dims), flattened).
        n: Tensor, shape (M, D) (or (M, *dims), flattened).
        metric: ``"l2"`` (Euclidean, as Immiscible Diffusion) or ``"sqeuclidean"`` (minibatch OT).
        dtype: precision of the GEMM: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``. Low
            precision rounds many nearly equal costs to ties, so the solver may pick a different (slightly
            worse) pairing; bf16 is fast where the hardware has it, fp16 is emulated (slow) on most CPUs.
    Returns:
        Tensor, shape (B, M), float32 (float64 when both inputs are float64 and dtype is "float32").
    """
    if metric not in COST_METRICS:
        raise ValueError(f"cost metric must be one of {COST_METRICS}, got {metric!r}")
    if dtype not in COST_DTYPES:
        raise ValueError(f"cost dtype must be one of {tuple(COST_DTYPES)}, got {dtype!r}")
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit width: B or M may be 0
    n = n.reshape(n.shape[0], math.prod(n.shape[1:]))
    if x.shape[1] != n.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features per row but n has {n.shape[1]}")
    out_dtype = torch.float64 if (x.dtype == n.dtype == torch.float64 and dtype == "float32") else torch.float32
    x_sq = x.to(out_dtype).square().sum(dim=1)  # (B,)
    n_sq = n.to(out_dtype).square().sum(dim=1)  # (M,)
    gemm_dtype = out_dtype if dtype == "float32" else COST_DTYPES[dtype]
    cross = (x.to(gemm_dtype) @ n.to(gemm_dtype).T).to(out_dtype)  # (B, M)
    cost = (x_sq[:, None] + n_sq[None, :] - 2.0 * cross).clamp_min_(0.0)
    return cost.sqrt_() if metric == "l2" else cost


def available_solver() -> str:
    """The fastest installed exact solver: ``"lapjv"`` (the ``lap`` package) or ``"scipy"``."""
    return "lapjv" if importlib.util.find_spec("lap") is not None else "scipy"


def solve_assignment(cost: Tensor | np.ndarray, solver: str = "auto") -> Tensor:
    """Exact minimum-cost perfect matching of a square cost matrix.

    Args:
        cost: Tensor or array, shape (N, N).
        solver: ``"auto"`` (Jonker-Volgenant from ``lap`` if installed, else scipy), ``"lapjv"`` or
            ``"scipy"`` (``scipy.optimize.linear_sum_assignment``). Both are exact; they may break ties
            differently.
    Returns:
        LongTensor, shape (N,), on the CPU: row ``i`` is matched to column ``col[i]``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    # Both solvers are CPU code, so the cost matrix moves to host memory (N^2 values, never (N, N, D)).
    c = cost.detach().to("cpu", torch.float64).numpy() if isinstance(cost, Tensor) else np.asarray(cost, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cost must be a square matrix, got shape {tuple(c.shape)}")
    if c.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long)
    if solver == "auto":
        solver = available_solver()
    if solver == "lapjv":
        import lap  # optional, imported only here

        _, col, _ = lap.lapjv(np.ascontiguousarray(c), extend_cost=False)
    else:
        _, col = linear_sum_assignment(c)
    return torch.from_numpy(np.asarray(col, dtype=np.int64))
