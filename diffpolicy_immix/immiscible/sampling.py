"""Exact samplers the assigners are built on: chi-square variates and directions orthogonal to a vector.

Everything takes an explicit ``torch.Generator``; nothing here touches torch's global random state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sample_chi2", "sample_gamma", "orthogonal_unit", "combine_with_orthogonal"]


def sample_gamma(
    shape: float,
    n: int,
    *,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    scale: float = 1.0,
) -> Tensor:
    """Exact Gamma(shape, scale) variates by Marsaglia and Tsang's method, vectorized.

    Proposals ``d v`` with ``v = (1 + c x)^3``, ``x ~ N(0, 1)``, are drawn in float32. Most are accepted by
    the method's squeeze ``u < 1 - 0.0331 x^4`` (a sufficient condition, evaluated in float32); only the rest
    go through the full test ``log u < x^2 / 2 + d - d v + d log v`` in float64 -- in float32 that
    expression cancels catastrophically once the shape reaches the low thousands (D = 3072 gives shape
    1535.5). Rejected slots are redrawn. Shapes below 1 use the boost ``Gamma(a) = Gamma(a + 1) U^(1/a)``.

    Args:
        shape: the shape parameter, > 0.
        n: number of variates.
        scale: multiplies every variate (``scale=2`` with ``shape=dof/2`` gives chi-square(dof)).
    Returns:
        Tensor, shape (n,), float32 on ``device``.
    """
    if not shape > 0:
        raise ValueError(f"gamma shape must be > 0, got {shape}")
    device = torch.device(device)
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float32, device=device)
    todo = None  # indices of slots still to fill; None means all of them
    while todo is None or todo.numel() > 0:
        m = n if todo is None else todo.numel()
        x = torch.randn(m, device=device, generator=generator)  # (m,)
        u = torch.rand(m, device=device, generator=generator)  # (m,)
        x_sq = x.square()
        squeezed = torch.addcmul(u, x_sq, x_sq, value=0.0331) < 1.0  # u + 0.0331 x^4 < 1
        # v = (1 + c x)^3 > 0 needs x > -1/c (about -40 at shape 1); check the rare exception only.
        if bool(x.min() <= -1.0 / c):
            squeezed &= x > -1.0 / c
        undecided = (~squeezed).nonzero().squeeze(1)  # usually a few percent of m
        x64, u64 = x[undecided].double(), u[undecided].double()
        v64 = (1.0 + c * x64) ** 3
        log_v = torch.log(torch.where(v64 > 0, v64, torch.ones_like(v64)))
        accepted = (v64 > 0) & (torch.log(u64) < 0.5 * x64 * x64 + d - d * v64 + d * log_v)
        rejected = undecided[~accepted]
        value = x.add_(1.0 / c).pow_(3).mul_(scale * d * c**3)  # scale * d * (1 + c x)^3, in place
        if todo is None:
            out = value
            todo = rejected
        else:
            keep = torch.ones(m, dtype=torch.bool, device=device)
            keep[rejected] = False
            out[todo[keep]] = value[keep]
            todo = todo[rejected]
    if boost:
        u = torch.rand(n, device=device, generator=generator)
        out = out * u.pow(1.0 / shape)
    return out


def sample_chi2(
    dof: int, size: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> Tensor:
    """Exact chi-square(dof) variates, ``2 * Gamma(dof / 2)``; dof = 0 gives zeros.

    Returns:
        Tensor of shape ``size``, float32.
    """
    if dof < 0:
        raise ValueError(f"chi-square degrees of freedom must be >= 0, got {dof}")
    n = math.prod(size)
    if dof == 0 or n == 0:
        return torch.zeros(size, dtype=torch.float32, device=device)
    return sample_gamma(dof / 2.0, n, generator=generator, device=device, scale=2.0).reshape(size)


def orthogonal_unit(g: Tensor, unit: Tensor, eps: float = 1e-12) -> Tensor:
    """Project Gaussian rows ``g`` onto the complement of ``unit`` rows and normalize them.

    If ``g ~ N(0, I)``, the result is uniform on the unit sphere of the complement of each ``unit``
    row, independently of ``|g_perp|``.

    Args:
        g: Tensor, shape (B, D), Gaussian rows.
        unit: Tensor, shape (B, D), unit-norm rows.
    Returns:
        Tensor, shape (B, D), unit rows orthogonal to ``unit``.
    """
    g_perp = g - (g * unit).sum(dim=1, keepdim=True) * unit  # (B, D)
    return g_perp / g_perp.norm(dim=1, keepdim=True).clamp_min(eps)


def combine_with_orthogonal(g: Tensor, direction: Tensor, norm: Tensor, along: Tensor, ortho_sq: Tensor) -> Tensor:
    """``along * d_hat + sqrt(ortho_sq) * orthogonal_unit(g, d_hat)`` with ``d_hat = direction / norm``.

    Written without (B, D) temporaries: with ``p = <g, d_hat>`` and ``|g_perp|^2 = |g|^2 - p^2``, the
    result is ``s g + (along - s p) / norm * direction`` where ``s = sqrt(ortho_sq) / |g_perp|``. Where
    ``g`` is (numerically) parallel to ``direction`` the orthogonal part is dropped.

    Args:
        g: Tensor, shape (B, D), Gaussian rows; overwritten with the result.
        direction: Tensor, shape (B, D), nonzero rows. norm: Tensor, shape (B, 1), their norms.
        along: Tensor, shape (B, 1). ortho_sq: Tensor, shape (B, 1), >= 0.
    Returns:
        Tensor, shape (B, D).
    """
    p = _rowdot(g, direction) / norm  # (B, 1)
    g_perp_sq = (_rowdot(g, g) - p.square()).clamp_min(0.0)  # (B, 1)
    scale = torch.where(g_perp_sq > 0, (ortho_sq / g_perp_sq.clamp_min(1e-30)).sqrt(), torch.zeros_like(p))
    return g.mul_(scale).addcmul_((along - scale * p) / norm, direction)  # (B, D), written into g


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products as a batched GEMM, shape (B, 1): no (B, D) temporary (fresh large buffers
    cost page faults on every call)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).squeeze(2)  # (B, 1)
