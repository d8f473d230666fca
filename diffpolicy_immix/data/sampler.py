"""Fixed-length windows over episodes, with edge padding (Diffusion Policy's sequence sampler).

With ``pad_before = n_obs_steps - 1`` and ``pad_after = n_action_steps - 1`` an episode of length L
yields the windows starting at episode steps ``-pad_before .. L - horizon + pad_after`` (inclusive);
rows outside ``[0, L)`` repeat the episode's first/last frame and are flagged in the pad mask::

    episode   |0|1|2|3|4|5|          L = 6, horizon 4, pad_before 1, pad_after 2
    window 0  |0|0|1|2|             start -1  mask |T|F|F|F|
    window 5  |4|5|5|5|             start  4  mask |F|F|T|T|

Every window's start and its episode's first/last row are precomputed, so a batch is an index
computation on (B, H) integers plus one ``np.take`` per key (no Python loop over samples).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SequenceSampler", "split_episodes", "gather_rows"]


def split_episodes(
    n_episodes: int,
    val_ratio: float = 0.0,
    seed: int = 42,
    max_train_episodes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level train/validation split by a seeded RNG.

    ``n_val = clip(round(n_episodes * val_ratio), 1, n_episodes - 1)`` episodes are drawn for
    validation when ``val_ratio > 0`` (none otherwise); the rest train, optionally capped at
    ``max_train_episodes`` by a second seeded draw. The same arguments always give the same split.

    Returns:
        ``(train_mask, val_mask)``: bool arrays (n_episodes,), disjoint.
    """
    if n_episodes < 0:
        raise ValueError(f"n_episodes={n_episodes} must be >= 0")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio={val_ratio} must be in [0, 1)")
    if max_train_episodes is not None and max_train_episodes < 1:
        raise ValueError(f"max_train_episodes={max_train_episodes} must be >= 1 or None")
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train_mask = ~val_mask
    if max_train_episodes is not None and train_mask.sum() > max_train_episodes:
        keep = rng.choice(np.flatnonzero(train_mask), size=max_train_episodes, replace=False)
        train_mask = np.zeros(n_episodes, dtype=bool)
        train_mask[keep] = True
    return train_mask, val_mask


def gather_rows(arr: Any, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` for an integer index array of any shape.

    Args:
        arr: numpy array (T, ...) (one ``np.take``) or a lazy zarr array (reads the unique rows once).
        rows: int array, e.g. (B, H).

    Returns:
        np.ndarray, shape ``(*rows.shape, *arr.shape[1:])``.
    """
    if isinstance(arr, np.ndarray):
        return np.take(arr, rows, axis=0)
    uniq, inverse = np.unique(rows.reshape(-1), return_inverse=True)
    block = np.asarray(arr.oindex[uniq])  # (U, ...)
    return np.take(block, inverse, axis=0).reshape(*rows.shape, *block.shape[1:])


class SequenceSampler:
    """Windows of ``horizon`` steps over the episodes selected by ``episode_mask``.

    Args:
        arrays: key -> array (T, ...) (numpy for speed, or zarr); may be empty if you only need indices.
        episode_ends: (N,) cumulative episode ends.
        horizon: window length H >= 1.
        pad_before: steps a window may start before its episode (``n_obs_steps - 1``).
        pad_after: steps a window may run past its episode's end (``n_action_steps - 1``).
        episode_mask: bool (N,) episodes to use (default all).

    Episodes shorter than ``horizon - pad_before - pad_after`` yield no window (a warning says how many).
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        episode_ends: Sequence[int] | np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episode_mask: np.ndarray | None = None,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1")
        if not 0 <= pad_before < horizon:
            raise ValueError(f"pad_before={pad_before} must be in [0, horizon={horizon})")
        if not 0 <= pad_after < horizon:
            raise ValueError(f"pad_after={pad_after} must be in [0, horizon={horizon})")
        ends = np.asarray(episode_ends, dtype=np.int64)
        n_steps = int(ends[-1]) if len(ends) else 0
        for k, a in arrays.items():
            if a.shape[0] != n_steps:
                raise ValueError(f"arrays[{k!r}] has length {a.shape[0]}, episode_ends[-1] = {n_steps}")
        if episode_mask is None:
            episode_mask = np.ones(len(ends), dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != ends.shape:
            raise ValueError(f"episode_mask has shape {episode_mask.shape}, expected {ends.shape}")
        self.arrays = dict(arrays)
        self.episode_ends = ends
        self.horizon = int(horizon)
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)
        self.episode_mask = episode_mask

        starts = np.concatenate([[0], ends])[:-1].astype(np.int64)
        lengths = ends - starts
        n_win = np.where(episode_mask, np.maximum(lengths - horizon + pad_before + pad_after + 1, 0), 0)
        short = int((episode_mask & (n_win == 0)).sum())
        if short:
            warnings.warn(
                f"{short} episode(s) shorter than horizon - pad_before - pad_after = "
                f"{horizon - pad_before - pad_after} steps yield no window",
                stacklevel=2,
            )
        ep = np.repeat(np.arange(len(ends)), n_win)  # (W,) episode of each window
        first_window = np.cumsum(n_win) - n_win  # (N,)
        offset = np.arange(len(ep)) - first_window[ep]  # (W,) window number within its episode
        self.window_episode = ep
        self._start = starts[ep] - pad_before + offset  # (W,) first row (may lie before the episode)
        self._lo = starts[ep]  # (W,) episode's first row
        self._hi = ends[ep] - 1  # (W,) episode's last row
        self._steps = np.arange(horizon, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._start)

    def _check_indices(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"window index {bad} out of range for {n} windows")
        return np.where(idx < 0, idx + n, idx)

    def window_rows(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Rows to read and the pad mask for windows ``indices`` (int array (B,)).

        Returns:
            ``(rows, pad_mask)``: int64 (B, H) rows into the arrays, bool (B, H) true where padded.
        """
        idx = self._check_indices(indices)
        raw = self._start[idx, None] + self._steps  # (B, H)
        rows = np.clip(raw, self._lo[idx, None], self._hi[idx, None])  # (B, H) edge padding
        return rows, rows != raw

    def sample(self, indices: Any, keys: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Windows ``indices`` (int array (B,)) of ``keys`` (default all arrays).

        Returns:
            ``(windows, pad_mask)``: key -> np.ndarray (B, H, ...) and bool (B, H).
        """
        rows, mask = self.window_rows(indices)
        names = self.arrays.keys() if keys is None else keys
        return {k: gather_rows(self.arrays[k], rows) for k in names}, mask

    def __repr__(self) -> str:
        return (
            f"SequenceSampler(windows={len(self)}, episodes={int(self.episode_mask.sum())}, "
            f"horizon={self.horizon}, pad_before={self.pad_before}, pad_after={self.pad_after})"
        )
