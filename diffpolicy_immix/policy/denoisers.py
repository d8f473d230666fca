"""Denoisers besides the 1-D UNet: a residual MLP and a time-series diffusion transformer.

Every policy network has one interface::

    net(sample: Tensor (B, H, Da), timestep: Tensor (B,), global_cond: Tensor (B, G)) -> Tensor (B, H, Da)

``timestep`` is a float diffusion time in [0, T] (the objective scales flow-matching time by T), and
``global_cond`` is the observation encoder's output: the To per-step features flattened (Diffusion
Policy's convention), so a network that wants one token per observation step reshapes it to
(B, To, G / To).

```
MLPDenoiser                                   TransformerDenoiser
x_t (B, H*Da) -> Linear -> h (B, W)            x_t (B, H, Da) -> Linear + pos -> action tokens (B, H, E)
c = [emb(t), global_cond] -> Mish -> Linear    [emb(t), obs_1 .. obs_To] -> Linear + pos -> cond tokens
per block:  h += Lin(Mish(Lin(FiLM_c(LN(h)))))  per layer: self-attn (causal option) over actions,
head: LN -> Linear -> (B, H, Da)                           cross-attn to cond tokens, MLP
                                              head: LN -> Linear -> (B, H, Da)
```

The MLP conditions every block (FiLM scale and shift from the observation and the time), which is
what makes it learn fast; feeding them only at the input learns far more slowly per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from diffpolicy_immix.policy.unet1d import SinusoidalPosEmb

__all__ = ["MLPConfig", "MLPDenoiser", "TransformerConfig", "TransformerDenoiser"]


def _positive(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name}={value!r} is invalid; it must be a positive integer")


def _fraction(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name}={value!r} is invalid; it must be a number in [0, 1)")


def _time_embedding(dim: int, out_dim: int) -> nn.Module:
    """Sinusoidal embedding of the diffusion time followed by a small MLP: (B,) -> (B, out_dim)."""
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, out_dim))


def _batch_time(timestep: Tensor | float, b: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(timestep, device=device)
    return t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)  # (B,)


def _check_inputs(owner: str, sample: Tensor, global_cond: Tensor | None, horizon: int, da: int, g: int) -> None:
    if sample.ndim != 3 or sample.shape[1:] != (horizon, da):
        raise ValueError(f"{owner}: sample shape {tuple(sample.shape)} must be (B, {horizon}, {da})")
    if g and (global_cond is None or global_cond.shape != (sample.shape[0], g)):
        got = None if global_cond is None else tuple(global_cond.shape)
        raise ValueError(f"{owner}: global_cond shape {got} must be ({sample.shape[0]}, {g})")


# -- residual MLP -------------------------------------------------------------------------------------


@dataclass
class MLPConfig:
    """Options of :class:`MLPDenoiser` (``policy.mlp`` in the configs)."""

    width: int = 512
    """Hidden width W of the residual stream."""
    n_blocks: int = 4
    """Residual blocks, each FiLM-conditioned on the observation and the diffusion time."""
    expansion: int = 2
    """Hidden width of a block's MLP, as a multiple of W."""
    time_embed_dim: int = 128
    """Width of the sinusoidal diffusion-time embedding (even)."""
    cond_dim: int = 256
    """Width of the conditioning vector c (time embedding and observation features, mixed by a Linear)."""
    dropout: float = 0.0
    """Dropout inside each block."""

    def __post_init__(self) -> None:
        for name in ("width", "n_blocks", "expansion", "time_embed_dim", "cond_dim"):
            _positive("policy.mlp", name, getattr(self, name))
        if self.time_embed_dim % 2:
            raise ValueError(f"policy.mlp.time_embed_dim={self.time_embed_dim} is invalid; it must be even")
        _fraction("policy.mlp", "dropout", self.dropout)


class _FiLMBlock(nn.Module):
    """Pre-norm residual MLP block whose normalized input is scaled and shifted by the condition."""

    def __init__(self, width: int, hidden: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * width)
        nn.init.zeros_(self.film.weight)  # starts as the identity FiLM (scale 1, shift 0)
        nn.init.zeros_(self.film.bias)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.Mish(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """h: Tensor (B, W); c: Tensor (B, C) -> Tensor (B, W)."""
        scale, shift = self.film(c).chunk(2, dim=-1)  # (B, W) each
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """Residual MLP over the flattened action chunk, FiLM-conditioned in every block.

    Args:
        input_dim: Da.
        horizon: H.
        global_cond_dim: G (0 for none).
        cfg: widths and depth.
    """

    def __init__(self, input_dim: int, horizon: int, global_cond_dim: int, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MLPConfig()
        self.input_dim, self.horizon, self.global_cond_dim = input_dim, horizon, global_cond_dim
        flat = input_dim * horizon
        self.time_emb = _time_embedding(cfg.time_embed_dim, cfg.time_embed_dim)
        self.cond_proj = nn.Sequential(nn.Linear(cfg.time_embed_dim + global_cond_dim, cfg.cond_dim), nn.Mish())
        self.inp = nn.Linear(flat, cfg.width)
        hidden = cfg.expansion * cfg.width
        self.blocks = nn.ModuleList(
            _FiLMBlock(cfg.width, hidden, cfg.cond_dim, cfg.dropout) for _ in range(cfg.n_blocks)
        )
        self.head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, flat))

    def forward(self, sample: Tensor, timestep: Tensor | float, global_cond: Tensor | None = None) -> Tensor:
        """sample: (B, H, Da); timestep: (B,) or scalar; global_cond: (B, G) -> Tensor (B, H, Da)."""
        _check_inputs("MLPDenoiser", sample, global_cond, self.horizon, self.input_dim, self.global_cond_dim)
        b = sample.shape[0]
        c = self.time_emb(_batch_time(timestep, b, sample.device))  # (B, E)
        if self.global_cond_dim:
            c = torch.cat([c, global_cond.to(c.dtype)], dim=-1)  # (B, E + G)
        c = self.cond_proj(c)  # (B, C)
        h = self.inp(rearrange(sample, "b h d -> b (h d)"))  # (B, W)
        for block in self.blocks:
            h = block(h, c)
        return rearrange(self.head(h), "b (h d) -> b h d", h=self.horizon)


# -- transformer --------------------------------------------------------------------------------------


@dataclass
class TransformerConfig:
    """Options of :class:`TransformerDenoiser` (``policy.transformer`` in the configs)."""

    n_emb: int = 128
    """Token width E."""
    n_layers: int = 4
    """Decoder layers (self-attention over action tokens, cross-attention to the condition tokens)."""
    n_heads: int = 4
    """Attention heads (must divide ``n_emb``)."""
    n_cond_layers: int = 0
    """Encoder layers over the condition tokens (0: a 2-layer MLP per token, as Diffusion Policy)."""
    causal: bool = True
    """Action token i attends only to action tokens <= i, and to the time token and the observation
    tokens (Diffusion Policy's causal variant); False: full attention."""
    dropout: float = 0.0
    """Dropout in attention and MLPs."""

    def __post_init__(self) -> None:
        for name in ("n_emb", "n_layers", "n_heads"):
            _positive("policy.transformer", name, getattr(self, name))
        if not isinstance(self.n_cond_layers, int) or self.n_cond_layers < 0:
            raise ValueError(f"policy.transformer.n_cond_layers={self.n_cond_layers!r} must be an integer >= 0")
        if self.n_emb % self.n_heads or self.n_emb % 2:
            raise ValueError(
                f"policy.transformer.n_emb={self.n_emb} must be even and divisible by n_heads={self.n_heads}"
            )
        if not isinstance(self.causal, bool):
            raise ValueError(f"policy.transformer.causal={self.causal!r} must be true or false")
        _fraction("policy.transformer", "dropout", self.dropout)


class TransformerDenoiser(nn.Module):
    """Time-series diffusion transformer in the manner of Diffusion Policy's transformer variant.

    Action tokens (one per step of the chunk) are decoded against a memory of condition tokens: the
    diffusion time first, then one token per observation step (``global_cond`` reshaped to
    (B, To, G / To)).

    Args:
        input_dim: Da.
        horizon: H.
        global_cond_dim: G, a multiple of ``n_obs_steps`` (0 for none).
        n_obs_steps: To, the number of observation tokens G is split into.
        cfg: widths and depth.
    """

    def __init__(
        self,
        input_dim: int,
        horizon: int,
        global_cond_dim: int,
        n_obs_steps: int,
        cfg: TransformerConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or TransformerConfig()
        if global_cond_dim % n_obs_steps:
            raise ValueError(
                f"TransformerDenoiser: global_cond_dim={global_cond_dim} must be a multiple of "
                f"n_obs_steps={n_obs_steps}"
            )
        self.input_dim, self.horizon, self.global_cond_dim = input_dim, horizon, global_cond_dim
        self.n_obs_steps = n_obs_steps if global_cond_dim else 0
        e = cfg.n_emb
        self.action_emb = nn.Linear(input_dim, e)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, e))
        self.time_emb = SinusoidalPosEmb(e)
        self.obs_emb = nn.Linear(global_cond_dim // n_obs_steps, e) if global_cond_dim else None
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + self.n_obs_steps, e))
        if cfg.n_cond_layers:
            layer = nn.TransformerEncoderLayer(
                e, cfg.n_heads, 4 * e, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.cond_encoder: nn.Module = nn.TransformerEncoder(layer, cfg.n_cond_layers, enable_nested_tensor=False)
        else:
            self.cond_encoder = nn.Sequential(nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))
        layer = nn.TransformerDecoderLayer(
            e, cfg.n_heads, 4 * e, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.n_layers)
        self.head = nn.Sequential(nn.LayerNorm(e), nn.Linear(e, input_dim))
        mask = torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1) if cfg.causal else None
        self.register_buffer("causal_mask", mask, persistent=False)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)

    def forward(self, sample: Tensor, timestep: Tensor | float, global_cond: Tensor | None = None) -> Tensor:
        """sample: (B, H, Da); timestep: (B,) or scalar; global_cond: (B, G) -> Tensor (B, H, Da)."""
        _check_inputs("TransformerDenoiser", sample, global_cond, self.horizon, self.input_dim, self.global_cond_dim)
        b = sample.shape[0]
        tokens = [self.time_emb(_batch_time(timestep, b, sample.device))[:, None]]  # [(B, 1, E)]
        if self.obs_emb is not None:
            obs = rearrange(global_cond, "b (t g) -> b t g", t=self.n_obs_steps)  # (B, To, G/To)
            tokens.append(self.obs_emb(obs.to(sample.dtype)))  # (B, To, E)
        memory = self.cond_encoder(torch.cat(tokens, dim=1) + self.cond_pos)  # (B, 1 + To, E)
        x = self.action_emb(sample) + self.action_pos  # (B, H, E)
        x = self.decoder(x, memory, tgt_mask=self.causal_mask, tgt_is_causal=self.causal_mask is not None)
        return self.head(x)  # (B, H, Da)
