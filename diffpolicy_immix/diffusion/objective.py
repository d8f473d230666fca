"""The diffusion objective: the one place training noise is drawn.

```
x0 (B, *dims) --data_scale--> s*x0 --assigner--> noise --t ~ U--> x_t --model--> prediction --MSE--> loss
```

With the assigner's ``t_range = (lo, hi)`` the time is drawn first, every row gets plain N(0, I) noise,
and only the rows with ``lo <= t / T < hi`` get the assigner's noise (drawn for that subset).

Two families share one interface:
- ``ddpm``: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) n with a discrete schedule of ``num_train_timesteps``
  steps; the model predicts ``epsilon`` (n), ``sample`` (x0) or ``v_prediction``
  (sqrt(ab) n - sqrt(1 - ab) x0); sampled with DDIM (deterministic, few steps) or DDPM (ancestral).
- ``flow_matching``: rectified flow, x_t = (1 - t) x0 + t n with t in [0, 1]; the model predicts the
  velocity n - x0; sampled with Euler steps from t = 1 to t = 0.

The model is called as ``model_fn(x_t, t, cond)`` with ``t`` a float tensor (B,) in [0, T],
T = ``num_train_timesteps`` (flow time is scaled by T), so one time embedding serves both families.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffpolicy_immix.immiscible import Assigner, make_assigner, miscibility_stats

from .schedules import BETA_SCHEDULES, alphas_cumprod, make_betas

__all__ = ["ObjectiveConfig", "DiffusionObjective", "ModelFn"]

ModelFn = Callable[[Tensor, Tensor, Any], Tensor]

KINDS = ("ddpm", "flow_matching")
PREDICTIONS = {"ddpm": ("epsilon", "sample", "v_prediction"), "flow_matching": ("velocity",)}
SAMPLERS = {"ddpm": ("ddim", "ddpm"), "flow_matching": ("euler",)}
SPACINGS = ("leading", "trailing")


@dataclass
class ObjectiveConfig:
    """How training noise, timesteps and targets are formed, and how samples are drawn."""

    kind: str = "ddpm"
    """``"ddpm"`` or ``"flow_matching"``."""
    num_train_timesteps: int = 100
    """T: discrete training steps (ddpm); the scale of the time given to the model (both)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """ddpm only: ``squaredcos_cap_v2``, ``linear`` or ``scaled_linear``."""
    prediction_type: str | None = None
    """ddpm: ``epsilon`` (default), ``sample`` or ``v_prediction``; flow matching: ``velocity``."""
    sampler: str | None = None
    """ddpm: ``ddim`` (default) or ``ddpm``; flow matching: ``euler``."""
    num_inference_steps: int = 10
    """Sampling steps (DDIM/Euler; DDPM uses them as a strided subset of the T steps)."""
    timestep_spacing: str = "leading"
    """ddpm: which training steps sampling visits. ``leading`` (Diffusion Policy's and diffusers' DDIM
    default): ``i * (T // n)``, so 10 of 100 steps start at t = 90, where the model was trained with some
    signal left, though sampling starts from pure noise; ``trailing``: ``round(T - i * T / n) - 1``, which
    always starts at t = T - 1 (99, 89, ..., 9)."""
    data_scale: float = 1.0
    """Improved Immiscible Diffusion's "image scaling": train on s * x0 (SNR x s^2), divide samples by s.
    Assignment sees the scaled data, so a larger s makes the data-noise distances (and the assigned
    noise's bias toward x0) larger; the noise law of each assigner is unchanged (docs/assigners.md)."""
    clip_sample: bool = True
    """ddpm: clamp the predicted x0 to +-clip_sample_range (in data units) at every sampling step, and
    recompute the predicted noise from the clamped x0."""
    clip_sample_range: float = 1.0
    """Range of that clamp, in units of the (unscaled) data."""
    init_noise_scale: float = 1.0
    """Sampling only: sampling starts from ``init_noise_scale * N(0, I)`` (a sampling temperature; below
    1 the samples concentrate near the modes). The noise that DDPM's ancestral steps add is not scaled.
    Training never reads it."""
    stats_alpha_bars: tuple[float, ...] = (0.5,)
    """Signal levels at which the miscibility diagnostics measure trajectory mixing."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"objective kind={self.kind!r} is invalid; choose one of {KINDS}")
        if self.prediction_type is None:
            self.prediction_type = PREDICTIONS[self.kind][0]
        if self.sampler is None:
            self.sampler = SAMPLERS[self.kind][0]
        if self.prediction_type not in PREDICTIONS[self.kind]:
            raise ValueError(
                f"objective prediction_type={self.prediction_type!r} is invalid for kind={self.kind!r}; "
                f"choose one of {PREDICTIONS[self.kind]}"
            )
        if self.sampler not in SAMPLERS[self.kind]:
            raise ValueError(
                f"objective sampler={self.sampler!r} is invalid for kind={self.kind!r}; "
                f"choose one of {SAMPLERS[self.kind]}"
            )
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(
                f"objective timestep_spacing={self.timestep_spacing!r} is invalid; choose one of {SPACINGS}"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"objective beta_schedule={self.beta_schedule!r} is invalid; choose one of {tuple(BETA_SCHEDULES)}"
            )
        if self.num_train_timesteps < 2:
            raise ValueError(f"objective num_train_timesteps={self.num_train_timesteps} must be >= 2")
        if not 1 <= self.num_inference_steps <= max(self.num_train_timesteps, 1000):
            raise ValueError(f"objective num_inference_steps={self.num_inference_steps} must be >= 1")
        if self.kind == "ddpm" and self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"objective num_inference_steps={self.num_inference_steps} exceeds "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        if not self.data_scale > 0:
            raise ValueError(f"objective data_scale={self.data_scale} must be > 0")
        scale = self.init_noise_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 10:
            raise ValueError(f"objective init_noise_scale={scale!r} is invalid; it must lie in (0, 10]")
        self.init_noise_scale = float(scale)
        self.stats_alpha_bars = tuple(float(a) for a in self.stats_alpha_bars)


def _full_precision(x: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast off: under ``train.amp`` the assigners' distances and matchings stay in full precision."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class DiffusionObjective(nn.Module):
    """Training loss and sampling for one diffusion family, with noise from an assigner.

    Args:
        cfg: the objective's configuration.
        assigner: a noise assigner (``make_assigner(...)``); default ``none`` (plain Gaussian noise).
    """

    def __init__(self, cfg: ObjectiveConfig | None = None, assigner: Assigner | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ObjectiveConfig()
        self.assigner = assigner if assigner is not None else make_assigner("none")
        if self.cfg.kind == "ddpm":
            ab = alphas_cumprod(make_betas(self.cfg.beta_schedule, self.cfg.num_train_timesteps))
        else:
            ab = torch.zeros(0, dtype=torch.float64)
        # float64 on the host; indexed per step then cast to the batch's dtype. Not part of state_dict.
        self.register_buffer("alphas_cumprod", ab, persistent=False)

    # -- training -------------------------------------------------------------------------------------

    def draw_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training noise for a (scaled) batch, from the assigner. The only place training noise is drawn.

        Args:
            x0: Tensor, shape (B, *dims), already multiplied by ``data_scale``.
        Returns:
            Tensor, shape (B, *dims).
        """
        with _full_precision(x0):
            return self.assigner(x0, generator=generator)

    def loss(
        self,
        model_fn: ModelFn,
        x0: Tensor,
        cond: Any = None,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
        with_stats: bool = False,
    ) -> tuple[Tensor, dict[str, float]]:
        """Mean-squared training loss on a batch.

        Args:
            model_fn: ``model_fn(x_t, t, cond) -> prediction`` of x_t's shape.
            x0: Tensor, shape (B, *dims), clean data (unscaled).
            cond: anything the model takes as conditioning (passed through).
            generator: drives noise and timesteps (a generator on x0's device; None: the assigner's own
                generator for noise and a fresh draw from it for timesteps).
            mask: optional bool/float Tensor broadcastable to x0: the loss averages over it.
            with_stats: also compute the miscibility diagnostics of the drawn noise.
        Returns:
            (loss, stats): scalar Tensor and a dict of floats (``loss`` and, if asked, diagnostics).
        """
        x0 = x0 * self.cfg.data_scale if self.cfg.data_scale != 1.0 else x0
        t_range = getattr(self.assigner, "t_range", None)
        if t_range is None:  # noise first, then time (the draw order of every run without t_range)
            noise = self.draw_noise(x0, generator)  # (B, *dims)
            if generator is None:
                generator = self.assigner.default_generator(x0.device)
            t_index, t = self._draw_time(x0, generator)
        else:  # time first, plain noise for every row, then assigned noise for the rows inside the range
            if generator is None:
                generator = self.assigner.default_generator(x0.device)
            t_index, t = self._draw_time(x0, generator)
            fraction = t if t_index is None else t_index.double() / self.cfg.num_train_timesteps  # (B,)
            noise = self.draw_noise_in_range(x0, fraction, t_range, generator)  # (B, *dims)
        batch = x0.shape[0]
        if self.cfg.kind == "ddpm":
            assert t_index is not None
            ab = self._alpha_bar(t_index, x0)  # (B, 1, ...)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            target = {
                "epsilon": noise,
                "sample": x0,
                "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0,
            }[self.cfg.prediction_type]
            t_model = t_index.to(x0.dtype)
        else:
            assert t is not None
            tb = t.reshape(batch, *([1] * (x0.dim() - 1)))
            x_t = (1 - tb) * x0 + tb * noise
            target = noise - x0
            t_model = t * self.cfg.num_train_timesteps
        pred = model_fn(x_t, t_model, cond)
        err = (pred.float() - target.float()).square()
        if mask is not None:
            m = mask.to(err.dtype).expand_as(err)
            loss = (err * m).sum() / m.sum().clamp_min(1.0)
        else:
            loss = err.mean()
        stats: dict[str, float] = {}
        if with_stats:
            stats = miscibility_stats(x0, noise, self.cfg.stats_alpha_bars)
            k = getattr(self.assigner, "last_k", None)
            if k is not None:
                stats["assign_k"] = float(k)
        return loss, stats

    def _draw_time(self, x0: Tensor, generator: torch.Generator) -> tuple[Tensor | None, Tensor | None]:
        """Training times: ddpm step indices (B,) int64 (and None), or flow times (None and) (B,) in [0, 1)."""
        batch = x0.shape[0]
        if self.cfg.kind == "ddpm":
            t_index = torch.randint(0, self.cfg.num_train_timesteps, (batch,), device=x0.device, generator=generator)
            return t_index, None
        return None, torch.rand(batch, device=x0.device, generator=generator, dtype=x0.dtype)

    def draw_noise_in_range(
        self, x0: Tensor, fraction: Tensor, t_range: tuple[float, float], generator: torch.Generator
    ) -> Tensor:
        """Training noise with the assigner's ``t_range``: plain N(0, I) noise for every row is drawn first
        (so rows outside the range get the same noise whatever the assigner), then the rows with
        ``lo <= fraction < hi`` are replaced by the assigner's noise for that subset (``lsa`` assigns
        within it).

        Args:
            x0: Tensor, shape (B, *dims), already multiplied by ``data_scale``.
            fraction: Tensor, shape (B,): t / T of each row, in [0, 1).
        Returns:
            Tensor, shape (B, *dims).
        """
        work = torch.float64 if x0.dtype == torch.float64 else torch.float32  # as the assigners draw
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=work).to(x0.dtype)  # (B, *dims)
        lo, hi = t_range
        inside = ((fraction >= lo) & (fraction < hi)).nonzero().squeeze(1)  # (B_in,)
        collective = getattr(self.assigner, "requires_all_ranks", lambda: False)()
        if inside.numel() > 0 or collective:  # a collective assigner is called on every rank, even empty
            with _full_precision(x0):
                noise[inside] = self.assigner(x0[inside], generator=generator).to(noise.dtype)
        return noise

    def _alpha_bar(self, t_index: Tensor, like: Tensor) -> Tensor:
        ab = self.alphas_cumprod.to(like.device)[t_index].to(like.dtype)  # (B,)
        return ab.reshape(-1, *([1] * (like.dim() - 1)))

    # -- sampling -------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        cond: Any = None,
        generator: torch.Generator | None = None,
        num_steps: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw samples by integrating the reverse process from ``init_noise_scale * N(0, I)`` (never from
        assigned noise).

        Args:
            model_fn: the trained network, ``model_fn(x_t, t, cond)``.
            shape: (B, *dims) of the samples.
            num_steps: sampling steps (default ``num_inference_steps``).
        Returns:
            Tensor of ``shape``, in data units (divided by ``data_scale``).
        """
        if device is None:
            device = self.alphas_cumprod.device if generator is None else generator.device
        steps = num_steps or self.cfg.num_inference_steps
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if self.cfg.init_noise_scale != 1.0:
            x = x * self.cfg.init_noise_scale
        if self.cfg.kind == "flow_matching":
            x = self._sample_euler(model_fn, x, cond, steps)
        else:
            x = self._sample_ddpm_family(model_fn, x, cond, steps, generator)
        return x / self.cfg.data_scale

    def inference_timesteps(self, steps: int) -> list[int]:
        """Descending training-step indices visited by DDIM/DDPM sampling (``cfg.timestep_spacing``)."""
        big_t = self.cfg.num_train_timesteps
        if not 1 <= steps <= big_t:
            raise ValueError(f"num_steps={steps} must lie in [1, num_train_timesteps={big_t}]")
        if self.cfg.timestep_spacing == "trailing":
            return [round(big_t - i * big_t / steps) - 1 for i in range(steps)]
        ratio = big_t // steps
        return [i * ratio for i in reversed(range(steps))]

    def _sample_ddpm_family(
        self, model_fn: ModelFn, x: Tensor, cond: Any, steps: int, generator: torch.Generator | None
    ) -> Tensor:
        timesteps = self.inference_timesteps(steps)
        abar = self.alphas_cumprod.to(x.device)
        clip = self.cfg.clip_sample_range * self.cfg.data_scale
        batch = x.shape[0]
        for i, t in enumerate(timesteps):
            ab_t = float(abar[t])
            ab_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            t_model = torch.full((batch,), float(t), device=x.device, dtype=x.dtype)
            out = model_fn(x, t_model, cond)
            x0_pred, eps_pred = self._split_prediction(out, x, ab_t)
            if self.cfg.clip_sample:
                # Clamp x0 and re-derive epsilon from it, so the DDIM step stays consistent with x_t
                # (keeping the raw epsilon leaves strongly guided samples noisy).
                x0_pred = x0_pred.clamp(-clip, clip)
                eps_pred = (x - math.sqrt(ab_t) * x0_pred) / math.sqrt(1 - ab_t)
            if self.cfg.sampler == "ddim":  # deterministic (eta = 0)
                x = math.sqrt(ab_prev) * x0_pred + math.sqrt(1 - ab_prev) * eps_pred
            else:  # ancestral DDPM posterior q(x_prev | x_t, x0_pred), strided when steps < T
                beta = 1 - ab_t / ab_prev
                coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
                coef_xt = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
                x = coef_x0 * x0_pred + coef_xt * x
                if i + 1 < len(timesteps):
                    var = beta * (1 - ab_prev) / (1 - ab_t)
                    x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x

    def _split_prediction(self, out: Tensor, x_t: Tensor, ab: float) -> tuple[Tensor, Tensor]:
        """(x0, epsilon) implied by the model output at signal level ``ab``."""
        s, sigma = math.sqrt(ab), math.sqrt(1 - ab)
        if self.cfg.prediction_type == "epsilon":
            return (x_t - sigma * out) / s, out
        if self.cfg.prediction_type == "sample":
            return out, (x_t - s * out) / sigma
        # v = s * eps - sigma * x0  =>  x0 = s * x_t - sigma * v,  eps = sigma * x_t + s * v
        return s * x_t - sigma * out, sigma * x_t + s * out

    def _sample_euler(self, model_fn: ModelFn, x: Tensor, cond: Any, steps: int) -> Tensor:
        batch = x.shape[0]
        t_grid = torch.linspace(1.0, 0.0, steps + 1)
        for i in range(steps):
            t, t_next = float(t_grid[i]), float(t_grid[i + 1])
            t_model = torch.full((batch,), t * self.cfg.num_train_timesteps, device=x.device, dtype=x.dtype)
            x = x + (t_next - t) * model_fn(x, t_model, cond)
        return x

    def extra_repr(self) -> str:
        return f"cfg={self.cfg}, assigner={self.assigner.name} {self.assigner.options}"
