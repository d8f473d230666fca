"""Class-conditional image diffusion model: a :class:`UNet2D` trained by a :class:`DiffusionObjective`.

```python
from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import make_assigner
from diffpolicy_immix.imagegen import ImageDiffusionModel, ImageModelConfig

objective = DiffusionObjective(ObjectiveConfig(kind="ddpm"), assigner=make_assigner("knn", k=8))
model = ImageDiffusionModel(ImageModelConfig(), objective)          # 8x8 digits, 10 classes
loss, stats = model.compute_loss({"image": x, "label": y}, generator=g)   # x (B, 1, 8, 8) in [-1, 1]
images = model.sample(16, labels=torch.arange(16) % 10, guidance_scale=2.0)  # (16, 1, 8, 8)
```

Classifier-free guidance: during training each label is replaced by the UNet's learned null class
with probability ``cfg_dropout``; at sampling time the conditional and unconditional predictions are
combined as ``u + w (c - u)`` (``w = guidance_scale``; 1 = plain conditional, 0 = unconditional).
The model never draws noise: training noise and timesteps come from the objective (through its
assigner), and so does the initial sampling noise. Label dropout has a stream of its own, neither the
noise generator nor torch's global random state: mask ``n`` of rank ``r`` comes from a CPU
``torch.Generator`` seeded with ``(label_seed + LABEL_DROPOUT_OFFSET, r, n)``, and the count ``n`` is the
buffer ``label_dropout_draws``, saved with the weights, so a resumed run continues the same masks.
Changing ``cfg_dropout`` leaves the training noise and the dropout layers' masks unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.imagegen.unet2d import UNet2D

IMAGE = "image"
LABEL = "label"
LABEL_DROPOUT_OFFSET = 7_919
"""Added to the run seed for the label-dropout stream, so it never shares a seed with the run's others."""


@dataclass
class ImageModelConfig:
    """Image shape, UNet settings and classifier-free-guidance options of an :class:`ImageDiffusionModel`.

    The defaults are a CPU-friendly model for 8x8 digits (~0.69 M parameters, one down-sampling step
    8 -> 4, no attention). See ``IMAGE_MODEL_PRESETS`` for MNIST- and CIFAR-10-sized settings.

    Attributes:
        in_channels: image channels C (1 grayscale, 3 RGB).
        image_size: H = W of the training images.
        num_classes: number of classes for conditioning; None trains an unconditional model.
        base_channels: UNet width of the first level.
        channel_mults: width multiplier per level; the resolution halves between levels (sizes that are
            not multiples of ``2**(len-1)`` are zero-padded inside the UNet).
        num_res_blocks: residual blocks per level.
        attention_resolutions: feature-map sizes (after padding) with self-attention.
        dropout: dropout inside residual blocks.
        num_groups: GroupNorm groups.
        num_heads: attention heads.
        cfg_dropout: probability of replacing a training label by the null class (for guidance);
            ignored when ``num_classes`` is None.
        guidance_scale: default classifier-free guidance weight for :meth:`ImageDiffusionModel.sample`.
    """

    in_channels: int = 1
    image_size: int = 8
    num_classes: int | None = 10
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    num_groups: int = 8
    num_heads: int = 4
    cfg_dropout: float = 0.1
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "num_groups", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImageModelConfig: {name}={value!r} must be a positive integer")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"ImageModelConfig: num_classes={self.num_classes!r} must be a positive integer or None")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"ImageModelConfig: channel_mults={self.channel_mults} must be non-empty and positive")
        factor = 2 ** (len(self.channel_mults) - 1)
        if factor > self.image_size:
            raise ValueError(
                f"ImageModelConfig: channel_mults={self.channel_mults} halves the resolution "
                f"{len(self.channel_mults) - 1} times, too often for image_size={self.image_size}; use fewer levels"
            )
        padded = -(-self.image_size // factor) * factor
        levels = [padded // 2**i for i in range(len(self.channel_mults))]
        bad = [r for r in self.attention_resolutions if r not in levels]
        if bad:
            raise ValueError(
                f"ImageModelConfig: attention_resolutions={self.attention_resolutions} has {bad}; "
                f"feature-map sizes of this UNet are {levels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ImageModelConfig: dropout={self.dropout} must be in [0, 1)")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"ImageModelConfig: cfg_dropout={self.cfg_dropout} must be in [0, 1)")
        if self.guidance_scale < 0:
            raise ValueError(f"ImageModelConfig: guidance_scale={self.guidance_scale} must be >= 0")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.in_channels, self.image_size, self.image_size)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ImageModelConfig:
        """A config from ``IMAGE_MODEL_PRESETS[name]`` with field overrides."""
        if name not in IMAGE_MODEL_PRESETS:
            raise ValueError(f"unknown image model preset {name!r}; valid: {', '.join(IMAGE_MODEL_PRESETS)}")
        valid = {f.name for f in fields(cls)}
        unknown = [k for k in overrides if k not in valid]
        if unknown:
            raise ValueError(f"ImageModelConfig has no field {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
        return cls(**{**IMAGE_MODEL_PRESETS[name], **overrides})


IMAGE_MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # 8x8 digits on a CPU: 8 -> 4, ~0.69 M parameters.
    "digits": dict(in_channels=1, image_size=8, num_classes=10),
    # 28x28 MNIST: 28 -> 14 -> 7, attention at 7x7, ~1.2 M parameters.
    "mnist": dict(in_channels=1, image_size=28, num_classes=10, channel_mults=(1, 2, 2), attention_resolutions=(7,)),
    # 32x32 CIFAR-10 (CPU-sized; the benchmark's config): 32 -> 16 -> 8, attention at 8x8, ~1.2 M parameters.
    "cifar10": dict(in_channels=3, image_size=32, num_classes=10, channel_mults=(1, 2, 2), attention_resolutions=(8,)),
    # A larger CIFAR-10 model for a GPU: 64 base channels, 2 blocks per level, ~9.5 M parameters.
    "cifar10-gpu": dict(
        in_channels=3,
        image_size=32,
        num_classes=10,
        base_channels=64,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
    ),
}


class ImageDiffusionModel(nn.Module):
    """UNet2D + DiffusionObjective, with classifier-free guidance.

    Args:
        cfg: image and network settings.
        objective: the objective that draws noise, forms the loss and samples (default: DDPM with
            plain Gaussian noise, ``DiffusionObjective(ObjectiveConfig())``).
        label_seed: the run seed; the label-dropout stream is seeded from ``label_seed +
            LABEL_DROPOUT_OFFSET`` (see :meth:`label_dropout_generator`).
    """

    def __init__(self, cfg: ImageModelConfig, objective: DiffusionObjective | None = None, label_seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.label_seed = int(label_seed)
        # masks drawn so far (a buffer: saved with the weights and restored on resume); _draws mirrors it on
        # the host so that reading it never waits for the device
        self.register_buffer("label_dropout_draws", torch.zeros((), dtype=torch.int64))
        self._draws = 0
        self.objective = objective if objective is not None else DiffusionObjective(ObjectiveConfig())
        self.unet = UNet2D(
            in_channels=cfg.in_channels,
            base_channels=cfg.base_channels,
            channel_mults=cfg.channel_mults,
            num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=cfg.attention_resolutions,
            num_classes=cfg.num_classes,
            dropout=cfg.dropout,
            image_size=cfg.image_size,
            num_groups=cfg.num_groups,
            num_heads=cfg.num_heads,
        )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_classes(self) -> int | None:
        return self.cfg.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return self.cfg.image_shape

    def label_dropout_generator(self) -> torch.Generator:
        """The CPU generator of the next label-dropout mask: seeded from ``(label_seed +
        LABEL_DROPOUT_OFFSET, rank, draws so far)``, so each mask depends only on the run seed, the rank
        and its index, never on the noise generator or torch's global random state."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        entropy = [self.label_seed + LABEL_DROPOUT_OFFSET, rank, self._draws]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        return torch.Generator().manual_seed(seed)

    def _drop_labels(self, labels: Tensor) -> Tensor:
        """``labels`` (B,) with each replaced by the null class with probability ``cfg_dropout`` (one draw of
        the label-dropout stream)."""
        drop = torch.rand(labels.shape, generator=self.label_dropout_generator()) < self.cfg.cfg_dropout  # (B,)
        self._draws += 1
        self.label_dropout_draws.fill_(self._draws)
        return torch.where(drop.to(labels.device), torch.full_like(labels, self.unet.null_class), labels)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load as usual; weights saved before the label-dropout count existed start it at 0."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "label_dropout_draws"
        if key in missing_keys:
            missing_keys.remove(key)
        self._draws = int(self.label_dropout_draws)

    def _denoise(self, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The objective's ``model_fn``: (B, C, H, W), (B,), (B,) | None -> (B, C, H, W)."""
        return self.unet(x_t, t, labels)

    # ---------------------------------------------------------------------------------------- training
    def compute_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, with_stats: bool = False
    ) -> tuple[Tensor, dict[str, float]]:
        """Diffusion loss on a batch of images.

        Args:
            batch: ``{"image": Tensor (B, C, H, W) in [-1, 1], "label": Tensor (B,) int64 (optional)}``;
                other keys are ignored. Without labels a conditional model trains on the null class.
            generator: passed to the objective (noise, timesteps); it must live on the batch's device.
                Label dropout draws from its own stream instead (:meth:`label_dropout_generator`).
            with_stats: ask the objective for miscibility statistics.
        Returns:
            (loss, stats): scalar Tensor and a dict of floats.
        """
        if IMAGE not in batch:
            raise KeyError(f"ImageDiffusionModel.compute_loss: batch has no key {IMAGE!r} (keys: {sorted(batch)})")
        x0 = batch[IMAGE]
        if x0.ndim != 4 or tuple(x0.shape[1:]) != self.image_shape:
            raise ValueError(
                f"ImageDiffusionModel.compute_loss: batch['image'] shape {tuple(x0.shape)} must be "
                f"(B, {', '.join(map(str, self.image_shape))})"
            )
        labels = batch.get(LABEL) if self.cfg.num_classes is not None else None
        if labels is not None:
            labels = labels.to(device=x0.device, dtype=torch.long)
            if labels.shape != (x0.shape[0],):
                raise ValueError(
                    f"ImageDiffusionModel.compute_loss: batch['label'] shape {tuple(labels.shape)} "
                    f"must be ({x0.shape[0]},)"
                )
            if self.training and self.cfg.cfg_dropout > 0:
                labels = self._drop_labels(labels)
        return self.objective.loss(self._denoise, x0, cond=labels, generator=generator, with_stats=with_stats)

    def forward(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, with_stats: bool = False
    ) -> tuple[Tensor, dict[str, float]]:
        """Same as :meth:`compute_loss` (DDP synchronizes gradients only through ``forward``)."""
        return self.compute_loss(batch, generator=generator, with_stats=with_stats)

    # ---------------------------------------------------------------------------------------- sampling
    def _labels(self, n: int, labels: Tensor | list[int] | int | None) -> Tensor | None:
        if labels is None:
            return None
        if self.cfg.num_classes is None:
            raise ValueError("ImageDiffusionModel.sample: labels given but the model is unconditional")
        lab = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        if lab.ndim == 0:
            lab = lab.expand(n)
        if lab.shape != (n,):
            raise ValueError(f"ImageDiffusionModel.sample: labels shape {tuple(lab.shape)} must be ({n},)")
        if n and (int(lab.min()) < 0 or int(lab.max()) >= self.cfg.num_classes):
            raise ValueError(
                f"ImageDiffusionModel.sample: labels must be in 0..{self.cfg.num_classes - 1}; "
                f"got {int(lab.min())}..{int(lab.max())}"
            )
        return lab

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: Tensor | list[int] | int | None = None,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
    ) -> Tensor:
        """Generate images.

        Args:
            n: number of images.
            labels: Tensor (n,) / list / int class labels, or None for unconditional samples (the null
                class of a conditional model).
            generator: drives the objective's sampling noise (on the model's device).
            guidance_scale: classifier-free guidance weight w (default ``cfg.guidance_scale``):
                prediction = u + w (c - u); w = 1 is plain conditional sampling.
            num_steps: sampling steps (default: the objective's ``num_inference_steps``).
        Returns:
            Tensor, shape (n, C, H, W), clamped to [-1, 1].
        """
        if n < 1:
            raise ValueError(f"ImageDiffusionModel.sample: n={n} must be >= 1")
        w = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        if w < 0:
            raise ValueError(f"ImageDiffusionModel.sample: guidance_scale={w} must be >= 0")
        lab = self._labels(n, labels)
        null = None if self.cfg.num_classes is None else torch.full((n,), self.unet.null_class, device=self.device)
        if lab is None or w == 1.0:
            model_fn = self._denoise
        elif w == 0.0:
            lab = null
            model_fn = self._denoise
        else:

            def model_fn(x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
                both = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null]))
                c, u = both.chunk(2)
                return u + w * (c - u)

        was_training = self.training
        self.eval()
        try:
            x = self.objective.sample(
                model_fn, (n, *self.image_shape), cond=lab, generator=generator, num_steps=num_steps, device=self.device
            )
        finally:
            self.train(was_training)
        return x.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"image_shape={self.image_shape}, num_classes={c.num_classes}, cfg_dropout={c.cfg_dropout}"
