"""Collecting expert demonstrations into a replay-buffer store.

Episode ``i`` is reset with seed ``seed + i``; at every step the store records the observation the
expert acted on and the action it took, plus array-valued ``info`` entries among ``info_keys`` taken
at the same instant (the ``info`` of ``reset`` for step 0, of the previous ``step`` afterwards), so a
PushT store carries ``state`` (T, 5) and ``keypoint`` (T, 9, 2) like Diffusion Policy's::

    data/obs (T, Do) float32     data/action (T, Da) float32     data/<info key> (T, ...)
    meta/episode_ends (N,) int64

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
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffpolicy_immix.data.replay_buffer import ReplayBuffer

__all__ = ["collect_demonstrations"]


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
        out_path: destination store (``*.zarr`` directory or ``*.zip``).
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
        RuntimeError: no episode was kept (nothing is written).
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes} must be >= 1")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1 or None")
    if env_fn is None or expert is None:
        pkg = _load_env_package(env_id)
        if hasattr(pkg, "resolve_task"):  # short names ("reach_around") -> the gymnasium id
            env_id = pkg.resolve_task(env_id)
        env_fn = env_fn or (lambda: pkg.make_env(env_id))
        expert = expert if expert is not None else pkg.make_expert(env_id, seed=seed)
    env = env_fn()
    try:
        limit = max_steps or getattr(getattr(env, "spec", None), "max_episode_steps", None)
        if not limit:
            raise ValueError(f"{env_id}: the env has no step limit (spec.max_episode_steps); pass max_steps")
        expert_name = str(getattr(expert, "name", type(expert).__name__))
        attrs = {
            "task": env_id,
            "expert": expert_name,
            "seed": int(seed),
            "obs_keys": ["obs"],
            "action_key": "action",
            "max_steps": int(limit),
            "keep_failed": bool(keep_failed),
        }
        stored_info: list[str] | None = None  # decided on the first episode
        check_step_info = False
        kept_seeds: list[int] = []
        kept_success: list[bool] = []
        n_success = 0
        scores: list[float] = []
        steps_total = steps_kept = 0
        t0 = time.perf_counter()
        writer = ReplayBuffer.create_writer(out_path, attrs, chunk_steps=chunk_steps, overwrite=overwrite)
        with writer:
            bar = tqdm(range(episodes), desc=f"collect {env_id}", unit="ep", disable=not progress)
            for i in bar:
                ep_seed = seed + i
                obs, info = env.reset(seed=ep_seed)
                expert.reset(env)
                if stored_info is None:
                    stored_info = [k for k in info_keys if k in info and np.ndim(info[k]) >= 1]
                    check_step_info = True
                rows: dict[str, list[np.ndarray]] = {"obs": [], "action": [], **{k: [] for k in stored_info}}
                success, score = False, -np.inf
                for _ in range(limit):
                    action = expert.act(env, obs)
                    rows["obs"].append(_as_row(obs, f"{env_id}: observation"))
                    rows["action"].append(_as_row(action, f"{env_id}: action"))
                    for k in stored_info:
                        if k not in info:
                            raise KeyError(f"{env_id}: episode {i} (seed {ep_seed}): info lacks key {k!r}")
                        rows[k].append(np.asarray(info[k]))
                    obs, reward, terminated, truncated, info = env.step(action)
                    if check_step_info:  # warn once about keys that only step() reports
                        check_step_info = False
                        late = [k for k in info_keys if k not in stored_info and np.ndim(info.get(k)) >= 1]
                        if late:
                            warnings.warn(
                                f"{env_id}: info keys {late} come from step() but not reset(); not stored",
                                stacklevel=2,
                            )
                    success = success or bool(info.get("success", False))
                    score = max(score, float(info.get("score", reward)))
                    if terminated or truncated:
                        break
                length = len(rows["action"])
                steps_total += length
                n_success += success
                scores.append(score)
                if success or keep_failed:
                    episode = {k: np.stack(v) for k, v in rows.items()}
                    for k, v in episode.items():
                        if v.dtype == np.float64:
                            episode[k] = v.astype(np.float32)
                    writer.add_episode(episode)
                    kept_seeds.append(ep_seed)
                    kept_success.append(bool(success))
                    steps_kept += length
                bar.set_postfix(success=f"{n_success / (i + 1):.2f}", kept=len(kept_seeds))
            bar.close()
            seconds = time.perf_counter() - t0
            summary = {
                "episodes_attempted": episodes,
                "episodes_succeeded": n_success,
                "episodes_kept": len(kept_seeds),
                "success_rate": n_success / episodes,
                "mean_score": float(np.mean(scores)),
            }
            if not kept_seeds:
                raise RuntimeError(
                    f"{env_id}: 0 of {episodes} episodes succeeded (seeds {seed}..{seed + episodes - 1}); "
                    f"nothing written to {out_path} (pass keep_failed=True to store failures)"
                )
            writer.update_attrs(
                {
                    **summary,
                    "episode_seeds": kept_seeds,
                    "episode_success": kept_success,
                    "info_keys": stored_info or [],
                    "obs_dim": int(len(rows["obs"][0])) if rows["obs"] else None,
                    "action_dim": int(len(rows["action"][0])) if rows["action"] else None,
                    "collect_seconds": round(seconds, 3),
                }
            )
    finally:
        env.close()
    return {
        "path": str(out_path),
        **summary,
        "steps": steps_kept,
        "steps_total": steps_total,
        "mean_episode_length": steps_kept / len(kept_seeds),
        "seconds": seconds,
        "steps_per_s": steps_total / max(seconds, 1e-9),
    }
