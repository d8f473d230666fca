"""A 1-D temporal UNet conditioned through FiLM, the denoiser of Diffusion Policy (Chi et al., RSS 2023).

The network maps a noisy action sequence to a tensor of the same shape (the noise, the clean sample or
the velocity, depending on the objective). Time runs along the convolution axis; action dimensions are
channels.

```
sample (B, H, Da) -> (B, Da, H)
  down: [ResBlock(c_in -> c), ResBlock(c -> c), Downsample]   per level   (skips saved)
  mid:  ResBlock, ResBlock                                     at the deepest width
  up:   [ResBlock(2c -> c_prev), ResBlock, Upsample]           per level   (skips concatenated)
  head: Conv1dBlock, Conv1d(1x1) -> (B, Da, H) -> (B, H, Da)
cond = [step embedding (E), global cond (G)] --FiLM--> every ResBlock
```

Every downsampling level but the deepest halves the horizon, so the horizon must be divisible by
``2 ** (len(down_dims) - 1)``; :class:`~diffpolicy_immix.policy.diffusion_policy.PolicyConfig` asks
for the stricter ``2 ** len(down_dims)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (possibly fractional) diffusion step.

    Args:
        dim: embedding width (even).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb: dim={dim} must be an even integer >= 2")
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        """Embed steps.

        Args:
            t: Tensor, shape (B,), float diffusion steps (any real value).

        Returns:
            Tensor, shape (B, dim): ``[sin(t w_j), cos(t w_j)]`` with geometric frequencies ``w_j``.
        """
        half = self.dim // 2
        scale = math.log(10000.0) / max(half - 1, 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)  # (half,)
        args = t.float()[:, None] * freqs[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving (odd kernel)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor, shape (B, C_in, L) -> Tensor, shape (B, C_out, L)."""
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM conditioning between them and a residual connection.

    The condition vector predicts a per-channel scale and bias (``cond_predict_scale=True``) or a bias
    only, applied to the output of the first conv block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        film_dim = 2 * out_channels if cond_predict_scale else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Tensor, shape (B, C_in, L).
            cond: Tensor, shape (B, cond_dim).

        Returns:
            Tensor, shape (B, C_out, L).
        """
        out = self.blocks[0](x)  # (B, C_out, L)
        film = rearrange(self.cond_encoder(cond), "b c -> b c 1")  # (B, 2 C_out or C_out, 1)
        if self.cond_predict_scale:
            scale, bias = film.chunk(2, dim=1)  # (B, C_out, 1) each
            out = scale * out + bias
        else:
            out = out + film
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """FiLM-conditioned 1-D UNet over action sequences.

    Args:
        input_dim: action dimension Da (channels of the sequence).
        global_cond_dim: width G of the global condition (flattened observation features); 0 for none.
        down_dims: channel widths of the levels; CPU default (64, 128, 256), the paper uses
            (256, 512, 1024).
        kernel_size: odd temporal kernel size.
        n_groups: GroupNorm groups; must divide every width in ``down_dims``.
        diffusion_step_embed_dim: width E of the diffusion-step embedding.
        cond_predict_scale: FiLM with scale and bias (True) or bias only (False).
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 128,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if input_dim < 1:
            raise ValueError(f"ConditionalUnet1D: input_dim={input_dim} must be >= 1")
        if global_cond_dim < 0:
            raise ValueError(f"ConditionalUnet1D: global_cond_dim={global_cond_dim} must be >= 0")
        if not down_dims:
            raise ValueError("ConditionalUnet1D: down_dims=() must name at least one level")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConditionalUnet1D: kernel_size={kernel_size} must be odd and positive")
        bad = [d for d in down_dims if d % n_groups]
        if bad:
            raise ValueError(f"ConditionalUnet1D: down_dims={down_dims} not divisible by n_groups={n_groups}")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.down_dims = down_dims

        e = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e)
        )
        cond_dim = e + global_cond_dim

        def res(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, cond_dim, kernel_size, n_groups, cond_predict_scale)

        widths = (input_dim, *down_dims)
        in_out = list(zip(widths[:-1], widths[1:]))  # [(Da, d0), (d0, d1), ...]
        n_levels = len(in_out)

        self.down_modules = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == n_levels - 1
            self.down_modules.append(
                nn.ModuleList(
                    [
                        res(c_in, c_out),
                        res(c_out, c_out),
                        nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if not last else nn.Identity(),
                    ]
                )
            )

        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])

        self.up_modules = nn.ModuleList()
        # Each up level undoes one downsampling; the skip of the finest level is not reused (the
        # sequence is already at full length when the last up level ends).
        for c_in, c_out in reversed(in_out[1:]):
            self.up_modules.append(
                nn.ModuleList(
                    [
                        res(2 * c_out, c_in),
                        res(c_in, c_in),
                        nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),
                    ]
                )
            )

        start = down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel_size, n_groups), nn.Conv1d(start, input_dim, 1)
        )

    def forward(self, sample: Tensor, timestep: Tensor | float, global_cond: Tensor | None = None) -> Tensor:
        """Denoise.

        Args:
            sample: Tensor, shape (B, H, Da), the noisy action sequence.
            timestep: Tensor, shape (B,) or scalar, float diffusion step in [0, T].
            global_cond: Tensor, shape (B, G), or None when ``global_cond_dim == 0``.

        Returns:
            Tensor, shape (B, H, Da).
        """
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"ConditionalUnet1D: sample shape {tuple(sample.shape)} must be (B, H, {self.input_dim})")
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)  # (B,)
        cond = self.diffusion_step_encoder(t)  # (B, E)
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (b, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"ConditionalUnet1D: global_cond shape {got} must be ({b}, {self.global_cond_dim})")
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)  # (B, E + G)

        x = rearrange(sample, "b h d -> b d h")  # (B, Da, H)
        skips: list[Tensor] = []
        for block1, block2, down in self.down_modules:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for block1, block2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2 C, L)
            x = block2(block1(x, cond), cond)
            x = up(x)
        x = self.final_conv(x)  # (B, Da, H)
        return rearrange(x, "b d h -> b h d")
