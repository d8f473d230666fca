"""Training windows of (observation, action) sequences from a replay-buffer store.

Each item is one window of ``horizon`` steps (Diffusion Policy's timing)::

    obs      |o|o|                  n_obs_steps = 2 (the policy conditions on the first To rows)
    action   |a|a|a|a|a|a|a|a|...|  horizon = 16 predicted; executed a[To-1 : To-1+Ta], Ta = 8

``obs`` is the concatenation of the observation keys, each flattened over its trailing dims and
optionally sliced (``"key:start:stop"``), so Diffusion Policy's PushT low-dim observation is
``["keypoint", "state:0:2"]`` = 9*2 + 2 = 20 dims.

Camera keys (uint8 arrays (T, H, W, 3), e.g. Diffusion Policy's ``img``) may be named among the obs keys:
they are not concatenated into ``obs`` but returned as their own batch keys, only the first To steps,
channels first: ``{"img": (B, To, 3, H, W) uint8, "obs": (B, H, Do), "action": (B, H, Da)}``. They are
never loaded whole: rows are read by whole zarr chunks through a bounded cache (:class:`ChunkedRows`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset

from diffpolicy_immix.data.chunk_cache import ChunkedRows
from diffpolicy_immix.data.normalizer import LinearNormalizer
from diffpolicy_immix.data.replay_buffer import ReplayBuffer
from diffpolicy_immix.data.sampler import SequenceSampler, gather_rows, split_episodes
from diffpolicy_immix.data.validation import DatasetError, check_finite

__all__ = ["PolicyDataset", "is_image_array", "parse_obs_key"]


def parse_obs_key(spec: str) -> tuple[str, slice]:
    """``"key"`` -> (key, all dims); ``"key:start:stop"`` -> (key, slice(start, stop)) of the last dim
    after flattening the trailing dims (empty bounds allowed, e.g. ``"state::2"``)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"obs key spec {spec!r} must be 'key' or 'key:start:stop'")
    parts = spec.split(":")
    if len(parts) == 1:
        return spec, slice(None)
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"obs key spec {spec!r} must be 'key' or 'key:start:stop'")
    try:
        bounds = [int(p) if p.strip() else None for p in parts[1:]]
    except ValueError:
        raise ValueError(f"obs key spec {spec!r}: start and stop must be integers") from None
    return parts[0], slice(bounds[0], bounds[1])


def is_image_array(arr: Any) -> bool:
    """True for a camera array: uint8 with rows (H, W, C), i.e. shape (T, H, W, C)."""
    return np.dtype(arr.dtype) == np.uint8 and len(arr.shape) == 4


def _flatten_rows(a: np.ndarray, batched: bool) -> np.ndarray:
    """(T, ...) -> (T, F) or, for gathered windows, (B, H, ...) -> (B, H, F); (T,) -> (T, 1)."""
    return rearrange(a, "b h ... -> b h (...)") if batched else rearrange(a, "t ... -> t (...)")


class PolicyDataset(Dataset):
    """Windows ``{"obs": (H, Do), "action": (H, Da)}`` (float32 tensors) from the train episodes.

    Args:
        path: a store (directory/.zip, zarr format 2 or 3) or an open :class:`ReplayBuffer`.
        obs_keys: observation keys, each ``"key"`` or ``"key:start:stop"``, concatenated in order.
        action_key: the action array's key (flattened over trailing dims).
        horizon: window length H.
        n_obs_steps: To; windows may start ``To - 1`` steps before an episode (padded).
        n_action_steps: Ta; windows may end ``Ta - 1`` steps after an episode (padded).
        val_ratio: fraction of episodes held out for :meth:`get_validation_dataset`.
        seed: seed of the episode split.
        max_train_episodes: keep at most this many training episodes (seeded choice).
        in_memory: load the used keys into memory (fast); otherwise read windows from the store.
        return_pad_mask: also return ``"pad_mask"`` bool (H,) (true where a row repeats an edge frame).
        validate: scan the used keys for NaN/inf when opening.
        image_keys: the obs keys that are cameras (uint8 (T, H, W, 3)); ``None`` (default) takes every obs
            key named without a slice whose array is uint8 with 4 dims. Cameras are returned as
            ``key: (To, 3, H, W)`` uint8 and always read lazily, whatever ``in_memory`` says.
        image_cache_mb: memory bound of the decoded image chunks kept (all cameras together).

    Use :meth:`get_batch` (one vectorized gather) or :meth:`iter_batches` for training loops;
    ``__getitem__`` works with a plain ``torch.utils.data.DataLoader`` too.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | ReplayBuffer,
        obs_keys: Sequence[str],
        action_key: str = "action",
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.0,
        seed: int = 42,
        max_train_episodes: int | None = None,
        in_memory: bool = True,
        *,
        return_pad_mask: bool = False,
        validate: bool = True,
        image_keys: Sequence[str] | None = None,
        image_cache_mb: float = 256.0,
    ) -> None:
        super().__init__()
        if isinstance(obs_keys, str):
            obs_keys = [obs_keys]
        if not obs_keys:
            raise ValueError("obs_keys is empty; name at least one observation key")
        sizes = {"horizon": horizon, "n_obs_steps": n_obs_steps, "n_action_steps": n_action_steps}
        for name, value in sizes.items():
            if int(value) < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if n_obs_steps + n_action_steps - 1 > horizon:
            raise ValueError(
                f"n_obs_steps + n_action_steps - 1 = {n_obs_steps + n_action_steps - 1} exceeds "
                f"horizon={horizon} (the executed actions must lie inside the window)"
            )
        specs = [parse_obs_key(s) for s in obs_keys]
        needed = list(dict.fromkeys([name for name, _ in specs] + [action_key]))
        if image_cache_mb < 0:
            raise ValueError(f"image_cache_mb={image_cache_mb} must be >= 0")

        buffer, label = _open_store(path, needed, action_key, obs_names=[name for name, _ in specs])
        self.path = Path(label) if label != "<memory>" else None
        self.replay_buffer = buffer
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.return_pad_mask = return_pad_mask

        self.image_keys: list[str] = _camera_keys(buffer, label, list(obs_keys), specs, image_keys)
        image_keys = self.image_keys
        needed = [k for k in needed if k not in image_keys or k == action_key]
        per_camera = int(image_cache_mb * 2**20) // max(1, len(image_keys))
        self._images = {k: ChunkedRows(buffer[k], per_camera) for k in image_keys}
        self._lazy_buffer = buffer if image_keys else None  # keeps the store open for the cameras

        self._obs_specs = _vector_slices(buffer, list(obs_keys), specs, image_keys)
        self._obs_dim = sum(sl.stop - sl.start for _, sl in self._obs_specs)
        self._action_dim = int(np.prod(buffer[action_key].shape[1:], dtype=np.int64))

        raw = {k: buffer[k] for k in needed}
        if in_memory:  # read each used key once; the rest of the store (e.g. images) is never loaded
            raw = {k: np.asarray(a[...]) for k, a in raw.items()}
            if not isinstance(path, ReplayBuffer):
                if not image_keys:
                    buffer.close()
                buffer = ReplayBuffer(raw, buffer.episode_ends, buffer.attrs, path=buffer.path)
                self.replay_buffer = buffer
        if validate:
            check_finite(label, raw, buffer.episode_ends)
        self.in_memory = in_memory
        if in_memory:
            self._sources: dict[str, Any] = {
                "obs": self._assemble_obs(raw),  # (T, Do) float32
                "action": self._assemble_action(raw),  # (T, Da) float32
            }
        else:
            self._sources = raw

        masks = split_episodes(buffer.n_episodes, val_ratio, seed, max_train_episodes)
        self.train_mask, self.val_mask = masks
        self.val_ratio = val_ratio
        self.seed = seed
        self.max_train_episodes = max_train_episodes
        self.is_validation = False
        self.sampler = self._make_sampler(self.train_mask)

    # ----------------------------------------------------------------------------------------------
    def _make_sampler(self, mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(
            self._sources,
            self.replay_buffer.episode_ends,
            self.horizon,
            pad_before=self.n_obs_steps - 1,
            pad_after=self.n_action_steps - 1,
            episode_mask=mask,
        )

    def _assemble_obs(self, arrays: dict[str, Any], rows: np.ndarray | None = None) -> np.ndarray:
        """Concatenate the obs slices: (T, Do) float32, or (B, H, Do) for rows (B, H)."""
        parts = []
        for name, sl in self._obs_specs:
            a = np.asarray(arrays[name][...]) if rows is None else gather_rows(arrays[name], rows)
            parts.append(_flatten_rows(a, rows is not None)[..., sl])
        if not parts:  # cameras only
            lead = (self.replay_buffer.n_steps,) if rows is None else rows.shape
            return np.zeros((*lead, 0), dtype=np.float32)
        return np.concatenate(parts, axis=-1).astype(np.float32, copy=False)

    def _assemble_action(self, arrays: dict[str, Any], rows: np.ndarray | None = None) -> np.ndarray:
        a = arrays[self.action_key]
        a = np.asarray(a[...]) if rows is None else gather_rows(a, rows)
        return _flatten_rows(a, rows is not None).astype(np.float32, copy=False)

    # ----------------------------------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        """Do: width of the concatenated observation."""
        return self._obs_dim

    @property
    def image_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Camera key -> (C, H, W) as batches hold it."""
        return {k: (r.shape[3], r.shape[1], r.shape[2]) for k, r in self._images.items()}

    def image_cache_stats(self) -> dict[str, dict[str, float]]:
        """Camera key -> chunk cache statistics (hits, misses, hit_rate, cached_bytes, cached_chunks)."""
        return {k: r.stats() for k, r in self._images.items()}

    @property
    def action_dim(self) -> int:
        """Da: width of the flattened action."""
        return self._action_dim

    @property
    def n_episodes(self) -> int:
        """Episodes this dataset draws windows from (train, or validation for the validation copy)."""
        return int(self.sampler.episode_mask.sum())

    def __len__(self) -> int:
        return len(self.sampler)

    def get_batch(self, indices: Sequence[int] | np.ndarray | Tensor) -> dict[str, Tensor]:
        """Windows ``indices`` (B,) as ``{"obs": (B, H, Do), "action": (B, H, Da)}`` float32 tensors
        (plus ``"pad_mask"`` (B, H) bool if ``return_pad_mask``), gathered in one vectorized step; each
        camera key adds ``key: (B, To, 3, H_img, W_img)`` uint8 (the window's first To steps)."""
        if isinstance(indices, Tensor):
            indices = indices.cpu().numpy()
        obs, action, mask = self._lowdim_windows(indices)
        batch = {"obs": torch.from_numpy(obs), "action": torch.from_numpy(action)}
        if self._images:
            rows, _ = self.sampler.window_rows(indices)
            for k, reader in self._images.items():
                frames = reader.take(rows[:, : self.n_obs_steps])  # (B, To, H, W, C)
                batch[k] = torch.from_numpy(np.ascontiguousarray(rearrange(frames, "b t h w c -> b t c h w")))
        if self.return_pad_mask:
            batch["pad_mask"] = torch.from_numpy(mask)
        return batch

    def _lowdim_windows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs (B, H, Do), action (B, H, Da), pad mask (B, H)) of windows ``indices``, without cameras."""
        if self.in_memory:
            windows, mask = self.sampler.sample(indices)
            return windows["obs"], windows["action"], mask
        rows, mask = self.sampler.window_rows(indices)
        return self._assemble_obs(self._sources, rows), self._assemble_action(self._sources, rows), mask

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        """One window: ``{"obs": (H, Do), "action": (H, Da)}`` float32 tensors (cameras: (To, 3, H, W))."""
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"window index {i} out of range for {n} windows")
        return {k: v[0] for k, v in self.get_batch(np.array([int(i)])).items()}

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        generator: np.random.Generator | int | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """One epoch of :meth:`get_batch` batches (B, H, ...); ``generator`` seeds the shuffle."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        order = np.arange(len(self))
        if shuffle:
            np.random.default_rng(generator).shuffle(order)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield self.get_batch(order[start : start + batch_size])

    def get_validation_dataset(self) -> PolicyDataset:
        """The same store and settings over the held-out episodes (empty when ``val_ratio == 0``)."""
        val = copy.copy(self)
        val.sampler = self._make_sampler(self.val_mask)
        val.is_validation = True
        return val

    def _episode_rows(self, mask: np.ndarray) -> np.ndarray:
        """Step mask (T,) of the episodes in ``mask`` (N,)."""
        return np.repeat(mask, self.replay_buffer.episode_lengths)

    def get_normalizer(
        self, mode: str = "limits", range_eps: float = 1e-4, action_origin: tuple[int, int] | None = None
    ) -> LinearNormalizer:
        """A :class:`LinearNormalizer` with keys ``"obs"`` and ``"action"``, fitted on every step of the
        training episodes (``mode``: ``"limits"`` or ``"gaussian"``). Cameras are not fitted (their
        normalization is fixed); with cameras only, there is no ``"obs"`` key.

        With ``action_origin=(start, stop)`` the ``"action"`` key is fitted on relative chunks instead:
        every training window's H actions minus observation dims ``start:stop`` at its current step (row
        To - 1), what a policy with the same ``action_origin`` learns."""
        steps = self._episode_rows(self.train_mask)
        if self.in_memory:
            obs, action = self._sources["obs"], self._sources["action"]
        else:
            obs, action = self._assemble_obs(self._sources), self._assemble_action(self._sources)
        data = {"obs": obs[steps], "action": action[steps]}
        if action_origin is not None:
            data["action"] = self.relative_actions(action_origin)
        if not self._obs_dim:
            del data["obs"]
        return LinearNormalizer().fit(data, mode=mode, range_eps=range_eps)

    def relative_actions(self, action_origin: tuple[int, int], chunk: int = 8192) -> np.ndarray:
        """Every training window's actions relative to observation dims ``start:stop`` at its current step
        (row To - 1): (windows * H, Da) float32."""
        start, stop = (int(i) for i in action_origin)
        if not 0 <= start < stop <= self._obs_dim or stop - start != self._action_dim:
            raise ValueError(
                f"action_origin={[start, stop]} must select action_dim={self._action_dim} dims of the "
                f"observation (obs_dim={self._obs_dim})"
            )
        out = []
        for first in range(0, len(self), chunk):
            obs, action, _ = self._lowdim_windows(np.arange(first, min(first + chunk, len(self))))
            origin = obs[:, self.n_obs_steps - 1 : self.n_obs_steps, start:stop]  # (B, 1, Da)
            out.append((action - origin).reshape(-1, self._action_dim))
        return np.concatenate(out) if out else np.zeros((0, self._action_dim), dtype=np.float32)

    def get_all_actions(self) -> Tensor:
        """Every step's action of the training episodes: (T_train, Da) float32."""
        steps = self._episode_rows(self.train_mask)
        action = self._sources["action"] if self.in_memory else self._assemble_action(self._sources)
        return torch.from_numpy(np.ascontiguousarray(action[steps]))

    def __repr__(self) -> str:
        split = "validation" if self.is_validation else "train"
        return (
            f"PolicyDataset({self.path or '<memory>'}, {split}: {self.n_episodes} episodes, "
            f"{len(self)} windows, "
            f"obs {self.obs_keys} -> {self.obs_dim}"
            + (f" + cameras {self.image_shapes}" if self._images else "")
            + f", action {self.action_key!r} -> {self.action_dim}, "
            f"H={self.horizon}, To={self.n_obs_steps}, Ta={self.n_action_steps})"
        )


def _open_store(
    path: str | os.PathLike[str] | ReplayBuffer, needed: list[str], action_key: str, obs_names: list[str]
) -> tuple[ReplayBuffer, str]:
    """(the store, opened lazily, and its label for messages); a ``DatasetError`` naming the first missing key."""
    if isinstance(path, ReplayBuffer):
        for k in needed:
            path[k]  # noqa: B018  (raises DatasetError naming the store, key and the available keys)
        return path, str(path.path or "<memory>")
    label = str(path)
    buffer = ReplayBuffer.open(path, in_memory=False, validate=False)
    missing = [k for k in needed if k not in buffer]
    if missing:
        key = missing[0]
        role = "action key" if key == action_key and key not in obs_names else "obs key"
        available = ", ".join(buffer.keys())
        raise DatasetError(f"{label}: data/{key}: {role} not found (available keys: {available})")
    return buffer, label


def _camera_keys(
    buffer: ReplayBuffer,
    label: str,
    obs_keys: list[str],
    specs: list[tuple[str, slice]],
    image_keys: Sequence[str] | None,
) -> list[str]:
    """The camera keys: ``image_keys`` as declared, or every unsliced uint8 (T, H, W, C) obs key; an error for
    an image obs key left out, a camera key that is no obs key, or one that is not uint8 (T, H, W, 3)."""
    if image_keys is None:
        plain = [spec for spec, (name, _) in zip(obs_keys, specs) if spec == name]
        image_keys = [k for k in plain if is_image_array(buffer[k])]
    cameras = list(dict.fromkeys(image_keys))
    for spec, (name, _) in zip(obs_keys, specs):
        if name not in cameras and is_image_array(buffer[name]):
            arr = buffer[name]
            raise ValueError(
                f"obs key {spec!r} (data/{name}, uint8 {tuple(arr.shape)}) is a camera image but not among "
                f"image_keys={cameras} (task.image_keys)"
            )
    for k in cameras:
        if k not in obs_keys:
            raise ValueError(f"image key {k!r} is not among obs_keys {obs_keys}")
        arr = buffer[k]
        if not is_image_array(arr) or arr.shape[-1] != 3:
            raise DatasetError(
                f"{label}: data/{k}: an image key must be uint8 (T, H, W, 3), "
                f"got {np.dtype(arr.dtype)} {tuple(arr.shape)}"
            )
    return cameras


def _vector_slices(
    buffer: ReplayBuffer, obs_keys: list[str], specs: list[tuple[str, slice]], cameras: list[str]
) -> list[tuple[str, slice]]:
    """Each non-camera obs key's slice, resolved against its key's flattened width (concrete start, stop)."""
    resolved = []
    for spec, (name, sl) in zip(obs_keys, specs):
        if name in cameras:
            continue
        width = int(np.prod(buffer[name].shape[1:], dtype=np.int64))
        start, stop, _ = sl.indices(width)
        if stop <= start:
            raise ValueError(f"obs key spec {spec!r} selects no dims of data/{name} (width {width})")
        resolved.append((name, slice(start, stop)))
    return resolved
