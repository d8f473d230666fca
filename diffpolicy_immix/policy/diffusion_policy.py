"""Diffusion Policy (Chi et al., RSS 2023) over low-dimensional observations.

The policy denoises a whole action sequence of H steps, conditioned on the last To observations, and
executes Ta of them before it plans again (receding horizon). Timing, with the defaults To=2, H=16, Ta=8:

```
step      t-1   t    t+1  t+2  t+3  t+4  t+5  t+6  t+7  t+8  ...  t+14
obs      | o  | o  |                                                      To = 2 (o at t is "now")
action   | a  | a  | a  | a  | a  | a  | a  | a  | a  | a  | ... | a  |   H = 16 predicted
executed      | a  | a  | a  | a  | a  | a  | a  | a  |                   Ta = 8: a[To-1 : To-1+Ta]
```

A training window holds H aligned steps of observations and actions; only its first To observations
condition the model, and the loss covers all H actions. Observations and actions are normalized by
the policy's :class:`~diffpolicy_immix.data.LinearNormalizer` (a submodule, saved with the weights);
the caller always passes raw units. All noise, for training and for sampling, is drawn by the
:class:`~diffpolicy_immix.diffusion.DiffusionObjective` (through its noise assigner); this module never
draws random numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from torch import Tensor, nn

from diffpolicy_immix.policy.denoisers import MLPConfig, MLPDenoiser, TransformerConfig, TransformerDenoiser
from diffpolicy_immix.policy.encoders import ENCODERS, IMAGE_ENCODERS, make_obs_encoder
from diffpolicy_immix.policy.unet1d import ConditionalUnet1D
from diffpolicy_immix.policy.vision import VisionConfig

if TYPE_CHECKING:
    from diffpolicy_immix.data import LinearNormalizer
    from diffpolicy_immix.diffusion import DiffusionObjective

OBS = "obs"
ACTION = "action"


@dataclass
class PolicyConfig:
    """Shape and network settings of a :class:`DiffusionPolicy`.

    Attributes:
        denoiser: the network, a key of :data:`DENOISERS`: ``unet`` (FiLM 1-D UNet, the fields
            ``down_dims`` .. ``cond_predict_scale``), ``mlp`` (residual FiLM MLP, options in ``mlp``) or
            ``transformer`` (options in ``transformer``).
        horizon: H, action steps predicted per chunk (and the training window length).
        n_obs_steps: To, observation steps the policy conditions on.
        n_action_steps: Ta, predicted actions executed before planning again.
        down_dims: UNet level widths; CPU default (64, 128, 256), the paper uses (256, 512, 1024).
        kernel_size: odd temporal kernel size of the UNet convolutions.
        n_groups: GroupNorm groups (must divide every entry of ``down_dims``).
        diffusion_step_embed_dim: width of the diffusion-step embedding (even).
        cond_predict_scale: FiLM with scale and bias (True) or bias only.
        obs_as_global_cond: condition through FiLM on the flattened observation history; the
            inpainting variant (False) is not implemented.
        obs_encoder: observation encoder kind, a key of ``policy.encoders.ENCODERS``; ``None`` (default)
            picks ``lowdim`` without cameras and ``small_cnn`` with ``image_keys``.
        obs_encoder_hidden_dims: MLP widths after flattening; ``()`` = identity.
        mlp: options of the ``mlp`` denoiser (:class:`~diffpolicy_immix.policy.denoisers.MLPConfig`).
        transformer: options of the ``transformer`` denoiser
            (:class:`~diffpolicy_immix.policy.denoisers.TransformerConfig`).
        image_keys: camera observation keys (RGB, the task's ``image_keys``); empty for low-dim policies.
        obs_keys: the low-dimensional obs key specs (``"key"`` / ``"key:start:stop"``, the task's
            ``obs_keys`` without the cameras); :meth:`DiffusionPolicy.select_action` builds ``"obs"`` from
            a dict observation with them.
        vision: image encoder settings (:class:`~diffpolicy_immix.policy.vision.VisionConfig`).
        action_origin: ``(start, stop)`` dims of the low-dimensional observation that hold the position the
            actions are expressed in (e.g. the pusher's x, y for absolute pusher targets): the policy then
            learns and samples each chunk relative to that position at the current step (the last of the To
            observations) and adds it back on output, so the environment still gets absolute actions.
            ``stop - start`` must equal the action width. ``None`` (default): absolute chunks, as in
            Diffusion Policy.
        candidates: action chunks sampled per re-plan (a sampling setting; 1, the default, samples one).
            With K > 1, :meth:`DiffusionPolicy.select_action` executes the candidate that best continues
            the previous plan (smallest mean squared distance over the steps both plans cover that the
            previous one had not executed yet: backward coherence, as in bidirectional decoding), and the
            medoid of the K (smallest summed distance to the others) when there is no previous plan.
    """

    denoiser: str = "unet"

    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    cond_predict_scale: bool = True
    obs_as_global_cond: bool = True
    obs_encoder: str | None = None
    obs_encoder_hidden_dims: tuple[int, ...] = ()
    mlp: MLPConfig = field(default_factory=MLPConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    image_keys: tuple[str, ...] = ()
    obs_keys: tuple[str, ...] = ()
    vision: VisionConfig = field(default_factory=VisionConfig)
    action_origin: tuple[int, int] | None = None
    candidates: int = 1

    def __post_init__(self) -> None:
        if self.denoiser not in DENOISERS:
            raise ValueError(f"PolicyConfig: denoiser={self.denoiser!r} is unknown; valid: {sorted(DENOISERS)}")
        self.mlp = _sub_config(MLPConfig, self.mlp, "mlp")
        self.transformer = _sub_config(TransformerConfig, self.transformer, "transformer")
        self.down_dims = tuple(int(d) for d in self.down_dims)
        self.obs_encoder_hidden_dims = tuple(int(d) for d in self.obs_encoder_hidden_dims)
        for name in ("horizon", "n_obs_steps", "n_action_steps", "kernel_size", "n_groups", "candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PolicyConfig: {name}={value!r} must be a positive integer")
        if not self.down_dims or min(self.down_dims) < 1:
            raise ValueError(f"PolicyConfig: down_dims={self.down_dims} must be non-empty and positive")
        factor = 2 ** len(self.down_dims)
        if self.denoiser == "unet" and self.horizon % factor:
            raise ValueError(f"PolicyConfig: horizon={self.horizon} must be divisible by 2**len(down_dims)={factor}")
        needed = self.n_obs_steps + self.n_action_steps - 1
        if needed > self.horizon:
            raise ValueError(
                f"PolicyConfig: n_obs_steps + n_action_steps - 1 = {self.n_obs_steps} + "
                f"{self.n_action_steps} - 1 = {needed} must be <= horizon={self.horizon}"
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"PolicyConfig: kernel_size={self.kernel_size} must be odd")
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            raise ValueError(
                f"PolicyConfig: down_dims={self.down_dims} must all be divisible by n_groups={self.n_groups}"
            )
        if self.diffusion_step_embed_dim < 2 or self.diffusion_step_embed_dim % 2:
            raise ValueError(
                f"PolicyConfig: diffusion_step_embed_dim={self.diffusion_step_embed_dim} must be even and >= 2"
            )
        if not self.obs_as_global_cond:
            raise ValueError("PolicyConfig: obs_as_global_cond=False (inpainting) is not implemented; set it to True")
        self.vision = _sub_config(VisionConfig, self.vision, "vision")
        self.image_keys = tuple(str(k) for k in self.image_keys)
        self.obs_keys = tuple(str(k) for k in self.obs_keys)
        if self.obs_encoder is None:
            self.obs_encoder = "small_cnn" if self.image_keys else "lowdim"
        if self.action_origin is not None:
            origin = self.action_origin
            ok = isinstance(origin, list | tuple) and len(origin) == 2
            ok = ok and all(isinstance(i, int) and not isinstance(i, bool) for i in origin)
            if not ok or not 0 <= origin[0] < origin[1]:
                raise ValueError(
                    f"action_origin={origin!r} is invalid; it must be [start, stop] observation dims with "
                    "0 <= start < stop"
                )
            self.action_origin = (int(origin[0]), int(origin[1]))
        if self.obs_encoder not in ENCODERS:
            raise ValueError(f"PolicyConfig: obs_encoder={self.obs_encoder!r} is unknown; valid: {sorted(ENCODERS)}")
        reserved = sorted({OBS, ACTION} & set(self.image_keys))
        if reserved:
            raise ValueError(f"PolicyConfig: image_keys={list(self.image_keys)} may not use the name {reserved[0]!r}")
        if self.image_keys and self.obs_encoder not in IMAGE_ENCODERS:
            raise ValueError(
                f"PolicyConfig: obs_encoder={self.obs_encoder!r} cannot read the cameras image_keys="
                f"{list(self.image_keys)}; choose one of {list(IMAGE_ENCODERS)}"
            )
        if not self.image_keys and self.obs_encoder in IMAGE_ENCODERS:
            raise ValueError(
                f"PolicyConfig: obs_encoder={self.obs_encoder!r} needs camera keys (task.image_keys), got none"
            )

    @property
    def action_slice(self) -> slice:
        """Indices of the executed actions within a predicted chunk: ``[To-1, To-1+Ta)``."""
        start = self.n_obs_steps - 1
        return slice(start, start + self.n_action_steps)


def _sub_config(cls: type, value: Any, name: str) -> Any:
    """A denoiser's options from a dict (YAML) or an instance; unknown keys name the field."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"PolicyConfig: {name}={value!r} must be a mapping of options")
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ValueError(f"policy.{name}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    return cls(**value)


def _unet(cfg: PolicyConfig, action_dim: int, cond_dim: int) -> nn.Module:
    return ConditionalUnet1D(
        input_dim=action_dim,
        global_cond_dim=cond_dim,
        down_dims=cfg.down_dims,
        kernel_size=cfg.kernel_size,
        n_groups=cfg.n_groups,
        diffusion_step_embed_dim=cfg.diffusion_step_embed_dim,
        cond_predict_scale=cfg.cond_predict_scale,
    )


def _mlp(cfg: PolicyConfig, action_dim: int, cond_dim: int) -> nn.Module:
    return MLPDenoiser(action_dim, cfg.horizon, cond_dim, cfg.mlp)


def _transformer(cfg: PolicyConfig, action_dim: int, cond_dim: int) -> nn.Module:
    return TransformerDenoiser(action_dim, cfg.horizon, cond_dim, cfg.n_obs_steps, cfg.transformer)


#: denoiser name -> constructor(policy config, Da, G); every network maps
#: (sample (B, H, Da), t (B,), global_cond (B, G)) -> (B, H, Da).
DENOISERS = {"unet": _unet, "mlp": _mlp, "transformer": _transformer}


class DiffusionPolicy(nn.Module):
    """Action-sequence diffusion policy with observation/action queues.

    Args:
        cfg: shapes and network settings.
        obs_dim: Do.
        action_dim: Da.
        normalizer: fitted ``LinearNormalizer`` with keys ``"obs"`` and ``"action"``.
        objective: the ``DiffusionObjective`` that draws all noise, forms the loss and samples.
    """

    def __init__(
        self,
        cfg: PolicyConfig,
        obs_dim: int,
        action_dim: int,
        normalizer: LinearNormalizer,
        objective: DiffusionObjective,
    ) -> None:
        super().__init__()
        if obs_dim < (0 if cfg.image_keys else 1) or action_dim < 1:
            raise ValueError(f"DiffusionPolicy: obs_dim={obs_dim} and action_dim={action_dim} must be >= 1")
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.normalizer = normalizer
        self.objective = objective
        if cfg.image_keys:  # cameras (+ the low-dim "obs"): images are normalized inside the encoder
            self.obs_encoder = make_obs_encoder(
                cfg.obs_encoder,
                obs_dim,
                cfg.n_obs_steps,
                image_channels={k: 3 for k in cfg.image_keys},
                vision=cfg.vision,
            )
        else:
            self.obs_encoder = make_obs_encoder(
                cfg.obs_encoder, obs_dim, cfg.n_obs_steps, hidden_dims=cfg.obs_encoder_hidden_dims
            )
        if cfg.action_origin is not None:
            start, stop = cfg.action_origin
            if stop > obs_dim or stop - start != action_dim:
                raise ValueError(
                    f"action_origin={list(cfg.action_origin)} must select action_dim={action_dim} dims of the "
                    f"low-dimensional observation (obs_dim={obs_dim})"
                )
        self.model = DENOISERS[cfg.denoiser](cfg, action_dim, self.obs_encoder.out_dim)
        self._obs_queue: deque[Any] = deque(maxlen=cfg.n_obs_steps)  # Tensor (B, Do) or dict of them
        self._action_queue: deque[Tensor] = deque()
        self._last_plan: Tensor | None = None  # the last chunk (B, H, Da), kept when choosing among candidates

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _shift(self, action: Tensor, obs: Tensor, sign: int) -> Tensor:
        """``action`` (B, ..., Da) raw plus ``sign`` times the ``cfg.action_origin`` dims of the current
        step of ``obs`` (B, >= To, Do) raw: -1 makes a chunk relative, +1 absolute again. Unchanged for
        absolute actions (``cfg.action_origin`` unset)."""
        if self.cfg.action_origin is None:
            return action
        start, stop = self.cfg.action_origin
        origin = torch.as_tensor(obs, dtype=action.dtype, device=action.device)[:, self.cfg.n_obs_steps - 1, start:stop]
        return action + sign * origin.reshape(origin.shape[0], *[1] * (action.ndim - 2), -1)

    def _denoise(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The objective's ``model_fn``: (B, H, Da), (B,), (B, G) -> (B, H, Da)."""
        return self.model(x_t, t, cond)

    def _encode(self, nobs: Tensor) -> Tensor:
        """nobs: Tensor, shape (B, To, Do), normalized -> global cond, Tensor, shape (B, G)."""
        return self.obs_encoder(nobs)

    def _encode_dict(self, obs: Mapping[str, Any], generator: torch.Generator | None, where: str) -> Tensor:
        """Global cond (B, G) of cameras ``obs[key]`` (B, >= To, C, H, W) on the 0..255 scale plus the
        low-dim ``obs["obs"]`` (B, >= To, Do) in raw units (absent when Do = 0); the first To steps are used."""
        to = self.cfg.n_obs_steps
        inputs: dict[str, Tensor] = {}
        for key in self.cfg.image_keys:
            if key not in obs:
                raise KeyError(f"DiffusionPolicy.{where}: observation has no image key {key!r} (keys: {sorted(obs)})")
            img = torch.as_tensor(obs[key], device=self.device)
            if img.ndim != 5 or img.shape[1] < to or img.shape[2] != 3:
                raise ValueError(
                    f"DiffusionPolicy.{where}: {key!r} shape {tuple(img.shape)} must be (B, >= n_obs_steps={to}, "
                    "3, H, W)"
                )
            inputs[key] = img[:, :to]
        if self.obs_dim:
            if OBS not in obs:
                raise KeyError(f"DiffusionPolicy.{where}: observation has no key {OBS!r} (keys: {sorted(obs)})")
            low = torch.as_tensor(obs[OBS], dtype=torch.float32, device=self.device)
            if low.ndim != 3 or low.shape[1] < to or low.shape[2] != self.obs_dim:
                raise ValueError(
                    f"DiffusionPolicy.{where}: {OBS!r} shape {tuple(low.shape)} must be "
                    f"(B, >= n_obs_steps={to}, obs_dim={self.obs_dim})"
                )
            inputs[OBS] = self.normalizer.normalize(OBS, low[:, :to])  # (B, To, Do)
        return self.obs_encoder(inputs, generator=generator)

    def _dict_step(self, obs: Mapping[str, Any]) -> dict[str, Tensor]:
        """One environment step's dict observation -> ``{camera: (B, 3, H, W), "obs": (B, Do)}``: cameras
        come channels-last (B, H, W, 3) as environments return them; ``"obs"`` is assembled from
        ``cfg.obs_keys`` (each key flattened over its trailing dims, then sliced)."""
        from diffpolicy_immix.data.dataset import parse_obs_key

        step: dict[str, Tensor] = {}
        for key in self.cfg.image_keys:
            if key not in obs:
                raise KeyError(f"DiffusionPolicy.select_action: observation has no image key {key!r}")
            img = torch.as_tensor(obs[key], device=self.device)
            if img.ndim != 4 or img.shape[-1] != 3:
                raise ValueError(
                    f"DiffusionPolicy.select_action: obs[{key!r}] shape {tuple(img.shape)} must be (B, H, W, 3)"
                )
            step[key] = rearrange(img if img.dtype == torch.uint8 else img.float(), "b h w c -> b c h w")
        if self.obs_dim:
            specs = [parse_obs_key(k) for k in self.cfg.obs_keys] or [(OBS, slice(None))]
            parts = []
            for name, sl in specs:
                if name not in obs:
                    raise KeyError(
                        f"DiffusionPolicy.select_action: observation has no key {name!r} (keys: {sorted(obs)})"
                    )
                x = torch.as_tensor(obs[name], dtype=torch.float32, device=self.device)
                parts.append(rearrange(x, "b ... -> b (...)")[:, sl])
            low = torch.cat(parts, dim=-1)
            if low.shape[-1] != self.obs_dim:
                raise ValueError(
                    f"DiffusionPolicy.select_action: obs keys {list(self.cfg.obs_keys)} give {low.shape[-1]} dims, "
                    f"the policy expects obs_dim={self.obs_dim}"
                )
            step[OBS] = low
        return step

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, with_stats: bool = False
    ) -> tuple[Tensor, dict[str, float]]:
        """Diffusion loss on a batch of windows.

        Args:
            batch: ``{"obs": Tensor (B, H, Do), "action": Tensor (B, H, Da)}`` in raw units (only the
                first To observation steps are read; any extra keys are ignored).
            generator: passed to the objective (noise and timesteps).
            with_stats: ask the objective for miscibility statistics.

        Returns:
            (loss, stats): scalar Tensor and a dict of floats.
        """
        if self.cfg.image_keys:
            return self._image_loss(batch, generator, with_stats)
        for key in (OBS, ACTION):
            if key not in batch:
                raise KeyError(f"DiffusionPolicy.compute_loss: batch has no key {key!r} (keys: {sorted(batch)})")
        obs, action = batch[OBS], batch[ACTION]
        h, to = self.cfg.horizon, self.cfg.n_obs_steps
        if action.ndim != 3 or action.shape[1:] != (h, self.action_dim):
            raise ValueError(
                f"DiffusionPolicy.compute_loss: batch['action'] shape {tuple(action.shape)} must be "
                f"(B, horizon={h}, action_dim={self.action_dim})"
            )
        if obs.ndim != 3 or obs.shape[0] != action.shape[0] or obs.shape[1] < to or obs.shape[2] != self.obs_dim:
            raise ValueError(
                f"DiffusionPolicy.compute_loss: batch['obs'] shape {tuple(obs.shape)} must be "
                f"(B={action.shape[0]}, >= n_obs_steps={to}, obs_dim={self.obs_dim})"
            )
        nobs = self.normalizer.normalize(OBS, obs[:, :to])  # (B, To, Do)
        naction = self.normalizer.normalize(ACTION, self._shift(action, obs, -1))  # (B, H, Da)
        cond = self._encode(nobs)  # (B, G)
        return self.objective.loss(self._denoise, naction, cond=cond, generator=generator, with_stats=with_stats)

    def _image_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None, with_stats: bool
    ) -> tuple[Tensor, dict[str, float]]:
        """:meth:`compute_loss` of a camera policy: batch ``{camera: (B, >= To, 3, H, W) uint8, "obs": (B, H,
        Do), "action": (B, H, Da)}``; the random crops are drawn from ``generator`` before the noise."""
        if ACTION not in batch:
            raise KeyError(f"DiffusionPolicy.compute_loss: batch has no key {ACTION!r} (keys: {sorted(batch)})")
        action, h = batch[ACTION], self.cfg.horizon
        if action.ndim != 3 or action.shape[1:] != (h, self.action_dim):
            raise ValueError(
                f"DiffusionPolicy.compute_loss: batch['action'] shape {tuple(action.shape)} must be "
                f"(B, horizon={h}, action_dim={self.action_dim})"
            )
        cond = self._encode_dict(batch, generator, "compute_loss")  # (B, G)
        naction = self.normalizer.normalize(ACTION, self._shift(action, batch.get(OBS), -1))  # (B, H, Da)
        return self.objective.loss(self._denoise, naction, cond=cond, generator=generator, with_stats=with_stats)

    def forward(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, with_stats: bool = False
    ) -> tuple[Tensor, dict[str, float]]:
        """Same as :meth:`compute_loss` (DDP synchronizes gradients only through ``forward``)."""
        return self.compute_loss(batch, generator=generator, with_stats=with_stats)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(
        self,
        obs_dict: dict[str, Tensor],
        generator: torch.Generator | None = None,
        previous: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Sample one action chunk (``cfg.candidates`` of them, keeping one: see :class:`PolicyConfig`).

        Args:
            obs_dict: ``{"obs": Tensor (B, To, Do)}`` in raw units, oldest step first; a camera policy
                also takes ``{camera key: Tensor (B, To, 3, H, W)}`` (uint8, or float on the 0..255 scale).
            generator: passed to the objective's sampler (the initial noise); it must live on the
                policy's device.
            previous: the chunk ``action_pred`` (B, H, Da) planned Ta steps earlier, which the candidates
                are compared with; ``None``: the medoid is kept. Unused when ``cfg.candidates == 1``.

        Returns:
            ``{"action": Tensor (B, Ta, Da), "action_pred": Tensor (B, H, Da)}`` in raw units, where
            ``action == action_pred[:, To-1 : To-1+Ta]``.
        """
        cfg = self.cfg
        if cfg.image_keys:
            cond = self._encode_dict(obs_dict, None, "predict_action")  # (B, G); centre crops in eval mode
        else:
            if OBS not in obs_dict:
                raise KeyError(f"DiffusionPolicy.predict_action: obs_dict has no key {OBS!r}")
            obs = torch.as_tensor(obs_dict[OBS], dtype=torch.float32, device=self.device)
            if obs.ndim != 3 or obs.shape[1:] != (cfg.n_obs_steps, self.obs_dim):
                raise ValueError(
                    f"DiffusionPolicy.predict_action: obs_dict['obs'] shape {tuple(obs.shape)} must be "
                    f"(B, n_obs_steps={cfg.n_obs_steps}, obs_dim={self.obs_dim})"
                )
            cond = self._encode(self.normalizer.normalize(OBS, obs))  # (B, G)
        b, k = cond.shape[0], cfg.candidates
        if k > 1:  # K candidates per observation, sample-major: rows b*K .. b*K + K - 1
            cond = torch.repeat_interleave(cond, k, dim=0)  # (B*K, G)
        naction = self.objective.sample(
            self._denoise,
            (b * k, cfg.horizon, self.action_dim),
            cond=cond,
            generator=generator,
            device=cond.device,
            dtype=cond.dtype,
        )  # (B*K, H, Da), normalized
        action_pred = rearrange(self.normalizer.unnormalize(ACTION, naction), "(b k) h d -> b k h d", k=k)
        action_pred = self._shift(action_pred, obs_dict.get(OBS), +1)  # (B, K, H, Da), absolute
        action_pred = self._choose(action_pred, previous) if k > 1 else action_pred[:, 0]
        return {"action": action_pred[:, cfg.action_slice], "action_pred": action_pred}

    def _choose(self, candidates: Tensor, previous: Tensor | None) -> Tensor:
        """One chunk per observation from ``candidates`` (B, K, H, Da), raw units -> (B, H, Da).

        With ``previous`` (B, H, Da), the chunk planned Ta steps earlier, candidate step i is the same time
        step as previous step i + Ta; the steps compared are those the previous plan had not executed (i
        from To - 1 on) and still covers (i < H - Ta). Without it (or without such steps), the medoid."""
        cfg = self.cfg
        lo, hi = cfg.n_obs_steps - 1, cfg.horizon - cfg.n_action_steps
        if previous is not None and hi > lo:
            ahead = previous[:, None, lo + cfg.n_action_steps :]  # (B, 1, hi - lo, Da)
            cost = (candidates[:, :, lo:hi] - ahead).pow(2).sum(-1).mean(-1)  # (B, K)
        else:
            flat = rearrange(candidates, "b k h d -> b k (h d)")
            cost = torch.cdist(flat, flat).sum(-1)  # (B, K)
        best = cost.argmin(dim=1)  # (B,)
        return candidates[torch.arange(candidates.shape[0], device=candidates.device), best]

    def reset(self) -> None:
        """Clear the observation and action queues (call at the start of every episode)."""
        self._obs_queue.clear()
        self._action_queue.clear()
        self._last_plan = None

    @torch.no_grad()
    def select_action(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Receding-horizon control: one observation in, one action out.

        The observation queue keeps the last To observations (after :meth:`reset`, the first
        observation is repeated to fill it). A chunk is predicted when the action queue is empty, so a
        new prediction happens every Ta calls.

        Args:
            obs: Tensor, shape (B, Do), raw units (numpy arrays are accepted); a camera policy takes the
                environment's dict observation, e.g. ``{"img": (B, H, W, 3) uint8, "state": (B, 6)}``
                (see :meth:`_dict_step`).
            generator: passed to :meth:`predict_action`.

        Returns:
            Tensor, shape (B, Da), raw units.
        """
        if isinstance(obs, Mapping):
            return self._select_from_dict(obs, generator)
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"DiffusionPolicy.select_action: obs shape {tuple(obs.shape)} must be (B, obs_dim={self.obs_dim})"
            )
        if self._obs_queue and self._obs_queue[-1].shape != obs.shape:
            raise ValueError(
                f"DiffusionPolicy.select_action: obs shape {tuple(obs.shape)} differs from "
                f"{tuple(self._obs_queue[-1].shape)} since the last reset(); call reset() between episodes"
            )
        if not self._obs_queue:
            self._obs_queue.extend([obs] * self.cfg.n_obs_steps)
        else:
            self._obs_queue.append(obs)
        if not self._action_queue:
            history = torch.stack(list(self._obs_queue), dim=1)  # (B, To, Do)
            self._plan({OBS: history}, generator)
        return self._action_queue.popleft()

    def _plan(self, history: dict[str, Tensor], generator: torch.Generator | None) -> None:
        """Predict a chunk from the observation history and queue its Ta executed actions."""
        out = self.predict_action(history, generator=generator, previous=self._last_plan)
        self._last_plan = out["action_pred"] if self.cfg.candidates > 1 else None
        self._action_queue.extend(rearrange(out["action"], "b t d -> t b d").unbind(0))

    def _select_from_dict(self, obs: Mapping[str, Any], generator: torch.Generator | None) -> Tensor:
        """:meth:`select_action` for dict observations (queues of per-step dicts)."""
        if not self.cfg.image_keys:
            raise ValueError(
                f"DiffusionPolicy.select_action: got a dict observation ({sorted(obs)}) but the policy has no "
                "image_keys; low-dim policies take a Tensor (B, Do)"
            )
        step = self._dict_step(obs)
        if self._obs_queue:
            last = self._obs_queue[-1]
            if not isinstance(last, dict) or any(last[k].shape != v.shape for k, v in step.items()):
                raise ValueError(
                    "DiffusionPolicy.select_action: the observation shapes changed since the last reset(); "
                    "call reset() between episodes"
                )
            self._obs_queue.append(step)
        else:
            self._obs_queue.extend([step] * self.cfg.n_obs_steps)
        if not self._action_queue:
            history = {k: torch.stack([s[k] for s in self._obs_queue], dim=1) for k in step}  # (B, To, ...)
            self._plan(history, generator)
        return self._action_queue.popleft()

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, "
            f"To={c.n_obs_steps}, H={c.horizon}, Ta={c.n_action_steps}"
        )


def policy_summary(policy: DiffusionPolicy) -> dict[str, Any]:
    """Parameter counts and shapes, for logs."""
    n_params = sum(p.numel() for p in policy.model.parameters())
    return {
        "denoiser": policy.cfg.denoiser,
        "n_params_denoiser": n_params,
        "n_params_encoder": sum(p.numel() for p in policy.obs_encoder.parameters()),
        "obs_dim": policy.obs_dim,
        "action_dim": policy.action_dim,
        "horizon": policy.cfg.horizon,
        "n_obs_steps": policy.cfg.n_obs_steps,
        "n_action_steps": policy.cfg.n_action_steps,
    }
