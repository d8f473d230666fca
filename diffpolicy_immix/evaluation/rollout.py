"""Vectorized, seeded policy rollouts in gymnasium environments (Diffusion Policy's evaluation protocol).

Protocol: episode ``i`` (0-based) is reset with seed ``seed_offset + i`` (test seeds start at 100000,
training seeds at 0). Episodes run in chunks of ``n_envs`` environments stepped in lockstep; an
environment whose episode is over is frozen (no further steps reach it) until the chunk ends. Per
episode we record

- ``success``: the success spec held at some step (default ``info["success"]``; see
  :class:`~diffpolicy_immix.evaluation.envspec.SuccessSpec`);
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

from diffpolicy_immix.evaluation.envspec import (
    EnvSpec,
    SuccessSpec,
    as_env_spec,
    build_env,
    reports_success,
    resolve,
    success_from_step,
)
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
def _resolve_spec(env_id: str | EnvSpec) -> gym.envs.registration.EnvSpec:
    """The registration spec of ``env_id`` (an id, ``"module:id"`` or an :class:`EnvSpec`); the toolkit's
    ``immix/...`` ids are registered on first need."""
    return resolve(env_id)


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
        success: SuccessSpec | None = None,
    ) -> None:
        super().__init__(env if env is not None else factory())
        self._factory = factory
        self.success_spec = success or SuccessSpec()
        self.success_reported = False  # the success info key was seen at some reset/step
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
        self.success_reported |= reports_success(self.success_spec, info)
        return obs, self._info(success=success_from_step(self.success_spec, None, False, info))

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
        self.success_reported |= reports_success(self.success_spec, info)
        success = success_from_step(self.success_spec, float(reward), bool(terminated), info)
        return obs, float(reward), False, False, self._info(success, self._over)


def _guarded_env(
    spec: EnvSpec,
    registered: gym.envs.registration.EnvSpec,
    render_mode: str | None,
    max_steps: int | None,
) -> EpisodeGuard:
    render_error = ""
    factory = functools.partial(build_env, spec, registered, render_mode)
    try:
        env = factory()
    except Exception as exc:
        if render_mode is None:
            raise
        # e.g. no OpenGL platform: evaluate without videos, and say why when a video is due
        render_error = f"making the env with render_mode={render_mode!r} raised {exc!r}"
        factory = functools.partial(build_env, spec, registered, None)
        env = factory()
    return EpisodeGuard(factory, max_steps, render_error, env=env, success=spec.success)


def make_env(
    env_id: str | EnvSpec,
    env_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = None,
    max_steps: int | None = None,
) -> Callable[[], EpisodeGuard]:
    """A picklable thunk building ``gym.make(env_id, **env_kwargs)`` (plus the spec's wrappers) wrapped
    in :class:`EpisodeGuard`, which reads success as the spec says.

    ``env_id`` is an id, ``"module:id"`` or an :class:`~diffpolicy_immix.evaluation.envspec.EnvSpec`
    (``env_kwargs`` are merged over its own). The id is resolved to its registration spec here, in the
    calling process, so ids registered at run time (tests, notebooks) also work in
    ``spawn``/``forkserver`` workers.
    """
    spec = as_env_spec(env_id, env_kwargs)
    return functools.partial(_guarded_env, spec, _resolve_spec(spec), render_mode, max_steps)


# --------------------------------------------------------------------------- rollouts
_WARNED_UNREPORTED: set[tuple[str, str]] = set()


def _warn_if_success_unreported(envs: gym.vector.VectorEnv, env_id: str | EnvSpec) -> None:
    """Warn once per (env, info key) when success is read from an info key no env ever reported."""
    spec = as_env_spec(env_id)
    if spec.success.kind != "info_key" or any(envs.get_attr("success_reported")):
        return
    key = (spec.env_id, spec.success.key)
    if key not in _WARNED_UNREPORTED:
        _WARNED_UNREPORTED.add(key)
        warnings.warn(
            f"evaluate_policy: env {spec.env_id!r} never reported info[{spec.success.key!r}], so its success rate "
            f"reads 0; set task.success (an info key it reports, a reward threshold, terminated or none)",
            RuntimeWarning,
            stacklevel=3,
        )


def _info_array(info: dict[str, Any], key: str, n: int, default: Any) -> np.ndarray:
    """Vector-env info ``key`` as an array (n,), ``default`` where an env did not report it."""
    out = np.full(n, default, dtype=object)
    if key in info:
        mask = np.asarray(info.get(f"_{key}", np.ones(n, dtype=bool)), dtype=bool)
        values = np.asarray(info[key], dtype=object)
        out[mask] = values[mask]
    return out


def _to_torch(obs: Any, device: torch.device) -> Any:
    """Observations to tensors on ``device``: float32, except uint8 arrays (camera images), which stay
    uint8; a dict observation (e.g. ``{"img", "state"}``) becomes a dict of tensors."""
    if isinstance(obs, dict):
        return {k: _to_torch(v, device) for k, v in obs.items()}
    arr = np.asarray(obs)
    return torch.as_tensor(arr, dtype=None if arr.dtype == np.uint8 else torch.float32, device=device)


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
    env_id: str | EnvSpec,
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
    video_size: int | None = None,
) -> list[EpisodeResult]:
    """Run ``n_episodes`` seeded episodes and return one :class:`EpisodeResult` per episode, in order.

    Args: see :func:`evaluate_policy`.
    """
    _check_args(n_episodes, n_envs, seed_offset, vector_mode, async_context, n_videos, video_dir, max_steps)
    spec = _resolve_spec(env_id)
    if max_steps is None and spec.max_episode_steps is None:
        raise ValueError(f"evaluate_policy: env {env_id!r} has no max_episode_steps; pass max_steps")
    n_envs = min(n_envs, n_episodes)
    envs = _vector_env(env_id, env_kwargs, n_envs, n_videos, video_size, max_steps, vector_mode, async_context)
    results: list[EpisodeResult] = []
    was_training = getattr(policy, "training", None)
    if hasattr(policy, "eval") and was_training is not None:
        policy.eval()
    bar = tqdm(total=n_episodes, desc=f"eval {env_id}", disable=not progress, leave=False)
    try:
        videos = _VideoSink(env_id, video_dir, n_videos, float(envs.metadata.get("render_fps") or 30), video_size)
        with torch.no_grad():
            for start in range(0, n_episodes, n_envs):
                n_active = min(n_envs, n_episodes - start)
                chunk = _run_chunk(
                    policy, envs, start, n_active, seed_offset, n_videos, torch.device(device), generator
                )
                for res, frames, render_error in chunk:
                    videos.finish(res, frames, render_error)
                    results.append(res)
                bar.update(len(chunk))
        _warn_if_success_unreported(envs, env_id)
    finally:
        bar.close()
        envs.close()
        if was_training is not None and hasattr(policy, "train"):
            policy.train(was_training)
    return results


def _vector_env(
    env_id: str | EnvSpec,
    env_kwargs: dict[str, Any] | None,
    n_envs: int,
    n_videos: int,
    video_size: int | None,
    max_steps: int | None,
    vector_mode: str,
    async_context: str,
) -> gym.vector.VectorEnv:
    """``n_envs`` guarded environments stepped in lockstep; rendering (at ``video_size`` for the toolkit's
    ``immix/`` tasks, which take ``width``/``height``) only when videos are due."""
    render_mode = "rgb_array" if n_videos > 0 else None
    kwargs = dict(env_kwargs or {})
    name = env_id if isinstance(env_id, str) else str(getattr(env_id, "env_id", ""))
    if render_mode is not None and video_size is not None and name.startswith("immix/"):
        kwargs = {"width": int(video_size), "height": int(video_size), **kwargs}
    thunks = [make_env(env_id, kwargs or None, render_mode, max_steps) for _ in range(n_envs)]
    if vector_mode == "sync":
        return gym.vector.SyncVectorEnv(thunks)
    return gym.vector.AsyncVectorEnv(thunks, context=async_context)


class _VideoSink:
    """Writes the videos of the first ``n_videos`` episodes and warns about crashes and missing frames."""

    def __init__(self, env_id: Any, video_dir: str | Path | None, n_videos: int, fps: float, size: int | None) -> None:
        self.env_id, self.video_dir, self.n_videos, self.fps, self.size = env_id, video_dir, n_videos, fps, size

    def finish(self, res: EpisodeResult, frames: list[np.ndarray], render_error: str) -> None:
        """Report a crash; write the episode's video (frames (H, W, 3) scaled to ``size`` x ``size``)."""
        if res.crashed:
            warnings.warn(
                f"evaluate_policy: {self.env_id} episode {res.index} (seed {res.seed}) crashed: "
                f"{res.error}; counted as a failure",
                RuntimeWarning,
                stacklevel=4,
            )
        if res.index >= self.n_videos:
            return
        if not frames:
            reason = render_error or "no frames were rendered"
            warnings.warn(
                f"evaluate_policy: no video for {self.env_id} episode {res.index} "
                f"(seed {res.seed}): rendering unavailable ({reason})",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        stem = f"episode{res.index:04d}_seed{res.seed}.mp4"
        frames = [_resized(f, self.size) for f in frames] if self.size else frames
        res.video_path = str(write_video(Path(self.video_dir) / stem, frames, fps=self.fps))


def _resized(frame: np.ndarray, size: int) -> np.ndarray:
    """``frame`` (H, W, C) uint8 scaled to (size, size, C) when it has another size (environments that
    render at a fixed size)."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(frame, dtype=np.uint8)).resize((size, size), Image.BILINEAR))


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
    env_id: str | EnvSpec,
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
    video_size: int | None = None,
    threads: int | None = 1,
) -> dict[str, float]:
    """Evaluate a policy on seeded episodes of a gymnasium environment.

    Args:
        policy: object with ``reset()`` and ``select_action(obs (n_envs, Do), generator=None)``; an
            ``nn.Module`` is put in eval mode for the run (and restored) and should live on ``device``.
        env_id: registered gymnasium id (the ``immix/...`` ids are registered on demand), gymnasium's
            ``"module:id"``, or an :class:`~diffpolicy_immix.evaluation.envspec.EnvSpec` (env kwargs,
            wrappers, success spec, episode length; ``EnvSpec.from_task(task)``).
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
        video_size: width = height of the videos in pixels (None: the environment's render size); the
            toolkit's ``immix/`` tasks render at that size, other environments' frames are rescaled.
        threads: torch CPU threads during the rollouts, restored afterwards (default 1: a policy called
            at batch ``n_envs`` gains nothing from more, and extra threads stall whenever another
            process holds a core); None leaves the setting alone.

    Returns:
        ``{"success_rate", "mean_max_reward", "mean_episode_length", "n_episodes", "n_crashed"}`` as
        floats. Use :func:`rollout_episodes` for the per-episode records.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"evaluate_policy: threads={threads} must be >= 1 or None")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
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
            video_size=video_size,
        )
    finally:
        torch.set_num_threads(saved_threads)
    return summarize_episodes(episodes)
