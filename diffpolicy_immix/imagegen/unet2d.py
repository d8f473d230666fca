"""A 2-D UNet noise/velocity predictor for small images, with optional class conditioning.

Layout (``channel_mults=(1, 2)``, ``num_res_blocks=1``, one down-sampling step)::

    x (B, C, H, W) -> pad to a multiple of 2**(levels-1) -> conv_in (B, c0, H, W)
      level 0: ResBlock(c0 -> c*1) [+Attn]  -- skip --------------------------+
               Downsample (stride-2 conv)   -- skip -------------------+      |
      level 1: ResBlock(c*1 -> c*2) [+Attn] -- skip ------------+      |      |
      middle : ResBlock, [Attn], ResBlock                        |      |      |
      level 1: (num_res_blocks + 1) x ResBlock(cat skip) [+Attn] <-+----+      |
               Upsample (nearest x2 + conv)                                    |
      level 0: (num_res_blocks + 1) x ResBlock(cat skip) [+Attn] <-------------+
    -> GroupNorm, SiLU, conv_out -> crop the padding -> (B, C, H, W)

Every residual block receives the conditioning embedding ``emb = MLP(sinusoid(t)) + class_emb(y)``
through a FiLM scale and shift after its second GroupNorm. The class table has ``num_classes + 1``
rows: the last row is the learned "null" class used for classifier-free guidance (a label ``None``
or any negative label selects it).

Image sizes: the UNet halves the resolution ``len(channel_mults) - 1`` times, so H and W must be
multiples of ``2**(len(channel_mults) - 1)``. Other sizes are zero-padded on the bottom/right up to
the next multiple before the first convolution and the output is cropped back, so any size works
(8x8 digits with the default ``(1, 2)`` need no padding: 8 -> 4; 28x28 MNIST with ``(1, 2, 2, 2)``
is padded to 32). ``attention_resolutions`` are feature-map sizes after padding (e.g. ``(4,)`` puts
self-attention at the 4x4 level of an 8x8 model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: Tensor, shape (B,), float timesteps (e.g. in [0, num_train_timesteps]).
        dim: embedding width (even).
        max_period: the longest wavelength.
    Returns:
        Tensor, shape (B, dim): ``[cos(t * f_i), sin(t * f_i)]`` with geometric frequencies f_i.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _groups(channels: int, num_groups: int) -> int:
    """The largest group count <= num_groups that divides ``channels``."""
    for g in range(min(num_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm * (1 + scale) + shift -> SiLU -> dropout -> conv, + skip.

    Args:
        in_ch, out_ch: channel counts.
        emb_dim: width of the conditioning embedding.
        dropout: dropout probability before the second convolution.
        num_groups: GroupNorm groups (reduced to a divisor of the channel count).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, num_groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch, num_groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, num_groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: Tensor (B, Cin, H, W), emb: Tensor (B, E) -> Tensor (B, Cout, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb_proj(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, num_heads: int = 4, num_groups: int = 8):
        super().__init__()
        heads = max(1, min(num_heads, channels))
        while channels % heads:
            heads -= 1
        self.num_heads = heads
        self.norm = nn.GroupNorm(_groups(channels, num_groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor (B, C, H, W) -> Tensor (B, C, H, W)."""
        _, _, h, w = x.shape
        qkv = rearrange(self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.num_heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, n, HW, d)
        out = rearrange(out, "b n (h w) d -> b (n d) h w", h=h, w=w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet2D(nn.Module):
    """Time- and class-conditioned 2-D UNet.

    Args:
        in_channels: image channels C (the output has the same count unless ``out_channels`` is set).
        base_channels: width of the first level; level i has ``base_channels * channel_mults[i]``.
        channel_mults: width multipliers, one per resolution level (resolution halves between levels).
        num_res_blocks: residual blocks per level on the way down (the way up has one more).
        attention_resolutions: feature-map sizes (after padding) that get self-attention; the middle
            block gets attention when the lowest resolution is listed.
        num_classes: number of classes for conditioning, or None for an unconditional model.
        dropout: dropout inside residual blocks.
        image_size: nominal input size (int or (H, W)); used to validate ``attention_resolutions``
            and to report the padded size; other sizes still work at call time.
        out_channels: output channels (default ``in_channels``).
        num_groups: GroupNorm groups (reduced per layer to a divisor of its width).
        num_heads: attention heads.
        time_embed_dim: width of the time/class embedding (default ``4 * base_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (),
        num_classes: int | None = None,
        dropout: float = 0.0,
        image_size: int | tuple[int, int] = 8,
        out_channels: int | None = None,
        num_groups: int = 8,
        num_heads: int = 4,
        time_embed_dim: int | None = None,
    ):
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        if in_channels < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError(
                f"UNet2D: in_channels={in_channels}, base_channels={base_channels}, "
                f"num_res_blocks={num_res_blocks} must all be >= 1"
            )
        if not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"UNet2D: channel_mults={channel_mults} must be non-empty positive integers")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"UNet2D: num_classes={num_classes} must be >= 1 or None")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet2D: dropout={dropout} must be in [0, 1)")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.factor = 2 ** (len(channel_mults) - 1)
        padded = [self._padded(s) for s in self.image_size]
        levels = [padded[0] // 2**i for i in range(len(channel_mults))]
        bad = [r for r in attention_resolutions if r not in levels]
        if bad:
            raise ValueError(
                f"UNet2D: attention_resolutions={attention_resolutions} has {bad}, not a feature-map size "
                f"of a {padded[0]}x{padded[1]} (padded) input; valid sizes: {levels}"
            )
        emb_dim = time_embed_dim or 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row num_classes is the learned null class (unconditional / classifier-free guidance).
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, num_groups)

        def attn(ch: int) -> SelfAttention2d:
            return SelfAttention2d(ch, num_heads, num_groups)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [base_channels]
        ch = base_channels
        for i, mult in enumerate(channel_mults):
            res = levels[i]
            for _ in range(num_res_blocks):
                out = base_channels * mult
                layers = nn.ModuleList([block(ch, out)])
                if res in attention_resolutions:
                    layers.append(attn(out))
                self.down.append(layers)
                ch = out
                skips.append(ch)
            if i < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        mid_attn = levels[-1] in attention_resolutions
        self.mid = nn.ModuleList([block(ch, ch), attn(ch) if mid_attn else nn.Identity(), block(ch, ch)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            res = levels[i]
            for _ in range(num_res_blocks + 1):
                out = base_channels * mult
                layers = nn.ModuleList([block(ch + skips.pop(), out)])
                if res in attention_resolutions:
                    layers.append(attn(out))
                self.up.append(layers)
                ch = out
            if i > 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
        self.norm_out = nn.GroupNorm(_groups(ch, num_groups), ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)

    def _padded(self, size: int) -> int:
        return -(-size // self.factor) * self.factor

    @property
    def null_class(self) -> int:
        """Index of the learned null class (``num_classes``); only for conditional models."""
        if self.num_classes is None:
            raise AttributeError("UNet2D.null_class: the model is unconditional (num_classes=None)")
        return self.num_classes

    def embed(self, t: Tensor, class_labels: Tensor | None) -> Tensor:
        """Conditioning embedding: t (B,) float, class_labels (B,) long | None -> Tensor (B, E)."""
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels))
        if self.class_emb is None:
            if class_labels is not None:
                raise ValueError("UNet2D: class_labels given but the model is unconditional (num_classes=None)")
            return emb
        if class_labels is None:
            labels = torch.full((t.shape[0],), self.null_class, dtype=torch.long, device=t.device)
        else:
            labels = class_labels.to(device=t.device, dtype=torch.long)
            if labels.shape != t.shape:
                raise ValueError(f"UNet2D: class_labels shape {tuple(labels.shape)} must be (B,)={tuple(t.shape)}")
            if bool((labels > self.null_class).any()):
                raise ValueError(
                    f"UNet2D: class label {int(labels.max())} out of range; valid 0..{self.num_classes - 1}, "
                    f"{self.null_class} or negative = null class"
                )
            labels = torch.where(labels < 0, torch.full_like(labels, self.null_class), labels)
        return emb + self.class_emb(labels)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Predict the objective's target.

        Args:
            x: Tensor, shape (B, C, H, W), the noisy image.
            t: Tensor, shape (B,) (or a scalar), float timesteps in [0, num_train_timesteps].
            class_labels: Tensor, shape (B,), long, or None; ``num_classes`` or a negative value selects
                the null class; None means all null (unconditional).
        Returns:
            Tensor, shape (B, out_channels, H, W).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet2D: x shape {tuple(x.shape)} must be (B, {self.in_channels}, H, W)")
        b, _, h, w = x.shape
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"UNet2D: t shape {tuple(t.shape)} must be (B,)=({b},)")
        emb = self.embed(t, class_labels)  # (B, E)
        ph, pw = self._padded(h) - h, self._padded(w) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        hs = [self.conv_in(x)]
        for layers in self.down:
            hcur = hs[-1]
            for layer in layers:
                hcur = layer(hcur, emb) if isinstance(layer, ResBlock) else layer(hcur)
            hs.append(hcur)
        hcur = self.mid[0](hs[-1], emb)
        hcur = self.mid[1](hcur)
        hcur = self.mid[2](hcur, emb)
        for layers in self.up:
            for layer in layers:
                if isinstance(layer, ResBlock):
                    hcur = layer(torch.cat([hcur, hs.pop()], dim=1), emb)
                else:
                    hcur = layer(hcur)
        out = self.conv_out(F.silu(self.norm_out(hcur)))
        return out[:, :, :h, :w]
