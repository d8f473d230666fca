"""Vectorized, seeded policy rollouts in gymnasium environments (Diffusion Policy's evaluation protocol).

Protocol: episode ``i`` (0-based) is reset with seed ``seed_offset + i`` (test seeds start at 100000,
training seeds at 0). Episodes run in chunks of ``n_envs`` environments stepped in lockstep; an
environment whose episode is over is frozen (no further steps reach it) until the chunk ends. Per
episode we record

- ``success``: ``info["success"]`` was True at some step;
- ``max_reward``: the largest step reward (the environments' reward is their dense score in [0, 1]);
- ``length``: steps taken (the crashing step included).

A crash (an exception raised by the environment's ``reset`` or ``step``) ends that episode as a failure
(``success=False``, ``max_reward=0``), is reported with ``warnings.warn`` naming the seed and the
error, and the evaluation goes on; the crashed environment is rebuilt before its next episode.

Public functions:

- :func:`evaluate_policy` -> flat ``dict[str, float]`` (``success_rate``, ``mean_max_reward``,
  ``mean_episode_length``, ``n_episodes``, ``n_crashed``), what training callbacks log;
- :func:`rollout_episodes` -> ``list[EpisodeResult]``, the per-episode records behind those numbers;
- :func:`summarize_episodes` turns the latter into the former.

The policy is any object with ``reset()`` and ``select_action(obs, generator=None) -> (n_envs, Da)``
(e.g. :class:`~diffpolicy_immix.policy.DiffusionPolicy`); it receives raw observations as a float32
Tensor (n_envs, Do) on ``device`` and owns its observation/action queues. ``reset()`` is called at
the start of every chunk.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from diffpolicy_immix.evaluation.video import write_video

VECTOR_MODES = ("sync", "async")
ASYNC_CONTEXTS = ("spawn", "forkserver")  # "fork" hangs with rendering MuJoCo envs


class Policy(Protocol):
    """What the evaluator needs from a policy."""

    def reset(self) -> None: ...

    def select_action(self, obs: Any, generator: torch.Generator | None = None) -> Any: ...


@dataclass
class EpisodeResult:
    """One evaluated episode."""

    index: int
    seed: int
    success: bool
    max_reward: float
    length: int
    crashed: bool = False
    error: str = ""
    video_path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- environments
def _resolve_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The spec of ``env_id``; the toolkit's ``immix/...`` ids are registered on first need."""
    if env_id not in gym.registry:
        _import_env_package()
    return gym.spec(env_id)


def _import_env_package() -> None:
    try:
        import diffpolicy_immix_envs  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "diffpolicy_immix_envs":
            raise


class EpisodeGuard(gym.Wrapper):
    """Evaluator-side wrapper around one environment.

    - An exception in ``reset``/``step`` ends the episode with ``info["crashed"] = True`` and the
      error text in ``info["error"]``; the inner environment is rebuilt at the next ``reset``.
    - The end of an episode (terminated, truncated, crashed, or ``max_steps`` reached) is reported
      as ``info["episode_over"] = True`` while ``terminated``/``truncated`` stay False, so vector
      environments never auto-reset; later steps are not forwarded (the last observation repeats).
    - ``active = False`` makes the next ``reset`` a no-op (padding slots of the last chunk).
    - ``record = True`` renders a frame after every reset/step; :meth:`pop_frames` hands them over.

    The info of every reset/step has exactly the keys ``success``, ``episode_over``, ``crashed`` and
    ``error``.
    """

    def __init__(
        self,
        factory: Callable[[], gym.Env],
        max_steps: int | None,
        render_error: str = "",
        env: gym.Env | None = None,
    ) -> None:
        super().__init__(env if env is not None else factory())
        self._factory = factory
        self.max_steps = max_steps
        self.active = True
        self.record = False
        self._startup_render_error = render_error
        self._render_error = render_error
        self._frames: list[np.ndarray] = []
        self._broken = False
        self._over = True
        self._t = 0
        self._last_obs: Any = None

    def _placeholder(self) -> Any:
        if self._last_obs is not None:
            return self._last_obs
        space = self.observation_space
        if isinstance(space, gym.spaces.Box):
            return np.zeros(space.shape, dtype=space.dtype)
        return space.sample()

    @staticmethod
    def _info(success: bool = False, over: bool = False, crashed: bool = False, error: str = "") -> dict:
        return {
            "success": bool(success),
            "episode_over": bool(over),
            "crashed": bool(crashed),
            "error": error,
        }

    def _capture(self) -> None:
        if not self.record or self._render_error:
            return
        try:
            frame = self.env.render()
        except Exception as exc:
            self._render_error = f"render() raised {exc!r}"
            return
        if frame is None:
            self._render_error = f"render() returned None (render_mode={self.env.render_mode!r})"
            return
        self._frames.append(np.asarray(frame))

    def pop_frames(self) -> tuple[list[np.ndarray], str]:
        """Frames recorded since the last reset and the rendering error ("" when none)."""
        frames, self._frames = self._frames, []
        return frames, self._render_error

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._frames = []
        self._render_error = self._startup_render_error
        self._t = 0
        self._over = True
        if not self.active:
            return self._placeholder(), self._info(over=True)
        try:
            if self._broken:
                try:
                    self.env.close()
                except Exception:  # a crashed env may not close cleanly; it is discarded anyway
                    pass
                self.env = self._factory()
                self._broken = False
            obs, info = self.env.reset(seed=seed, options=options)
        except Exception as exc:
            self._broken = True
            return self._placeholder(), self._info(over=True, crashed=True, error=f"reset raised {exc!r}")
        self._over = False
        self._last_obs = obs
        self._capture()
        return obs, self._info(success=bool(info.get("success", False)))

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self._over:
            return self._placeholder(), 0.0, False, False, self._info(over=True)
        self._t += 1
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as exc:
            self._broken = True
            self._over = True
            error = f"step {self._t} raised {exc!r}"
            return self._placeholder(), 0.0, False, False, self._info(over=True, crashed=True, error=error)
        self._last_obs = obs
        self._over = bool(terminated or truncated or (self.max_steps is not None and self._t >= self.max_steps))
        self._capture()
        return obs, float(reward), False, False, self._info(bool(info.get("success", False)), self._over)


def _make_inner(env_spec: gym.envs.registration.EnvSpec | str, env_kwargs: dict[str, Any], render_mode: str | None):
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    return gym.make(env_spec, **kwargs)


def _guarded_env(
    env_spec: gym.envs.registration.EnvSpec | str,
    env_kwargs: dict[str, Any],
    render_mode: str | None,
    max_steps: int | None,
) -> EpisodeGuard:
    render_error = ""
    factory = functools.partial(_make_inner, env_spec, env_kwargs, render_mode)
    try:
        env = factory()
    except Exception as exc:
        if render_mode is None:
            raise
        # e.g. no OpenGL platform: evaluate without videos, and say why when a video is due
        render_error = f"making the env with render_mode={render_mode!r} raised {exc!r}"
        factory = functools.partial(_make_inner, env_spec, env_kwargs, None)
        env = factory()
    return EpisodeGuard(factory, max_steps, render_error, env=env)


def make_env(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = None,
    max_steps: int | None = None,
) -> Callable[[], EpisodeGuard]:
    """A picklable thunk building ``gym.make(env_id, **env_kwargs)`` wrapped in :class:`EpisodeGuard`.

    The id is resolved to its spec here, in the calling process, so ids registered at run time (tests,
    notebooks) also work in ``spawn``/``forkserver`` workers (``gym.make`` imports a string entry
    point's module there, which registers the toolkit's ids).
    """
    spec = _resolve_spec(env_id)
    return functools.partial(_guarded_env, spec, dict(env_kwargs or {}), render_mode, max_steps)


# --------------------------------------------------------------------------- rollouts
def _info_array(info: dict[str, Any], key: str, n: int, default: Any) -> np.ndarray:
    """Vector-env info ``key`` as an array (n,), ``default`` where an env did not report it."""
    out = np.full(n, default, dtype=object)
    if key in info:
        mask = np.asarray(info.get(f"_{key}", np.ones(n, dtype=bool)), dtype=bool)
        values = np.asarray(info[key], dtype=object)
        out[mask] = values[mask]
    return out


def _to_torch(obs: Any, device: torch.device) -> Any:
    if isinstance(obs, dict):
        return {k: _to_torch(v, device) for k, v in obs.items()}
    return torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)


def _to_numpy_action(action: Any, space: gym.Space, n_envs: int) -> np.ndarray:
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    action = np.asarray(action)
    dtype = space.dtype if isinstance(space, gym.spaces.Box) else None
    if dtype is not None:
        action = action.astype(dtype, copy=False)
    if action.shape[:1] != (n_envs,):
        raise ValueError(f"evaluate_policy: policy returned actions of shape {action.shape}; expected ({n_envs}, ...)")
    return action


def _check_args(
    n_episodes: int,
    n_envs: int,
    seed_offset: int,
    vector_mode: str,
    async_context: str,
    n_videos: int,
    video_dir,
    max_steps,
) -> None:
    if n_episodes < 1:
        raise ValueError(f"evaluate_policy: n_episodes={n_episodes} must be >= 1")
    if n_envs < 1:
        raise ValueError(f"evaluate_policy: n_envs={n_envs} must be >= 1")
    if seed_offset < 0:
        raise ValueError(f"evaluate_policy: seed_offset={seed_offset} must be >= 0")
    if vector_mode not in VECTOR_MODES:
        raise ValueError(f"evaluate_policy: vector_mode={vector_mode!r} must be one of {VECTOR_MODES}")
    if async_context not in ASYNC_CONTEXTS:
        raise ValueError(f"evaluate_policy: async_context={async_context!r} must be one of {ASYNC_CONTEXTS}")
    if n_videos < 0:
        raise ValueError(f"evaluate_policy: n_videos={n_videos} must be >= 0")
    if n_videos > 0 and video_dir is None:
        raise ValueError(f"evaluate_policy: n_videos={n_videos} needs a video_dir")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"evaluate_policy: max_steps={max_steps} must be >= 1 or None")


def rollout_episodes(
    policy: Policy,
    env_id: str,
    n_episodes: int = 50,
    seed_offset: int = 100000,
    n_envs: int = 10,
    vector_mode: str = "sync",
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    video_dir: str | Path | None = None,
    n_videos: int = 0,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    async_context: str = "spawn",
    progress: bool = True,
) -> list[EpisodeResult]:
    """Run ``n_episodes`` seeded episodes and return one :class:`EpisodeResult` per episode, in order.

    Args: see :func:`evaluate_policy`.
    """
    _check_args(n_episodes, n_envs, seed_offset, vector_mode, async_context, n_videos, video_dir, max_steps)
    spec = _resolve_spec(env_id)
    if max_steps is None and spec.max_episode_steps is None:
        raise ValueError(f"evaluate_policy: env {env_id!r} has no max_episode_steps; pass max_steps")
    n_envs = min(n_envs, n_episodes)
    device = torch.device(device)
    render_mode = "rgb_array" if n_videos > 0 else None
    thunks = [make_env(env_id, env_kwargs, render_mode, max_steps) for _ in range(n_envs)]
    if vector_mode == "sync":
        envs: gym.vector.VectorEnv = gym.vector.SyncVectorEnv(thunks)
    else:
        envs = gym.vector.AsyncVectorEnv(thunks, context=async_context)

    results: list[EpisodeResult] = []
    was_training = getattr(policy, "training", None)
    if hasattr(policy, "eval") and was_training is not None:
        policy.eval()
    bar = tqdm(total=n_episodes, desc=f"eval {env_id}", disable=not progress, leave=False)
    try:
        fps = float(envs.metadata.get("render_fps") or 30)
        with torch.no_grad():
            for start in range(0, n_episodes, n_envs):
                chunk = _run_chunk(
                    policy,
                    envs,
                    start,
                    min(n_envs, n_episodes - start),
                    seed_offset,
                    n_videos,
                    device,
                    generator,
                )
                for res, frames, render_error in chunk:
                    if res.crashed:
                        warnings.warn(
                            f"evaluate_policy: {env_id} episode {res.index} (seed {res.seed}) crashed: "
                            f"{res.error}; counted as a failure",
                            RuntimeWarning,
                            stacklevel=3,
                        )
                    if res.index < n_videos:
                        if frames:
                            stem = f"episode{res.index:04d}_seed{res.seed}.mp4"
                            res.video_path = str(write_video(Path(video_dir) / stem, frames, fps=fps))
                        else:
                            reason = render_error or "no frames were rendered"
                            warnings.warn(
                                f"evaluate_policy: no video for {env_id} episode {res.index} "
                                f"(seed {res.seed}): rendering unavailable ({reason})",
                                RuntimeWarning,
                                stacklevel=3,
                            )
                    results.append(res)
                bar.update(len(chunk))
    finally:
        bar.close()
        envs.close()
        if was_training is not None and hasattr(policy, "train"):
            policy.train(was_training)
    return results


def _run_chunk(
    policy: Policy,
    envs: gym.vector.VectorEnv,
    start: int,
    n_active: int,
    seed_offset: int,
    n_videos: int,
    device: torch.device,
    generator: torch.Generator | None,
) -> list[tuple[EpisodeResult, list[np.ndarray], str]]:
    """Episodes ``start .. start + n_active - 1`` in lockstep; returns (result, frames, render error)."""
    n = envs.num_envs
    active = np.arange(n) < n_active  # (n,) padding slots of the last chunk stay idle
    envs.set_attr("active", [bool(a) for a in active])
    envs.set_attr("record", [bool(active[j] and start + j < n_videos) for j in range(n)])
    seeds = [seed_offset + start + j if active[j] else None for j in range(n)]

    policy.reset()
    obs, info = envs.reset(seed=seeds)
    running = active.copy()
    success = np.zeros(n, dtype=bool)
    crashed = _info_array(info, "crashed", n, False).astype(bool) & active
    errors = _info_array(info, "error", n, "")
    max_reward = np.full(n, -math.inf)
    length = np.zeros(n, dtype=np.int64)
    running &= ~crashed

    while running.any():
        action = policy.select_action(_to_torch(obs, device), generator=generator)
        obs, reward, _, _, info = envs.step(_to_numpy_action(action, envs.single_action_space, n))
        crash_now = _info_array(info, "crashed", n, False).astype(bool) & running
        ok = running & ~crash_now
        length[running] += 1
        max_reward[ok] = np.maximum(max_reward[ok], np.asarray(reward, dtype=np.float64)[ok])
        success[ok] |= _info_array(info, "success", n, False).astype(bool)[ok]
        crashed |= crash_now
        errors = np.where(crash_now, _info_array(info, "error", n, ""), errors)
        running &= ~_info_array(info, "episode_over", n, True).astype(bool)

    recorded = envs.call("pop_frames") if start < n_videos else [([], "")] * n
    out = []
    for j in range(n_active):
        bad = bool(crashed[j])
        res = EpisodeResult(
            index=start + j,
            seed=int(seeds[j]),
            success=bool(success[j]) and not bad,
            max_reward=0.0 if bad or length[j] == 0 else float(max_reward[j]),
            length=int(length[j]),
            crashed=bad,
            error=str(errors[j]) if bad else "",
        )
        frames, render_error = recorded[j]
        out.append((res, list(frames), str(render_error)))
    return out


def summarize_episodes(episodes: list[EpisodeResult]) -> dict[str, float]:
    """Flat metrics: ``success_rate``, ``mean_max_reward``, ``mean_episode_length``, ``n_episodes``,
    ``n_crashed`` (crashed episodes count as failures with max reward 0)."""
    if not episodes:
        raise ValueError("summarize_episodes: episodes is empty")
    return {
        "success_rate": float(np.mean([e.success for e in episodes])),
        "mean_max_reward": float(np.mean([e.max_reward for e in episodes])),
        "mean_episode_length": float(np.mean([e.length for e in episodes])),
        "n_episodes": float(len(episodes)),
        "n_crashed": float(sum(e.crashed for e in episodes)),
    }


def evaluate_policy(
    policy: Policy,
    env_id: str,
    n_episodes: int = 50,
    seed_offset: int = 100000,
    n_envs: int = 10,
    vector_mode: str = "sync",
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    video_dir: str | Path | None = None,
    n_videos: int = 0,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    async_context: str = "spawn",
    progress: bool = True,
) -> dict[str, float]:
    """Evaluate a policy on seeded episodes of a gymnasium environment.

    Args:
        policy: object with ``reset()`` and ``select_action(obs (n_envs, Do), generator=None)``; an
            ``nn.Module`` is put in eval mode for the run (and restored) and should live on ``device``.
        env_id: registered gymnasium id (the ``immix/...`` ids are registered on demand).
        n_episodes: episodes to run; episode ``i`` uses seed ``seed_offset + i``.
        seed_offset: first seed (100000 = test seeds, 0 = training seeds).
        n_envs: environments stepped in lockstep (capped at ``n_episodes``).
        vector_mode: ``"sync"`` (one process; usually fastest for state-based tasks) or ``"async"``.
        env_kwargs: keyword arguments for ``gym.make``.
        max_steps: per-episode step cap; ``None`` uses the env's ``max_episode_steps`` (error if none).
        video_dir: folder for videos (needed when ``n_videos > 0``).
        n_videos: the first ``n_videos`` episodes are rendered (``render_mode="rgb_array"``) and
            written as ``episode{i:04d}_seed{seed}.mp4`` (gif if mp4 encoding fails); when rendering is
            unavailable a warning says why and the evaluation goes on.
        device: where observations are sent.
        generator: passed to ``policy.select_action``.
        async_context: multiprocessing context for ``"async"``: ``"spawn"`` or ``"forkserver"``.
        progress: show a tqdm bar.

    Returns:
        ``{"success_rate", "mean_max_reward", "mean_episode_length", "n_episodes", "n_crashed"}`` as
        floats. Use :func:`rollout_episodes` for the per-episode records.
    """
    episodes = rollout_episodes(
        policy,
        env_id,
        n_episodes=n_episodes,
        seed_offset=seed_offset,
        n_envs=n_envs,
        vector_mode=vector_mode,
        env_kwargs=env_kwargs,
        max_steps=max_steps,
        video_dir=video_dir,
        n_videos=n_videos,
        device=device,
        generator=generator,
        async_context=async_context,
        progress=progress,
    )
    return summarize_episodes(episodes)
