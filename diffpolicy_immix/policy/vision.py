"""Image observation encoders: ResNet-18 with GroupNorm and spatial-softmax keypoints (Diffusion Policy's
and robomimic's encoder), a small CNN for CPU budgets, and :class:`MultiModalEncoder`, which turns an
observation dict of camera images and low-dimensional vectors into one conditioning vector.

Conventions:

- Images enter as ``(B, To, C, H, W)``, uint8 in [0, 255] (a float tensor is read on the same 0..255
  scale). They are normalized on the fly, never fitted: ``image_norm="minus_one_one"`` maps
  ``x / 127.5 - 1`` to [-1, 1] (the default); ``"imagenet"`` maps ``x / 255`` to
  ``(x - mean) / std`` with ImageNet's channel statistics (3-channel images only).
- Training takes a random ``crop_size`` x ``crop_size`` crop of every frame, with offsets drawn from the
  ``torch.Generator`` the caller passes (the trainer's noise generator, so resumed runs draw the same
  crops); evaluation (``module.eval()``) takes the centre crop. Torch's global random state is never used.
- Per step, the camera features (``feature_dim`` each) are followed by the low-dimensional vectors; the
  steps are then flattened: ``(B, To, F) -> (B, To * F)`` (Diffusion Policy's global conditioning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "IMAGE_NORMS",
    "MultiModalEncoder",
    "ResNet18GN",
    "SmallCNN",
    "SpatialSoftmax",
    "VisionConfig",
    "VisualEncoder",
    "crop_images",
    "normalize_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_NORMS = ("minus_one_one", "imagenet")


@dataclass
class VisionConfig:
    """Settings of the image encoders (``policy.vision``).

    Attributes:
        crop_size: side of the square crop (random in training, centre at evaluation); ``None`` = no crop.
            Diffusion Policy crops 96 x 96 images to 84 x 84.
        shared: one encoder for every camera (True) or one per camera (False).
        n_keypoints: K, keypoints of the spatial softmax (a 1x1 convolution maps the backbone's channels
            to K heatmaps); the pooled feature is (2K,) (x, y per keypoint).
        feature_dim: width of each camera's feature after a linear layer on the keypoints.
        image_norm: ``"minus_one_one"`` (``x / 127.5 - 1``) or ``"imagenet"`` (ImageNet mean and std
            after ``x / 255``).
    """

    crop_size: int | None = 84
    shared: bool = False
    n_keypoints: int = 32
    feature_dim: int = 64
    image_norm: str = "minus_one_one"

    def __post_init__(self) -> None:
        for name in ("n_keypoints", "feature_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"policy.vision.{name}={value!r} must be a positive integer")
        if self.crop_size is not None and (
            not isinstance(self.crop_size, int) or isinstance(self.crop_size, bool) or self.crop_size < 8
        ):
            raise ValueError(f"policy.vision.crop_size={self.crop_size!r} must be an integer >= 8 or null")
        if not isinstance(self.shared, bool):
            raise ValueError(f"policy.vision.shared={self.shared!r} must be true or false")
        if self.image_norm not in IMAGE_NORMS:
            raise ValueError(f"policy.vision.image_norm={self.image_norm!r} must be one of {IMAGE_NORMS}")


# --------------------------------------------------------------------------------------------- pixels
def normalize_images(images: Tensor, norm: str = "minus_one_one") -> Tensor:
    """Pixels (N, C, H, W) on the 0..255 scale (uint8 or float) -> float32 (N, C, H, W) normalized."""
    x = images.float()
    if norm == "minus_one_one":
        return x / 127.5 - 1.0
    if norm == "imagenet":
        if x.shape[1] != 3:
            raise ValueError(f"image_norm='imagenet' needs 3-channel images, got {x.shape[1]} channels")
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std
    raise ValueError(f"image_norm={norm!r} must be one of {IMAGE_NORMS}")


def crop_images(images: Tensor, size: int, generator: torch.Generator | None = None, random: bool = True) -> Tensor:
    """Square crops of every image.

    Args:
        images: Tensor (N, C, H, W), any dtype.
        size: crop side; ``size <= min(H, W)``.
        generator: source of the offsets when ``random`` (its device is used); ``None`` with ``random``
            raises, since crops must never come from torch's global random state.
        random: offsets uniform in ``[0, H - size] x [0, W - size]`` per image; otherwise the centre.

    Returns:
        Tensor (N, C, size, size), same dtype and device.
    """
    n, _, h, w = images.shape
    if size > h or size > w:
        raise ValueError(f"crop_size={size} exceeds the image size {h} x {w}")
    if size == h and size == w:
        return images
    if random:
        if generator is None:
            raise ValueError("crop_images: random crops need a torch.Generator (pass generator=...)")
        dev = generator.device
        top = torch.randint(0, h - size + 1, (n,), generator=generator, device=dev).to(images.device)
        left = torch.randint(0, w - size + 1, (n,), generator=generator, device=dev).to(images.device)
    else:
        top = torch.full((n,), (h - size) // 2, device=images.device)
        left = torch.full((n,), (w - size) // 2, device=images.device)
    steps = torch.arange(size, device=images.device)
    rows = (top[:, None] + steps)[:, :, None]  # (N, size, 1)
    cols = (left[:, None] + steps)[:, None, :]  # (N, 1, size)
    batch = torch.arange(n, device=images.device)[:, None, None]  # (N, 1, 1)
    out = images[batch, :, rows, cols]  # advanced indices first: (N, size, size, C)
    return rearrange(out, "n h w c -> n c h w")


# --------------------------------------------------------------------------------------------- pooling
class SpatialSoftmax(nn.Module):
    """Spatial-softmax keypoint pooling (Levine et al.; robomimic's ``SpatialSoftmax``).

    Each of K heatmaps is softmax-normalized over its H x W positions and reduced to its expected
    (x, y) position on a grid spanning [-1, 1] (x along the width, y along the height, -1 at the
    first row/column, +1 at the last).

    Args:
        in_channels: C of the feature map.
        n_keypoints: K; a 1x1 convolution maps C -> K heatmaps. ``None`` uses the C channels directly.
        temperature: the softmax is taken of ``features / temperature``.
    """

    def __init__(self, in_channels: int, n_keypoints: int | None = 32, temperature: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_keypoints, kernel_size=1) if n_keypoints else nn.Identity()
        self.n_keypoints = n_keypoints or in_channels
        self.temperature = float(temperature)
        self.out_dim = 2 * self.n_keypoints

    def forward(self, features: Tensor) -> Tensor:
        """features: Tensor (N, C, H, W) -> keypoints Tensor (N, K, 2) as (x, y) in [-1, 1]."""
        heat = self.proj(features)  # (N, K, H, W)
        _, _, h, w = heat.shape
        attn = torch.softmax(rearrange(heat, "n k h w -> n k (h w)") / self.temperature, dim=-1)  # (N, K, HW)
        ys = torch.linspace(-1.0, 1.0, h, device=heat.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=heat.device, dtype=attn.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        grid = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (HW, 2)
        return attn @ grid  # (N, K, 2)


# --------------------------------------------------------------------------------------------- backbones
def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 16 channels per group (Diffusion Policy's BatchNorm replacement)."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with GroupNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _group_norm(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.down(x))


class ResNet18GN(nn.Module):
    """ResNet-18 convolutional trunk (no pooling, no classifier) with GroupNorm instead of BatchNorm.

    (N, C, H, W) -> (N, 512, ceil(H / 32), ceil(W / 32)); 84 x 84 crops give 3 x 3 maps. Weights are
    initialized from scratch (Diffusion Policy trains its encoder from scratch too).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            _group_norm(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = 512

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor (N, C, H, W) normalized -> Tensor (N, 512, H', W')."""
        return self.layers(self.stem(x))


class SmallCNN(nn.Module):
    """Four convolutions with GroupNorm for CPU budgets (~95k parameters for RGB).

    (N, C, H, W) -> (N, 64, ceil(H / 8), ceil(W / 8)); 84 x 84 crops give 11 x 11 maps.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (32, 64, 64, 64)) -> None:
        super().__init__()
        kernels, strides = (5, 3, 3, 3), (2, 2, 2, 1)
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, k, s in zip(widths, kernels, strides):
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2), _group_norm(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor (N, C, H, W) normalized -> Tensor (N, 64, H', W')."""
        return self.net(x)


#: backbone name -> constructor(in_channels) with an ``out_channels`` attribute
BACKBONES: dict[str, type[nn.Module]] = {"resnet18_gn": ResNet18GN, "small_cnn": SmallCNN}


class VisualEncoder(nn.Module):
    """One camera: normalize -> backbone -> spatial softmax -> linear. (N, C, H, W) -> (N, feature_dim)."""

    def __init__(self, backbone: str, in_channels: int, cfg: VisionConfig) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"image backbone {backbone!r} is unknown; valid: {sorted(BACKBONES)}")
        self.image_norm = cfg.image_norm
        self.backbone = BACKBONES[backbone](in_channels)
        self.pool = SpatialSoftmax(self.backbone.out_channels, cfg.n_keypoints)
        self.head = nn.Linear(self.pool.out_dim, cfg.feature_dim)
        self.out_dim = cfg.feature_dim

    def forward(self, images: Tensor) -> Tensor:
        """images: Tensor (N, C, H, W), 0..255 scale (already cropped) -> Tensor (N, feature_dim)."""
        x = self.backbone(normalize_images(images, self.image_norm))  # (N, C', H', W')
        return self.head(rearrange(self.pool(x), "n k two -> n (k two)"))


class MultiModalEncoder(nn.Module):
    """Cameras plus low-dimensional vectors -> one global conditioning vector.

    Args:
        backbone: a key of :data:`BACKBONES`.
        image_channels: camera key -> C (e.g. ``{"img": 3}``), in the order of the features.
        lowdim_dims: low-dimensional key -> D (e.g. ``{"obs": 2}``), appended after the cameras.
        n_obs_steps: To.
        cfg: crop, sharing, keypoints, feature width, pixel normalization.

    ``out_dim = To * (n_cameras * feature_dim + sum(D))``.
    """

    def __init__(
        self,
        backbone: str,
        image_channels: Mapping[str, int],
        lowdim_dims: Mapping[str, int],
        n_obs_steps: int,
        cfg: VisionConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or VisionConfig()
        if not image_channels:
            raise ValueError(f"obs encoder {backbone!r} needs at least one image key (e.g. task.image_keys: [img])")
        if n_obs_steps < 1:
            raise ValueError(f"MultiModalEncoder: n_obs_steps={n_obs_steps} must be >= 1")
        self.cfg = cfg
        self.image_keys = list(image_channels)
        self.lowdim_dims = {k: int(d) for k, d in lowdim_dims.items()}
        self.n_obs_steps = n_obs_steps
        if cfg.shared:
            channels = set(image_channels.values())
            if len(channels) > 1:
                raise ValueError(
                    f"policy.vision.shared=true needs cameras with equal channels, got {dict(image_channels)}"
                )
            shared = VisualEncoder(backbone, channels.pop(), cfg)
            self.cameras = nn.ModuleDict({"shared": shared})
        else:
            self.cameras = nn.ModuleDict({k: VisualEncoder(backbone, c, cfg) for k, c in image_channels.items()})
        per_step = len(self.image_keys) * cfg.feature_dim + sum(self.lowdim_dims.values())
        self.out_dim = n_obs_steps * per_step
        self._own_generator: torch.Generator | None = None  # crops of compute_loss(generator=None)

    def _camera(self, key: str) -> VisualEncoder:
        return self.cameras["shared"] if self.cfg.shared else self.cameras[key]

    def forward(self, obs: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Encode.

        Args:
            obs: image keys Tensor (B, To, C, H, W) on the 0..255 scale, low-dim keys Tensor (B, To, D)
                already normalized.
            generator: offsets of the random crops in training mode; ``None`` uses a private generator
                of the encoder (seeded 0), never torch's global random state.

        Returns:
            Tensor (B, out_dim) = (B, To * (n_cameras * feature_dim + sum(D))).
        """
        feats: list[Tensor] = []
        to = self.n_obs_steps
        for key in self.image_keys:
            if key not in obs:
                raise KeyError(f"MultiModalEncoder: observation has no image key {key!r} (keys: {sorted(obs)})")
            img = obs[key]
            if img.ndim != 5 or img.shape[1] != to:
                raise ValueError(f"MultiModalEncoder: obs[{key!r}] shape {tuple(img.shape)} must be (B, {to}, C, H, W)")
            b = img.shape[0]
            flat = rearrange(img, "b t c h w -> (b t) c h w")
            if self.cfg.crop_size is not None:
                if self.training and generator is None:
                    if self._own_generator is None or self._own_generator.device != img.device:
                        self._own_generator = torch.Generator(device=img.device).manual_seed(0)
                    generator = self._own_generator
                flat = crop_images(flat, self.cfg.crop_size, generator, random=self.training)
            feats.append(rearrange(self._camera(key)(flat), "(b t) f -> b t f", b=b))  # (B, To, F)
        for key, dim in self.lowdim_dims.items():
            x = obs[key]
            if x.ndim != 3 or x.shape[1:] != (to, dim):
                raise ValueError(f"MultiModalEncoder: obs[{key!r}] shape {tuple(x.shape)} must be (B, {to}, {dim})")
            feats.append(x.to(feats[0].dtype))
        return rearrange(torch.cat(feats, dim=-1), "b t f -> b (t f)")
