"""A tiny model and datasets that follow the trainer's model contract (test helpers, not tests).

The model is a small flow-matching regressor with dropout (global RNG), a buffer standing in for the
normalizer, and an ``objective.assigner`` that draws Gaussian noise from the generator it is given.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn


class ToyAssigner:
    """``none``: Gaussian noise from ``generator``; ``lsa``: the same noise, permuted by scipy."""

    def __init__(self, name: str = "none") -> None:
        self.name = name
        self.options: dict[str, object] = {"cost": "l2"} if name == "lsa" else {}

    def __call__(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        if self.name == "lsa":
            cost = torch.cdist(x0.reshape(len(x0), -1).double(), noise.reshape(len(x0), -1).double())
            _, col = linear_sum_assignment(cost.cpu().numpy())
            noise = noise[torch.from_numpy(np.asarray(col)).to(x0.device)]
        return noise


class ToyObjective:
    def __init__(self, assigner: ToyAssigner) -> None:
        self.assigner = assigner


class ToyModel(nn.Module):
    """Predicts the flow-matching velocity ``noise - x0`` from (x_t, t)."""

    def __init__(self, dim: int = 4, hidden: int = 32, dropout: float = 0.1, assigner: str = "none") -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.register_buffer("scale", torch.full((dim,), 2.0))  # stands in for the normalizer
        self.objective = ToyObjective(ToyAssigner(assigner))

    def compute_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, with_stats: bool = False
    ) -> tuple[Tensor, dict[str, float]]:
        x0 = batch["x"] * self.scale  # (B, D)
        noise = self.objective.assigner(x0, generator=generator)  # (B, D)
        t = torch.rand(x0.shape[0], 1, generator=generator, device=x0.device)  # (B, 1)
        xt = (1 - t) * x0 + t * noise
        pred = self.net(torch.cat([xt, t], dim=1))
        loss = F.mse_loss(pred, noise - x0)
        stats = {"noise_norm": float(noise.norm(dim=1).mean())} if with_stats else {}
        return loss, stats

    def forward(self, batch, generator=None, with_stats=False):  # noqa: D102 - same as compute_loss (DDP)
        return self.compute_loss(batch, generator=generator, with_stats=with_stats)


def toy_points(n: int = 96, dim: int = 4, seed: int = 123) -> Tensor:
    """Fixed data, shape (n, dim), from a private generator."""
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class ToyBatchData:
    """Offers the vectorized ``get_batch``."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(self, indices: Tensor) -> dict[str, Tensor]:
        return {"x": self.x[indices]}


class ToyItemData:
    """Plain map-style dataset (collated by a DataLoader)."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i]}


def make_evaluate_fn(x: Tensor):
    """A deterministic evaluation: score = -mse of the model's velocity on fixed inputs."""
    t = torch.full((len(x), 1), 0.5)

    def evaluate(model: nn.Module, *, step: int = 0, final: bool = False) -> dict[str, float]:
        with torch.no_grad():
            pred = model.net(torch.cat([x * model.scale * 0.5, t], dim=1))
            mse = float(pred.square().mean())
        return {"score": -mse, "pred_mse": mse}

    return evaluate
