"""Collecting expert demonstrations into a replay-buffer store.

Episode ``i`` is reset with seed ``seed + i``; at every step the store records the observation the
expert acted on and the action it took, plus array-valued ``info`` entries among ``info_keys`` taken
at the same instant (the ``info`` of ``reset`` for step 0, of the previous ``step`` afterwards), so a
PushT store carries ``state`` (T, 5) and ``keypoint`` (T, 9, 2) like Diffusion Policy's::

    data/obs (T, Do) float32     data/action (T, Da) float32     data/<info key> (T, ...)
    meta/episode_ends (N,) int64

A dict observation (the ``pixels_state`` tasks: ``{"img": (96, 96, 3) uint8, "state": (6,)}``) is stored
key by key instead of ``obs``, as in Diffusion Policy's image datasets: ``data/img`` (T, 96, 96, 3) uint8
in chunks of :data:`IMAGE_CHUNK_STEPS` frames (a training batch reads few frames per chunk) and
``data/state`` (T, 6) float32; an info key of the same name as an observation key is not stored.

An episode succeeds if any step's ``info["success"]`` is true; its score is the maximum
``info["score"]`` (the reward when absent). By default only successful episodes are stored (the
attributes record how many were attempted). The store is written atomically: nothing appears at
``out_path`` unless collection finishes.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffpolicy_immix.data.replay_buffer import ReplayBuffer
from diffpolicy_immix.errors import MissingExtraError, UserError
from diffpolicy_immix.utils.io import remove_stale_temps

__all__ = ["IMAGE_CHUNK_STEPS", "collect_demonstrations"]

#: time steps per zarr chunk of an image observation key (8 frames of 96 x 96 x 3 = 221 KB raw)
IMAGE_CHUNK_STEPS = 8


def _image_keys(space: Any) -> list[str]:
    """Keys of a gymnasium ``Dict`` observation space that hold images (uint8 Box (H, W, C))."""
    spaces = getattr(space, "spaces", None)
    if not isinstance(spaces, Mapping):
        return []
    return [k for k, v in spaces.items() if getattr(v, "dtype", None) == np.uint8 and len(v.shape or ()) == 3]


def _load_env_package(env_id: str) -> Any:
    try:
        import diffpolicy_immix_envs  # imported lazily: the data layer does not need it
    except ImportError as err:
        raise ImportError(
            f"collecting {env_id!r} needs the package diffpolicy_immix_envs "
            f"(install the project: pip install -e .): {err}"
        ) from err
    return diffpolicy_immix_envs


def _as_row(value: Any, what: str) -> np.ndarray:
    if isinstance(value, Mapping):
        raise TypeError(f"{what} is a dict ({sorted(value)}); collection needs a flat array observation")
    return np.asarray(value, dtype=np.float32).reshape(-1)


@dataclass
class _Tally:
    """Running counts of a collection."""

    attempted: int = 0
    succeeded: int = 0
    scores: list[float] = field(default_factory=list)
    kept_seeds: list[int] = field(default_factory=list)
    kept_success: list[bool] = field(default_factory=list)
    steps_total: int = 0
    steps_kept: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "episodes_attempted": self.attempted,
            "episodes_succeeded": self.succeeded,
            "episodes_kept": len(self.kept_seeds),
            "success_rate": self.succeeded / max(self.attempted, 1),
            "mean_score": float(np.mean(self.scores)) if self.scores else float("nan"),
        }


def _resolve_expert(env_id: str, seed: int, env_fn: Callable[[], Any] | None, expert: Any) -> tuple[str, Any, Any]:
    """(gymnasium id, env factory, expert), defaulting to the toolkit's tasks and scripted experts."""
    if env_fn is not None and expert is not None:
        return env_id, env_fn, expert
    pkg = _load_env_package(env_id)
    if hasattr(pkg, "resolve_task"):  # short names ("reach_around") -> the gymnasium id
        env_id = pkg.resolve_task(env_id)
    env_fn = env_fn or (lambda: pkg.make_env(env_id))
    expert = expert if expert is not None else pkg.make_expert(env_id, seed=seed)
    return env_id, env_fn, expert


def _make_env(env_id: str, env_fn: Callable[[], Any]) -> Any:
    try:
        return env_fn()
    except ImportError as err:  # an optional dependency of the task (its message names the extra)
        raise MissingExtraError(f"{env_id}: {str(err).strip().splitlines()[0]}") from err


def _run_episode(
    env: Any, expert: Any, env_id: str, index: int, ep_seed: int, limit: int, info_keys: Sequence[str], state: dict
) -> tuple[dict[str, np.ndarray], bool, float]:
    """One expert episode: (arrays (T, ...) of obs, action and stored info keys, success, max score).

    ``state["stored_info"]`` (the info keys stored, decided on the first episode) is filled here.
    """
    obs, info = env.reset(seed=ep_seed)
    expert.reset(env)
    first = state.get("stored_info") is None
    obs_names = list(obs) if isinstance(obs, Mapping) else ["obs"]
    if first:
        state["obs_keys"] = obs_names
        state["stored_info"] = [k for k in info_keys if k in info and np.ndim(info[k]) >= 1 and k not in obs_names]
    stored: list[str] = state["stored_info"]
    rows: dict[str, list[np.ndarray]] = {**{k: [] for k in obs_names}, "action": [], **{k: [] for k in stored}}
    success, score = False, -np.inf
    for _ in range(limit):
        action = expert.act(env, obs)
        if isinstance(obs, Mapping):  # images stay uint8 (H, W, C); vectors as they come (float64 cast below)
            for k in obs_names:
                rows[k].append(np.asarray(obs[k]))
        else:
            rows["obs"].append(_as_row(obs, f"{env_id}: observation"))
        rows["action"].append(_as_row(action, f"{env_id}: action"))
        for k in stored:
            if k not in info:
                raise KeyError(f"{env_id}: episode {index} (seed {ep_seed}): info lacks key {k!r}")
            rows[k].append(np.asarray(info[k]))
        obs, reward, terminated, truncated, info = env.step(action)
        if first:  # warn once about keys that only step() reports
            first = False
            late = [k for k in info_keys if k not in stored and np.ndim(info.get(k)) >= 1]
            if late:
                warnings.warn(f"{env_id}: info keys {late} come from step() but not reset(); not stored", stacklevel=3)
        success = success or bool(info.get("success", False))
        score = max(score, float(info.get("score", reward)))
        if terminated or truncated:
            break
    episode = {k: np.stack(v) for k, v in rows.items()}
    for k, v in episode.items():
        if v.dtype == np.float64:
            episode[k] = v.astype(np.float32)
    return episode, success, score


def _remove_leftovers(out_path: Path) -> None:
    removed = remove_stale_temps(out_path.parent, out_path.name)
    if removed:
        names = ", ".join(p.name for p in removed)
        warnings.warn(f"{out_path}: removed leftovers of a killed collection: {names}", stacklevel=3)


def collect_demonstrations(
    env_id: str,
    out_path: str | os.PathLike[str],
    episodes: int,
    seed: int = 0,
    max_steps: int | None = None,
    keep_failed: bool = False,
    *,
    env_fn: Callable[[], Any] | None = None,
    expert: Any = None,
    info_keys: Sequence[str] = ("state", "keypoint"),
    chunk_steps: int | None = None,
    overwrite: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll out the scripted expert of ``env_id`` and write its episodes to ``out_path``.

    Args:
        env_id: gymnasium id (``immix/...``) or a short task name of ``diffpolicy_immix_envs``; the
            id is recorded in the store's attributes as ``task``.
        out_path: destination store (``*.zarr`` directory or ``*.zip``). Leftovers of a killed collection
            to the same path (``<name>.tmp-<pid>-<n>``, ``<name>.old-<pid>``) are removed with a warning.
        episodes: episodes to attempt.
        seed: episode ``i`` is reset with ``seed + i``; the expert is made with ``seed``.
        max_steps: step limit per episode (default: the env's ``spec.max_episode_steps``).
        keep_failed: also store episodes that never reported ``info["success"]``.
        env_fn: builds the env (default ``diffpolicy_immix_envs.make_env(env_id)``).
        expert: object with ``name``, ``reset(env)``, ``act(env, obs) -> action`` (default
            ``diffpolicy_immix_envs.make_expert(env_id, seed=seed)``).
        info_keys: array-valued ``info`` entries to store beside ``obs`` and ``action``.
        chunk_steps: time steps per zarr chunk (default about 1 MiB per chunk).
        overwrite: replace an existing store at ``out_path`` once the new one is complete.
        progress: show a tqdm bar with the running success rate.

    Returns:
        ``{"path", "episodes_attempted", "episodes_succeeded", "episodes_kept", "success_rate",
        "mean_score", "steps" (stored), "steps_total" (simulated), "mean_episode_length" (stored),
        "seconds", "steps_per_s" (simulated steps per second, expert included)}``.

    Raises:
        UserError: a bad argument, or no episode was kept (nothing is written).
        MissingExtraError: the task needs an optional dependency that is not installed.
    """
    if episodes < 1:
        raise UserError(f"episodes={episodes} must be >= 1")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"max_steps={max_steps} must be >= 1 or None")
    env_id, env_fn, expert = _resolve_expert(env_id, seed, env_fn, expert)
    env = _make_env(env_id, env_fn)
    _remove_leftovers(Path(out_path))
    try:
        limit = max_steps or getattr(getattr(env, "spec", None), "max_episode_steps", None)
        if not limit:
            raise UserError(f"{env_id}: the env has no step limit (spec.max_episode_steps); pass max_steps")
        attrs = {
            "task": env_id,
            "expert": str(getattr(expert, "name", type(expert).__name__)),
            "seed": int(seed),
            "obs_keys": ["obs"],
            "action_key": "action",
            "max_steps": int(limit),
            "keep_failed": bool(keep_failed),
        }
        tally, state, shapes = _Tally(), {}, {}
        images = _image_keys(getattr(env, "observation_space", None))
        if images:
            attrs["obs_keys"] = list(env.observation_space.spaces)
            attrs["image_keys"] = images
            if chunk_steps is None:
                chunk_steps = {k: IMAGE_CHUNK_STEPS for k in images}
        t0 = time.perf_counter()
        with ReplayBuffer.create_writer(out_path, attrs, chunk_steps=chunk_steps, overwrite=overwrite) as writer:
            bar = tqdm(range(episodes), desc=f"collect {env_id}", unit="ep", disable=not progress)
            for i in bar:
                episode, success, score = _run_episode(env, expert, env_id, i, seed + i, limit, info_keys, state)
                length = len(episode["action"])
                tally.attempted += 1
                tally.steps_total += length
                tally.succeeded += success
                tally.scores.append(score)
                if success or keep_failed:
                    writer.add_episode(episode)
                    tally.kept_seeds.append(seed + i)
                    tally.kept_success.append(bool(success))
                    tally.steps_kept += length
                    shapes = {"action_dim": int(episode["action"].shape[1])}
                    if "obs" in episode:
                        shapes["obs_dim"] = int(episode["obs"].shape[1])
                bar.set_postfix(success=f"{tally.succeeded / (i + 1):.2f}", kept=len(tally.kept_seeds))
            bar.close()
            seconds = time.perf_counter() - t0
            summary = tally.summary()
            if not tally.kept_seeds:
                raise UserError(
                    f"{env_id}: 0 of {episodes} episodes succeeded (seeds {seed}..{seed + episodes - 1}); "
                    f"nothing written to {out_path} (pass keep_failed=True to store failures)"
                )
            writer.update_attrs(
                {
                    **summary,
                    "episode_seeds": tally.kept_seeds,
                    "episode_success": tally.kept_success,
                    "info_keys": state.get("stored_info") or [],
                    **shapes,
                    "collect_seconds": round(seconds, 3),
                }
            )
    finally:
        env.close()
    return {
        "path": str(out_path),
        **summary,
        "steps": tally.steps_kept,
        "steps_total": tally.steps_total,
        "mean_episode_length": tally.steps_kept / len(tally.kept_seeds),
        "seconds": seconds,
        "steps_per_s": tally.steps_total / max(seconds, 1e-9),
    }
