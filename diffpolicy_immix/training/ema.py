"""Exponential moving average of a model's weights (Diffusion Policy's EMA schedule).

The averaged copy is what gets evaluated and what top-k checkpoints are ranked by. Floating-point
parameters that require gradients are averaged; every other entry of the state dict (buffers such as
normalizer statistics or BatchNorm running stats, frozen parameters) is copied as it is.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .config import EMAConfig

__all__ = ["EMA", "ema_decay"]


def ema_decay(
    num_updates: int,
    *,
    power: float = 0.75,
    inv_gamma: float = 1.0,
    min_decay: float = 0.0,
    max_decay: float = 0.9999,
    update_after_step: int = 0,
) -> float:
    """Decay used by the update that follows ``num_updates`` earlier updates.

    ``m = num_updates - update_after_step - 1``; the decay is 0 (a copy) while ``m <= 0``, then
    ``clamp(1 - (1 + m / inv_gamma) ** -power, min_decay, max_decay)``.
    """
    m = max(0, num_updates - update_after_step - 1)
    if m <= 0:
        return 0.0
    value = 1.0 - (1.0 + m / inv_gamma) ** -power
    return max(min_decay, min(value, max_decay))


class EMA:
    """An averaged copy of ``model``, updated after each optimizer step.

    Args:
        model: the module being trained (not a DDP or compiled wrapper).
        cfg: the schedule.
    """

    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0
        self.decay = 0.0
        # Names as the source model sees them (before requires_grad_ above froze the copy).
        self._averaged = {name for name, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}

    def current_decay(self) -> float:
        """Decay the next update will use."""
        c = self.cfg
        return ema_decay(
            self.num_updates,
            power=c.power,
            inv_gamma=c.inv_gamma,
            min_decay=c.min_decay,
            max_decay=c.max_decay,
            update_after_step=c.update_after_step,
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights: ema <- d * ema + (1 - d) * w.

        The first update (decay 0) is an exact copy. Tied parameters are visited once.
        """
        self.decay = self.current_decay()
        source = dict(model.named_parameters())
        averaged_ema, averaged_new = [], []
        for name, ema_p in self.model.named_parameters():
            if name in self._averaged:
                averaged_ema.append(ema_p)
                averaged_new.append(source[name].detach())
            else:
                ema_p.copy_(source[name])
        if averaged_ema:
            if self.decay == 0.0:
                torch._foreach_copy_(averaged_ema, averaged_new)
            else:
                torch._foreach_lerp_(averaged_ema, averaged_new, 1.0 - self.decay)
        source_buffers = dict(model.named_buffers())
        for name, ema_b in self.model.named_buffers():
            ema_b.copy_(source_buffers[name])
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Weights of the averaged model plus the update count (plain types and tensors only)."""
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
