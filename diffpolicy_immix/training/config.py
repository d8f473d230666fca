"""Training configuration: plain dataclasses that check themselves.

Every field has a default and a one-line doc; ``__post_init__`` rejects bad values with a one-line error
that names the field and the value. ``TrainConfig.from_dict`` builds a config from YAML/Hydra data
(lists become tuples, the ``ema`` table becomes an ``EMAConfig``) and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EMAConfig", "TrainConfig", "LR_SCHEDULES", "DEVICES", "AMP_MODES"]

LR_SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r} is invalid; it must be an integer >= {minimum}")


def _require_float(owner: str, name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    ok = _is_number(value) and math.isfinite(value) and value <= high and (value > low if open_low else value >= low)
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"{owner}.{name}={value!r} is invalid; it must be a number in {bracket}{low}, {high}]")


def _require_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name}={value!r} is invalid; choose one of {choices}")


@dataclass
class EMAConfig:
    """Exponential moving average of the weights, with Diffusion Policy's warm-up schedule.

    decay(n) = clamp(1 - (1 + m / inv_gamma) ** -power, min_decay, max_decay), where
    m = n - update_after_step - 1 and n counts the EMA updates done so far; decay is 0 (a plain copy)
    while m <= 0.
    """

    enabled: bool = True
    """Keep an averaged copy of the model; evaluation and top-k checkpoints rank the averaged model."""
    power: float = 0.75
    """Warm-up exponent (2/3 suits very long runs, 3/4 shorter ones)."""
    max_decay: float = 0.9999
    """Upper clamp of the decay."""
    inv_gamma: float = 1.0
    """Warm-up time scale, in updates (> 0)."""
    min_decay: float = 0.0
    """Lower clamp of the decay (once updates have started)."""
    update_after_step: int = 0
    """Copy the weights (decay 0) for this many updates before averaging starts."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"ema.enabled={self.enabled!r} is invalid; it must be true or false")
        _require_float("ema", "power", self.power, 0.0, 1e6, open_low=True)
        _require_float("ema", "inv_gamma", self.inv_gamma, 0.0, 1e12, open_low=True)
        _require_float("ema", "max_decay", self.max_decay, 0.0, 1.0)
        _require_float("ema", "min_decay", self.min_decay, 0.0, 1.0)
        if self.min_decay > self.max_decay:
            raise ValueError(
                f"ema.min_decay={self.min_decay!r} is larger than ema.max_decay={self.max_decay!r}; "
                "lower min_decay or raise max_decay"
            )
        _require_int("ema", "update_after_step", self.update_after_step, 0)


@dataclass
class TrainConfig:
    """What the trainer needs to know; the model and data have their own configs."""

    steps: int = 1000
    """Total optimizer steps (a resumed run continues up to this count)."""
    batch_size: int = 64
    """Samples per step on each rank (global batch = batch_size x world size)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-6
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.95, 0.999)
    """AdamW's (beta1, beta2)."""
    warmup_steps: int = 500
    """Linear warm-up from 0 to ``lr`` over this many steps."""
    lr_schedule: str = "cosine"
    """After warm-up: ``"cosine"`` (decays to 0 at ``steps``) or ``"constant"``."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""
    ema: EMAConfig = field(default_factory=EMAConfig)
    """Weight averaging (see ``EMAConfig``)."""
    log_every: int = 1
    """Write a row of ``metrics.csv`` every this many steps (means over the steps since the last row)."""
    eval_every: int = 0
    """Evaluate the EMA model every this many steps (0: only at the end)."""
    checkpoint_every: int = 1000
    """Write ``checkpoints/latest.pt`` every this many steps (0: only at the end)."""
    keep_top_k: int = 3
    """Keep this many checkpoints ranked by evaluation ``score`` (0: none)."""
    seed: int = 0
    """Seeds data order, global RNGs and the noise generator (rank r draws noise with seed + r)."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``."""
    amp: str = "none"
    """Autocast precision: ``"none"``, ``"bf16"`` (CUDA or CPU) or ``"fp16"`` (CUDA only, with a gradient
    scaler). Parameters, optimizer state and EMA stay float32; only the forward/backward math is cast."""
    compile: bool = False
    """Wrap the model in ``torch.compile`` for training (CUDA or CPU; on CPU it needs a C++ compiler)."""
    num_workers: int = 0
    """DataLoader workers for datasets without ``get_batch`` (0 keeps resume exact; see docs/training.md)."""
    diag_every: int = 0
    """Ask the model for its diagnostics (``with_stats=True``) every this many steps (0: never)."""

    def __post_init__(self) -> None:
        if isinstance(self.ema, dict):
            self.ema = EMAConfig(**_known_keys(EMAConfig, self.ema, "ema"))
        if not isinstance(self.ema, EMAConfig):
            raise ValueError(f"train.ema={self.ema!r} is invalid; pass an EMAConfig or a table of its fields")
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        _require_int("train", "steps", self.steps, 1)
        _require_int("train", "batch_size", self.batch_size, 1)
        _require_float("train", "lr", self.lr, 0.0, 1e3, open_low=True)
        _require_float("train", "weight_decay", self.weight_decay, 0.0, 1e3)
        if not (
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(_is_number(b) and 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise ValueError(f"train.betas={self.betas!r} is invalid; it must be two numbers in [0, 1)")
        _require_int("train", "warmup_steps", self.warmup_steps, 0)
        _require_choice("train", "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.grad_clip is not None:
            _require_float("train", "grad_clip", self.grad_clip, 0.0, math.inf, open_low=True)
        _require_int("train", "log_every", self.log_every, 1)
        _require_int("train", "eval_every", self.eval_every, 0)
        _require_int("train", "checkpoint_every", self.checkpoint_every, 0)
        _require_int("train", "keep_top_k", self.keep_top_k, 0)
        _require_int("train", "seed", self.seed, 0)
        _require_choice("train", "device", self.device, DEVICES)
        _require_choice("train", "amp", self.amp, AMP_MODES)
        if not isinstance(self.compile, bool):
            raise ValueError(f"train.compile={self.compile!r} is invalid; it must be true or false")
        if self.device == "cpu" and self.amp == "fp16":
            raise ValueError("train.amp='fp16' needs CUDA but train.device='cpu'; use amp: bf16 or none")
        _require_int("train", "num_workers", self.num_workers, 0)
        _require_int("train", "diag_every", self.diag_every, 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping (e.g. a YAML/Hydra ``train`` group); unknown keys are errors."""
        return cls(**_known_keys(cls, dict(data), "train"))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of built-in types (tuples become lists), ready for YAML and checkpoints."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


def _known_keys(cls: type, data: dict[str, Any], owner: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{owner}: unknown key {unknown[0]!r}; valid keys are {sorted(names)}")
    return data
