"""Observation encoders: an observation history -> one global conditioning vector per sample.

Every encoder is an ``nn.Module`` with an ``out_dim`` attribute and
``forward(obs: Tensor (B, To, *obs_shape)) -> Tensor (B, out_dim)``; the policy passes the *normalized*
first To observation steps and feeds the result to the UNet's FiLM layers. New kinds (an image encoder:
ResNet18 with GroupNorm, spatial softmax and random crop) become one entry in :data:`ENCODERS`.

Image encoders (``small_cnn``, ``resnet18_gn``; :mod:`~diffpolicy_immix.policy.vision`) take an
observation *dict* instead: ``forward(obs: {image key: (B, To, C, H, W), "obs": (B, To, Do)},
generator=None) -> (B, out_dim)``; their constructor receives the cameras as
``image_channels={"img": 3}`` and the vision settings as ``vision=VisionConfig(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from einops import rearrange
from torch import Tensor, nn

from diffpolicy_immix.policy.vision import MultiModalEncoder, VisionConfig


class LowDimEncoder(nn.Module):
    """Flattens a low-dimensional observation history, optionally followed by an MLP.

    Args:
        obs_dim: Do, the observation width.
        n_obs_steps: To, the number of history steps.
        hidden_dims: MLP widths; ``()`` (default) means identity flatten, ``out_dim = To * Do``.
    """

    def __init__(self, obs_dim: int, n_obs_steps: int, hidden_dims: Sequence[int] = ()) -> None:
        super().__init__()
        if obs_dim < 1 or n_obs_steps < 1:
            raise ValueError(f"LowDimEncoder: obs_dim={obs_dim} and n_obs_steps={n_obs_steps} must both be >= 1")
        self.obs_dim = obs_dim
        self.n_obs_steps = n_obs_steps
        width = obs_dim * n_obs_steps
        layers: list[nn.Module] = []
        for h in hidden_dims:
            if h < 1:
                raise ValueError(f"LowDimEncoder: hidden_dims={tuple(hidden_dims)} must be positive")
            layers += [nn.Linear(width, h), nn.Mish()]
            width = h
        if layers:
            layers.pop()  # no activation after the last layer
        self.mlp = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, obs: Tensor) -> Tensor:
        """Encode.

        Args:
            obs: Tensor, shape (B, To, Do), normalized observations.

        Returns:
            Tensor, shape (B, out_dim).
        """
        if obs.ndim != 3 or obs.shape[1:] != (self.n_obs_steps, self.obs_dim):
            raise ValueError(
                f"LowDimEncoder: obs shape {tuple(obs.shape)} must be (B, {self.n_obs_steps}, {self.obs_dim})"
            )
        return self.mlp(rearrange(obs, "b t d -> b (t d)"))  # (B, To*Do) -> (B, out_dim)


def _vision_encoder(backbone: str) -> Callable[..., nn.Module]:
    """Constructor(obs_dim, n_obs_steps, image_channels, vision=None) of a camera + low-dim encoder; the
    low-dim observation (if ``obs_dim > 0``) is read from the key ``"obs"``."""

    def build(
        obs_dim: int, n_obs_steps: int, image_channels: Mapping[str, int], vision: VisionConfig | None = None
    ) -> nn.Module:
        lowdim = {"obs": obs_dim} if obs_dim > 0 else {}
        return MultiModalEncoder(backbone, image_channels, lowdim, n_obs_steps, vision)

    build.__name__ = f"{backbone}_encoder"
    return build


#: name -> constructor(obs_dim, n_obs_steps, **options); the image kinds also take image_channels, vision
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "lowdim": LowDimEncoder,
    "small_cnn": _vision_encoder("small_cnn"),
    "resnet18_gn": _vision_encoder("resnet18_gn"),
}

#: the encoders that read camera images
IMAGE_ENCODERS = ("small_cnn", "resnet18_gn")


def make_obs_encoder(kind: str, obs_dim: int, n_obs_steps: int, **options: object) -> nn.Module:
    """Build an encoder from :data:`ENCODERS` by name; the result has an ``out_dim`` attribute."""
    if kind not in ENCODERS:
        raise ValueError(f"obs encoder kind={kind!r} is unknown; valid: {sorted(ENCODERS)}")
    return ENCODERS[kind](obs_dim, n_obs_steps, **options)
