"""Per-dimension affine normalization of observations and actions, saved with a model's weights.

``normalize(key, x) = x * scale + offset`` over the last dimension, with

- ``"limits"``: per-dimension min/max mapped to [-1, 1]; a dimension whose range is below ``range_eps``
  is centred, not scaled (``x - (min + max) / 2``, so it maps to ~0 and unnormalizes exactly);
- ``"gaussian"``: z-score ``(x - mean) / std``; a dimension with ``std < range_eps`` is only centred.

The parameters are buffers of one submodule per key, so they travel with ``state_dict``; a fresh
``LinearNormalizer()`` with no keys can load any saved one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LinearNormalizer"]

_MODES = ("limits", "gaussian")
_STATS = ("scale", "offset", "input_min", "input_max", "input_mean", "input_std")


class _KeyParams(nn.Module):
    """Buffers (D,) float32 of one key: scale, offset and the fitted input statistics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        for name in _STATS:
            self.register_buffer(name, torch.zeros(dim, dtype=torch.float32))
        self.scale.fill_(1.0)  # type: ignore[operator]

    @property
    def dim(self) -> int:
        return int(self.scale.shape[0])  # type: ignore[index]


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key or "." in key:
        raise ValueError(f"normalizer key {key!r} must be a non-empty string without '.'")
    return key


class LinearNormalizer(nn.Module):
    """Affine per-dimension normalizer for several keys (e.g. ``"obs"``, ``"action"``).

    Example::

        norm = LinearNormalizer().fit({"obs": obs, "action": act})   # obs (N, Do) or (N, T, Do)
        a = norm.normalize("action", batch["action"])                # (B, H, Da) in [-1, 1]
        fresh = LinearNormalizer(); fresh.load_state_dict(norm.state_dict())
    """

    def __init__(self) -> None:
        super().__init__()
        self.params = nn.ModuleDict()
        # Follows .to()/.cuda() so keys created while loading a state_dict land on the right device.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    # ----------------------------------------------------------------------------------------------
    def fit(
        self,
        data: Mapping[str, np.ndarray | Tensor],
        mode: str | Mapping[str, str] = "limits",
        range_eps: float = 1e-4,
    ) -> LinearNormalizer:
        """Fit (or refit) keys from data; returns ``self``.

        Args:
            data: key -> array/tensor (..., D): every leading dimension is pooled (N, D), (N, T, D), ...
            mode: ``"limits"`` or ``"gaussian"``, one for all keys or key -> mode.
            range_eps: below this range (limits) or std (gaussian) a dimension is centred, not scaled.
        """
        if range_eps < 0:
            raise ValueError(f"range_eps={range_eps} must be >= 0")
        for key, value in data.items():
            _check_key(key)
            key_mode = mode.get(key, "limits") if isinstance(mode, Mapping) else mode
            if key_mode not in _MODES:
                raise ValueError(f"mode={key_mode!r} for key {key!r} is not one of {_MODES}")
            x = torch.as_tensor(value).detach()
            if x.ndim < 2:
                raise ValueError(f"data[{key!r}] has shape {tuple(x.shape)}; expected (..., D) with at least 2 dims")
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)  # (N, D)
            if x.shape[0] == 0:
                raise ValueError(f"data[{key!r}] has no rows to fit")
            if not torch.isfinite(x).all():
                raise ValueError(f"data[{key!r}] contains NaN or inf")
            lo, hi = x.min(dim=0).values, x.max(dim=0).values
            mean, std = x.mean(dim=0), x.std(dim=0, correction=0)
            if key_mode == "limits":
                rng = hi - lo
                flat = rng < range_eps
                scale = torch.where(flat, torch.ones_like(rng), 2.0 / torch.where(flat, 1.0, rng))
                offset = torch.where(flat, -(lo + hi) / 2, -1.0 - scale * lo)
            else:
                flat = std < range_eps
                scale = torch.where(flat, torch.ones_like(std), 1.0 / torch.where(flat, 1.0, std))
                offset = -mean * scale
            params = _KeyParams(x.shape[1]).to(self._device_anchor.device)
            for name, v in zip(_STATS, (scale, offset, lo, hi, mean, std)):
                getattr(params, name).copy_(v.to(torch.float32))
            self.params[key] = params
        return self

    def set_identity(self, key: str, dim: int) -> LinearNormalizer:
        """Make ``key`` (D = ``dim``) pass through unchanged; returns ``self``."""
        self.params[_check_key(key)] = _KeyParams(dim).to(self._device_anchor.device)
        return self

    # ----------------------------------------------------------------------------------------------
    def _params(self, key: str, x: Any) -> tuple[Any, Any]:
        if key not in self.params:
            raise KeyError(f"normalizer has no key {key!r} (keys: {self.keys()})")
        p = self.params[key]
        d = x.shape[-1] if x.ndim else None
        if d != p.dim:
            raise ValueError(f"normalizer[{key!r}] expects last dim {p.dim}, got shape {tuple(x.shape)}")
        if isinstance(x, np.ndarray):
            dtype = x.dtype if x.dtype.kind == "f" else np.float32
            return p.scale.cpu().numpy().astype(dtype), p.offset.cpu().numpy().astype(dtype)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return p.scale.to(x.device, dtype), p.offset.to(x.device, dtype)

    def normalize(self, key: str, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``x * scale + offset``; x: (..., D), Tensor or numpy (returned as the same kind)."""
        scale, offset = self._params(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Inverse of :meth:`normalize`; x: (..., D)."""
        scale, offset = self._params(key, x)
        return (x - offset) / scale

    def get_stats(self, key: str) -> dict[str, Tensor]:
        """Fitted statistics of ``key``: scale, offset, input_min/max/mean/std, each (D,)."""
        if key not in self.params:
            raise KeyError(f"normalizer has no key {key!r} (keys: {self.keys()})")
        return {name: getattr(self.params[key], name).clone() for name in _STATS}

    def keys(self) -> list[str]:
        return list(self.params.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.params

    def __len__(self) -> int:
        return len(self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {self.params[k].dim}" for k in self.keys())

    # ----------------------------------------------------------------------------------------------
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
        # Create (or resize) the per-key submodules named in the state_dict before torch copies the
        # buffers in; torch visits this module before its children, so they are then loaded normally.
        head = prefix + "params."
        for name, value in state_dict.items():
            if name.startswith(head) and name.endswith(".scale"):
                key = name[len(head) : -len(".scale")]
                if "." in key or value.ndim != 1:
                    continue
                if key not in self.params or self.params[key].dim != value.shape[0]:
                    self.params[key] = _KeyParams(int(value.shape[0])).to(self._device_anchor.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
