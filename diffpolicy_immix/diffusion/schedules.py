"""Noise schedules of DDPM-family models: betas and cumulative signal levels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BETA_SCHEDULES", "make_betas", "alphas_cumprod"]


def _squaredcos_cap_v2(num_steps: int) -> Tensor:
    """Nichol and Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2),
    betas = 1 - alpha_bar(t + 1) / alpha_bar(t), capped at 0.999."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def _linear(num_steps: int) -> Tensor:
    return torch.linspace(1e-4, 0.02, num_steps, dtype=torch.float64)


def _scaled_linear(num_steps: int) -> Tensor:
    return torch.linspace(0.00085**0.5, 0.012**0.5, num_steps, dtype=torch.float64) ** 2


BETA_SCHEDULES = {"squaredcos_cap_v2": _squaredcos_cap_v2, "linear": _linear, "scaled_linear": _scaled_linear}


def make_betas(name: str, num_steps: int) -> Tensor:
    """Betas of a named schedule, shape (num_steps,), float64."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {name!r}; valid: {', '.join(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[name](num_steps)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), shape (T,), float64."""
    return torch.cumprod(1.0 - betas, dim=0)
