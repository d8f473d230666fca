"""Sample grids (PNG) and the sample-and-score routine used by evaluation callbacks and ``dpi-sample``.

```python
from diffpolicy_immix.imagegen import ClassifierFD, ImageEvaluator, sample_and_score, save_image_grid

fd = ClassifierFD.from_dataset("digits")                      # cached classifier + reference stats
scores = sample_and_score(model, 500, fd, guidance_scale=2.0, generator=g, grid_path="samples.png")
evaluate = ImageEvaluator(fd, n=500, guidance_scale=2.0, seed=0)   # trainer callback: model -> dict
```
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from diffpolicy_immix.imagegen.metrics import ClassifierFD
from diffpolicy_immix.utils.io import atomic_write


def auto_upscale(size: int, min_tile: int = 32) -> int:
    """Smallest integer factor that makes a ``size``-pixel tile at least ``min_tile`` pixels."""
    return max(1, math.ceil(min_tile / max(size, 1)))


def make_grid(
    images: Tensor, nrow: int | None = None, padding: int = 1, upscale: int = 1, pad_value: float = 1.0
) -> np.ndarray:
    """Tile images into one uint8 picture.

    Args:
        images: Tensor, shape (B, C, H, W), values in [-1, 1] (clamped), C in {1, 3}.
        nrow: tiles per row (default ceil(sqrt(B))).
        padding: pixels between tiles (after upscaling).
        upscale: nearest-neighbour upscaling factor per tile (e.g. 4 for 8x8 digits).
        pad_value: padding colour in [-1, 1] (1 = white).
    Returns:
        uint8 array, shape (H', W') for C = 1 or (H', W', 3) for C = 3.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"make_grid: images shape {tuple(images.shape)} must be (B >= 1, 1 or 3, H, W)")
    if upscale < 1 or padding < 0:
        raise ValueError(f"make_grid: upscale={upscale} must be >= 1 and padding={padding} >= 0")
    x = images.detach().float().cpu().clamp(-1, 1)
    if upscale > 1:
        x = x.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    b, c, h, w = x.shape
    ncol = nrow or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncol)
    canvas = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(b):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        canvas[:, top : top + h, left : left + w] = x[i]
    arr = ((canvas + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    arr = rearrange(arr, "c h w -> h w c").numpy()
    return arr[:, :, 0] if c == 1 else arr


def save_image_grid(
    images: Tensor,
    path: str | Path,
    nrow: int | None = None,
    upscale: int | None = None,
    padding: int = 1,
) -> Path:
    """Write a grid of images as a PNG, atomically (temp file in the same folder, then rename).

    Args:
        images: Tensor, shape (B, C, H, W) in [-1, 1].
        path: output file (parent folders are created).
        nrow: tiles per row (default ceil(sqrt(B))).
        upscale: nearest-neighbour factor; None picks one so tiles are >= 32 px (8x8 -> x4).
        padding: pixels between tiles.
    Returns:
        The path written.
    """
    from PIL import Image

    path = Path(path)
    factor = auto_upscale(int(images.shape[-1])) if upscale is None else upscale
    arr = make_grid(images, nrow=nrow, padding=padding, upscale=factor)
    with atomic_write(path, "wb") as f:  # creates the parent folders
        Image.fromarray(arr).save(f, format="PNG")
    return path


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... (n of them): Tensor, shape (n,) int64."""
    return torch.arange(n) % num_classes


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / compile wrapper."""
    while hasattr(model, "module") and not hasattr(model, "sample"):
        model = model.module
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def sample_and_score(
    model: nn.Module,
    n: int,
    classifier_fd: ClassifierFD | None = None,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
    grid_path: str | Path | None = None,
    grid_size: int = 100,
    batch_size: int = 500,
) -> dict[str, float]:
    """Draw ``n`` samples (class-balanced for a conditional model) and score them.

    Args:
        model: an :class:`~diffpolicy_immix.imagegen.model.ImageDiffusionModel` (DDP-wrapped is fine).
        n: number of samples (>= 2 for the FD).
        classifier_fd: the metric; None skips ``fd`` and ``class_accuracy``.
        guidance_scale: classifier-free guidance weight (default: the model's config).
        generator: sampling noise generator on the model's device.
        num_steps: sampling steps (default: the objective's).
        grid_path: if given, a PNG of the first ``grid_size`` samples is written there.
        batch_size: samples drawn per call of ``model.sample``.
    Returns:
        dict of floats: ``fd`` and ``score`` (= -fd, higher is better) with a classifier; ``class_accuracy``
        (conditional models with a classifier); ``sample_mean``, ``sample_std``, ``saturated_frac``
        (fraction of pixels at +-1 after clamping), ``n_samples``, ``sample_seconds``.
    """
    net = _unwrap(model)
    if n < 1:
        raise ValueError(f"sample_and_score: n={n} must be >= 1")
    num_classes = net.num_classes
    labels = balanced_labels(n, num_classes) if num_classes is not None else None
    start = time.perf_counter()
    chunks = []
    for lo in range(0, n, batch_size):
        lab = labels[lo : lo + batch_size] if labels is not None else None
        m = min(batch_size, n - lo)
        chunks.append(
            net.sample(m, labels=lab, generator=generator, guidance_scale=guidance_scale, num_steps=num_steps).cpu()
        )
    images = torch.cat(chunks)  # (n, C, H, W)
    out: dict[str, float] = {
        "n_samples": float(n),
        "sample_seconds": time.perf_counter() - start,
        "sample_mean": float(images.mean()),
        "sample_std": float(images.std()) if images.numel() > 1 else 0.0,
        "saturated_frac": float((images.abs() >= 1.0 - 1e-6).float().mean()),
    }
    if classifier_fd is not None:
        if n >= 2:
            out["fd"] = classifier_fd.fd(images)
            out["score"] = -out["fd"]
        if labels is not None:
            out["class_accuracy"] = classifier_fd.class_accuracy(images, labels)
    if grid_path is not None:
        k = min(grid_size, n)
        nrow = num_classes if num_classes is not None and k >= num_classes and num_classes <= 16 else None
        save_image_grid(images[:k], grid_path, nrow=nrow)
    return out


class ImageEvaluator:
    """Evaluation callback ``evaluate(model) -> dict[str, float]`` for the trainer.

    Every call samples with a generator freshly seeded with ``seed`` (the same starting noise at every
    checkpoint, so scores differ only through the model) and returns :func:`sample_and_score`'s dict.

    Args:
        classifier_fd: the metric (None: only sample statistics).
        n: samples per evaluation.
        guidance_scale: guidance weight (default: the model's config).
        seed: sampling seed.
        num_steps: sampling steps (default: the objective's).
        grid_dir: if given, each call writes ``grid_dir/samples_<call:04d>.png``.
    """

    def __init__(
        self,
        classifier_fd: ClassifierFD | None,
        n: int = 500,
        guidance_scale: float | None = None,
        seed: int = 0,
        num_steps: int | None = None,
        grid_dir: str | Path | None = None,
    ):
        self.classifier_fd = classifier_fd
        self.n = n
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.num_steps = num_steps
        self.grid_dir = Path(grid_dir) if grid_dir is not None else None
        self.calls = 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        net = _unwrap(model)
        gen = torch.Generator(device=net.device).manual_seed(self.seed)
        grid = self.grid_dir / f"samples_{self.calls:04d}.png" if self.grid_dir is not None else None
        self.calls += 1
        return sample_and_score(
            net, self.n, self.classifier_fd, self.guidance_scale, gen, num_steps=self.num_steps, grid_path=grid
        )
