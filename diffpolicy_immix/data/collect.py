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

With ``dart_noise > 0`` the collection injects noise in the manner of DART (Laskey et al., 2017): the
environment executes the expert's action plus Gaussian noise, the store records the expert's clean
action, and the closed-loop expert corrects from wherever the perturbation took the system. The policy
then sees how the expert recovers from states just off its own path. The noise's standard deviation is
``dart_noise`` times the half-range of each action dimension (absolute units for an unbounded action
space); the perturbed action is clipped to the action space.

With ``hold_steps > 0`` an episode goes on for that many steps after its first successful step, with the
expert still acting (it keeps the task solved), instead of ending there. Demonstrations that end at the
success step never show what to do once the goal is reached; a policy trained on them tends to push on
through it. During those steps the env's ``terminated`` is ignored while ``info["success"]`` holds; a
termination without success, or a truncation, still ends the episode.

With a ``policy`` (a trained policy, e.g. ``dpi-collect ... takeover=CHECKPOINT``) each episode starts with
the policy in control for a number of steps drawn uniformly from ``policy_steps`` (per episode, seeded
by the episode's seed); then the expert takes over from wherever the policy left the system, and only the
expert's part is stored. This is the data-aggregation idea of DAgger (Ross et al., 2011) in its
takeover form: the store shows the expert recovering from the states the policy itself drifts into,
which clean demonstrations never visit. The first stored observation is the takeover state (a policy
trained on the store repeats it as its history, as at the start of any episode). An episode that the
policy ends on its own (success or termination) before the takeover stores nothing. ``include`` copies
the episodes of an existing store (e.g. the clean demonstrations) into the new store first.

An episode succeeds if any step's ``info["success"]`` is true; its score is the maximum
``info["score"]`` (the reward when absent). By default only successful episodes are stored (the
attributes record how many were attempted). The store is written atomically: nothing appears at
``out_path`` unless collection finishes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffpolicy_immix.data.replay_buffer import ReplayBuffer
from diffpolicy_immix.data.validation import DatasetError
from diffpolicy_immix.errors import MissingExtraError, UserError
from diffpolicy_immix.utils.io import remove_stale_temps

__all__ = ["IMAGE_CHUNK_STEPS", "collect_demonstrations", "step_range"]

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
    policy_ended: int = 0  # episodes the policy ended before the expert took over
    shapes: dict[str, int] = field(default_factory=dict)  # action_dim (and obs_dim) of the stored episodes

    def record(
        self, episode: dict[str, np.ndarray] | None, success: bool, score: float, ep_seed: int, keep: bool
    ) -> bool:
        """Count one episode (None: the policy ended it before the takeover); whether to store it."""
        self.attempted += 1
        if episode is None:
            self.policy_ended += 1
            return False
        length = len(episode["action"])
        self.steps_total += length
        self.succeeded += success
        self.scores.append(score)
        if not (success or keep):
            return False
        self.kept_seeds.append(ep_seed)
        self.kept_success.append(bool(success))
        self.steps_kept += length
        self.shapes = {"action_dim": int(episode["action"].shape[1])}
        if "obs" in episode:
            self.shapes["obs_dim"] = int(episode["obs"].shape[1])
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "episodes_attempted": self.attempted,
            "episodes_succeeded": self.succeeded,
            "episodes_kept": len(self.kept_seeds),
            "success_rate": self.succeeded / max(self.attempted, 1),
            "mean_score": float(np.mean(self.scores)) if self.scores else float("nan"),
        }


def _resolve_expert(
    env_id: str, env_fn: Callable[[], Any] | None, expert: Any, options: Mapping[str, Any]
) -> tuple[str, Callable[[], Any], Callable[[int], Any]]:
    """(gymnasium id, env factory, expert factory: seed -> expert), defaulting to the toolkit's tasks and
    scripted experts built with keyword arguments ``options``; a given ``expert`` object serves every
    episode."""
    if env_fn is not None and expert is not None:
        return env_id, env_fn, lambda _seed: expert
    pkg = _load_env_package(env_id)
    if hasattr(pkg, "resolve_task"):  # short names ("reach_around") -> the gymnasium id
        env_id = pkg.resolve_task(env_id)
    env_fn = env_fn or (lambda: pkg.make_env(env_id))
    if expert is not None:
        return env_id, env_fn, lambda _seed: expert
    return env_id, env_fn, lambda seed: pkg.make_expert(env_id, seed=seed, **options)


def _make_env(env_id: str, env_fn: Callable[[], Any]) -> Any:
    try:
        return env_fn()
    except ImportError as err:  # an optional dependency of the task (its message names the extra)
        raise MissingExtraError(f"{env_id}: {str(err).strip().splitlines()[0]}") from err


class _Perturbation:
    """DART-style execution noise of one episode: ``clean + N(0, (dart_noise * half-range)^2)``, clipped to
    the action space."""

    def __init__(self, space: Any, dart_noise: float, seed: int) -> None:
        low = np.asarray(getattr(space, "low", -np.inf), dtype=np.float64)
        high = np.asarray(getattr(space, "high", np.inf), dtype=np.float64)
        bounded = np.isfinite(low) & np.isfinite(high)
        self.low, self.high = low, high
        self.std = dart_noise * np.where(bounded, (high - low) / 2, 1.0)
        self.rng = np.random.default_rng([seed, 0xDA27])

    def __call__(self, action: np.ndarray) -> np.ndarray:
        clean = np.asarray(action, dtype=np.float64)
        noisy = clean + self.std * self.rng.standard_normal(clean.shape)
        return np.clip(noisy, self.low, self.high).astype(np.asarray(action).dtype)


@dataclass(frozen=True)
class _EpisodeRules:
    """What every episode of one collection shares; picklable, so it travels to the worker processes."""

    env_id: str
    limit: int  # step limit per episode
    info_keys: tuple[str, ...]
    dart_noise: float = 0.0
    hold_steps: int = 0
    expert_options: tuple[tuple[str, Any], ...] = ()  # keyword arguments of the task's make_expert
    policy_steps: tuple[int, int] = (0, 0)  # policy steps before the expert takes over, drawn in [lo, hi]

    def perturbation(self, space: Any, ep_seed: int) -> _Perturbation | None:
        return _Perturbation(space, self.dart_noise, ep_seed) if self.dart_noise > 0 else None


def _policy_prefix(
    env: Any, policy: Any, rules: _EpisodeRules, ep_seed: int, obs: Any, info: dict
) -> tuple[Any, dict, int, bool]:
    """The policy's steps before the takeover: (observation, info, steps taken, whether the episode ended)."""
    lo, hi = rules.policy_steps
    steps = min(int(np.random.default_rng([ep_seed, 0x7A4E]).integers(lo, hi + 1)), rules.limit)
    policy.reset(ep_seed)
    for taken in range(1, steps + 1):
        obs, _, terminated, truncated, info = env.step(policy.act(obs))
        if terminated or truncated:
            return obs, info, taken, True
    return obs, info, steps, False


def _run_episode(
    env: Any, expert: Any, rules: _EpisodeRules, index: int, ep_seed: int, state: dict, policy: Any = None
) -> tuple[dict[str, np.ndarray] | None, bool, float]:
    """One expert episode: (arrays (T, ...) of obs, action and stored info keys, success, max score).
    With DART noise the env executes the perturbed action while the clean action is recorded; with
    ``hold_steps`` the episode records that many steps past its first success; with a ``policy`` the
    policy acts first and the expert's part is recorded, None when the policy ended the episode (module
    docstring).

    ``state["stored_info"]`` (the info keys stored, decided on the first episode) is filled here.
    """
    env_id, info_keys, hold_steps = rules.env_id, rules.info_keys, rules.hold_steps
    perturb = rules.perturbation(env.action_space, ep_seed)
    obs, info = env.reset(seed=ep_seed)
    taken = 0
    if policy is not None:
        obs, info, taken, ended = _policy_prefix(env, policy, rules, ep_seed, obs, info)
        if ended:
            return None, False, -np.inf
    expert.reset(env)
    first = state.get("stored_info") is None
    obs_names = list(obs) if isinstance(obs, Mapping) else ["obs"]
    if first:
        state["obs_keys"] = obs_names
        state["stored_info"] = [k for k in info_keys if k in info and np.ndim(info[k]) >= 1 and k not in obs_names]
    stored: list[str] = state["stored_info"]
    rows: dict[str, list[np.ndarray]] = {**{k: [] for k in obs_names}, "action": [], **{k: [] for k in stored}}
    success, score = False, -np.inf
    held: int | None = None  # steps recorded since the first success (hold_steps > 0 only)
    for _ in range(rules.limit - taken):
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
        obs, reward, terminated, truncated, info = env.step(action if perturb is None else perturb(action))
        if first:  # warn once about keys that only step() reports
            first = False
            late = [k for k in info_keys if k not in stored and k not in obs_names and np.ndim(info.get(k)) >= 1]
            if late:
                warnings.warn(f"{env_id}: info keys {late} come from step() but not reset(); not stored", stacklevel=3)
        success = success or bool(info.get("success", False))
        score = max(score, float(info.get("score", reward)))
        if hold_steps > 0 and success:
            held = 0 if held is None else held + 1
            if held >= hold_steps or truncated or (terminated and not info.get("success", False)):
                break
            continue
        if terminated or truncated:
            break
    episode = {k: np.stack(v) for k, v in rows.items()}
    for k, v in episode.items():
        if v.dtype == np.float64:
            episode[k] = v.astype(np.float32)
    return episode, success, score


# -- parallel collection: each worker process holds one env and makes the built-in expert per episode ----
_WORKER: dict[str, Any] = {}


def _worker_init(env_id: str) -> None:
    pkg = _load_env_package(env_id)
    _WORKER.update(pkg=pkg, env=_make_env(env_id, lambda: pkg.make_env(env_id)), state={})


def _worker_episode(job: tuple[_EpisodeRules, int, int]) -> tuple[Any, ...]:
    rules, index, ep_seed = job
    env, state = _WORKER["env"], _WORKER["state"]
    expert = _WORKER["pkg"].make_expert(rules.env_id, seed=ep_seed, **dict(rules.expert_options))
    episode, success, score = _run_episode(env, expert, rules, index, ep_seed, state)
    return episode, success, score, state["stored_info"]


def _episodes(
    env: Any,
    make_expert: Callable[[int], Any],
    rules: _EpisodeRules,
    episodes: int,
    seed: int,
    state: dict,
    workers: int,
    policy: Any = None,
) -> Iterator[tuple[dict[str, np.ndarray] | None, bool, float]]:
    """The episodes in index order: run here one by one, or by ``workers`` spawned processes."""
    if workers <= 1:
        for i in range(episodes):
            yield _run_episode(env, make_expert(seed + i), rules, i, seed + i, state, policy)
        return
    jobs = [(rules, i, seed + i) for i in range(episodes)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(rules.env_id,)) as pool:
        for episode, success, score, stored in pool.map(_worker_episode, jobs):
            state.setdefault("stored_info", stored)
            yield episode, success, score


def step_range(value: Any, name: str) -> tuple[int, int]:
    """``value`` as ``(lo, hi)``, two integers with ``0 <= lo <= hi``; a one-line ``UserError`` naming ``name``
    otherwise (``policy_steps`` here, ``takeover_steps`` on the command line)."""
    pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
    if not (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        and 0 <= pair[0] <= pair[1]
    ):
        raise UserError(f"{name}={pair!r} is invalid; give [lo, hi] with 0 <= lo <= hi")
    return int(pair[0]), int(pair[1])


def _open_included(include: str | os.PathLike[str] | None) -> ReplayBuffer | None:
    if include is None:
        return None
    path = Path(include)
    if not path.exists():
        raise UserError(f"include={path} does not exist")
    try:
        return ReplayBuffer.open(path)
    except (DatasetError, OSError) as err:  # a bad layout or an unreadable file: an input error
        raise UserError(f"include={path}: not a readable store ({str(err).strip().splitlines()[0]})") from err


def _copy_included(included: ReplayBuffer | None, writer: Any) -> tuple[list[int], list[bool]]:
    """Copy every episode of ``included`` into ``writer``; the (seed, success) it records for them (-1 and
    True where it records none)."""
    if included is None:
        return [], []
    n = included.n_episodes
    seeds = list(included.attrs.get("episode_seeds") or [])
    success = list(included.attrs.get("episode_success") or [])
    for episode in included.episodes():
        writer.add_episode(episode)
    seeds = [int(s) for s in seeds] if len(seeds) == n else [-1] * n
    return seeds, [bool(s) for s in success] if len(success) == n else [True] * n


def _remove_leftovers(out_path: Path) -> None:
    removed = remove_stale_temps(out_path.parent, out_path.name)
    if removed:
        names = ", ".join(p.name for p in removed)
        warnings.warn(f"{out_path}: removed leftovers of a killed collection: {names}", stacklevel=3)


def _check_arguments(
    episodes: int,
    max_steps: int | None,
    dart_noise: float,
    workers: int,
    hold_steps: int,
    policy: Any,
    policy_steps: Any,
    env_fn: Callable[[], Any] | None,
    expert: Any,
    expert_options: Mapping[str, Any] | None,
) -> tuple[tuple[int, int], dict[str, Any]]:
    """One-line ``UserError`` for a bad argument of :func:`collect_demonstrations`, before any env is made;
    returns the policy's step range ((0, 0) without a policy) and the expert options as a dict."""
    if episodes < 1:
        raise UserError(f"episodes={episodes} must be >= 1")
    if max_steps is not None and max_steps < 1:
        raise UserError(f"max_steps={max_steps} must be >= 1 or None")
    if isinstance(dart_noise, bool) or not (isinstance(dart_noise, (int, float)) and 0.0 <= dart_noise <= 1.0):
        raise UserError(f"dart_noise={dart_noise!r} must be a number in [0, 1] (a fraction of the action half-range)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers={workers!r} must be an integer >= 1")
    if isinstance(hold_steps, bool) or not isinstance(hold_steps, int) or hold_steps < 0:
        raise UserError(f"hold_steps={hold_steps!r} must be an integer >= 0 (steps recorded after success)")
    steps = (0, 0)
    if policy is not None:
        steps = step_range(policy_steps, "policy_steps")
        if workers > 1:
            raise UserError(f"workers={workers}: collecting with a policy in control first needs workers=1")
    if workers > 1 and (env_fn is not None or expert is not None):
        raise UserError(
            f"workers={workers} needs the task's built-in env and expert; pass env_fn/expert with workers=1"
        )
    options = dict(expert_options or {})
    if options and expert is not None:
        raise UserError(f"expert_options={options} configure the built-in expert; pass them to your own expert")
    return steps, options


def _store_attrs(
    rules: _EpisodeRules, env: Any, expert: Any, seed: int, keep_failed: bool, policy: Any
) -> dict[str, Any]:
    """The store's attributes known before the first episode: task, expert, collection settings and the
    observation layout (``obs_keys``; ``image_keys`` for uint8 image entries of a dict observation)."""
    space = getattr(env, "observation_space", None)
    spaces = getattr(space, "spaces", None)
    attrs: dict[str, Any] = {
        "task": rules.env_id,
        "expert": str(getattr(expert, "name", type(expert).__name__)),
        "seed": int(seed),
        "obs_keys": list(spaces) if isinstance(spaces, Mapping) else ["obs"],  # a dict observation: key by key
        "action_key": "action",
        "max_steps": rules.limit,
        "keep_failed": bool(keep_failed),
        "dart_noise": rules.dart_noise,
        "hold_steps": int(rules.hold_steps),
        "expert_options": dict(rules.expert_options),
    }
    images = _image_keys(space)
    if images:
        attrs["image_keys"] = images
    if policy is not None:
        attrs["takeover"] = {
            "policy": str(getattr(policy, "name", type(policy).__name__)),
            "steps": list(rules.policy_steps),
        }
    return attrs


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
    dart_noise: float = 0.0,
    workers: int = 1,
    hold_steps: int = 0,
    expert_options: Mapping[str, Any] | None = None,
    policy: Any = None,
    policy_steps: tuple[int, int] = (0, 0),
    include: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Roll out the scripted expert of ``env_id`` and write its episodes to ``out_path``.

    Args:
        env_id: gymnasium id (``immix/...``) or a short task name of ``diffpolicy_immix_envs``; the
            id is recorded in the store's attributes as ``task``.
        out_path: destination store (``*.zarr`` directory or ``*.zip``). Leftovers of a killed collection
            to the same path (``<name>.tmp-<pid>-<n>``, ``<name>.old-<pid>``) are removed with a warning.
        episodes: episodes to attempt.
        seed: episode ``i`` is reset with ``seed + i``, and the built-in expert is made for it with
            ``make_expert(env_id, seed=seed + i)`` (so the store does not depend on ``workers``).
        max_steps: step limit per episode (default: the env's ``spec.max_episode_steps``).
        keep_failed: also store episodes that never reported ``info["success"]``.
        env_fn: builds the env (default ``diffpolicy_immix_envs.make_env(env_id)``).
        expert: object with ``name``, ``reset(env)``, ``act(env, obs) -> action`` (default
            ``diffpolicy_immix_envs.make_expert(env_id, seed=seed)``).
        info_keys: array-valued ``info`` entries to store beside ``obs`` and ``action``.
        chunk_steps: time steps per zarr chunk (default about 1 MiB per chunk).
        overwrite: replace an existing store at ``out_path`` once the new one is complete.
        progress: show a tqdm bar with the running success rate.
        dart_noise: execution noise (module docstring): standard deviation as a fraction of each action
            dimension's half-range; the clean expert action is recorded. 0 disables it. Episode ``i``'s
            noise comes from a generator seeded with ``seed + i``.
        workers: processes that run episodes in parallel (spawned; each holds one env); the store is the
            same for any number. More than 1 needs the built-in env and expert (no ``env_fn``/``expert``).
        hold_steps: steps recorded after an episode's first success, the expert still acting (module
            docstring); 0 ends the episode where the env does.
        expert_options: keyword arguments for the built-in expert (``make_expert(env_id, seed=...,
            **expert_options)``), e.g. ``{"jitter": False}`` for the push planners; recorded in the store.
        policy: acts before the expert takes over (module docstring): an object with ``name``,
            ``reset(seed)`` (called per episode with its seed) and ``act(obs) -> action``. Needs
            ``workers=1``.
        policy_steps: ``(lo, hi)``: the policy acts for a number of steps drawn uniformly from
            ``lo..hi`` (inclusive) per episode, then the expert takes over.
        include: an existing store whose episodes are copied into the new store first (the same keys);
            ``episodes`` counts only the new ones.

    Returns:
        ``{"path", "episodes_attempted", "episodes_succeeded", "episodes_kept", "success_rate",
        "mean_score", "steps" (stored), "steps_total" (simulated), "mean_episode_length" (stored),
        "seconds", "steps_per_s" (simulated steps per second, expert included)}``.

    Raises:
        UserError: a bad argument, or no episode was kept (nothing is written).
        MissingExtraError: the task needs an optional dependency that is not installed.
    """
    policy_steps, options = _check_arguments(
        episodes, max_steps, dart_noise, workers, hold_steps, policy, policy_steps, env_fn, expert, expert_options
    )
    included = _open_included(include)
    env_id, env_fn, make_expert = _resolve_expert(env_id, env_fn, expert, options)
    try:
        expert = make_expert(seed)  # names the store's expert; checks the options before any episode
    except TypeError as err:
        if not options:
            raise
        raise UserError(f"{env_id}: expert_options={options} rejected by its expert: {err}") from err
    env = _make_env(env_id, env_fn)
    _remove_leftovers(Path(out_path))
    try:
        limit = max_steps or getattr(getattr(env, "spec", None), "max_episode_steps", None)
        if not limit:
            raise UserError(f"{env_id}: the env has no step limit (spec.max_episode_steps); pass max_steps")
        rules = _EpisodeRules(
            env_id,
            int(limit),
            tuple(info_keys),
            float(dart_noise),
            hold_steps,
            tuple(sorted(options.items())),
            policy_steps,
        )
        attrs = _store_attrs(rules, env, expert, seed, keep_failed, policy)
        images = attrs.get("image_keys", [])
        if images and chunk_steps is None:
            chunk_steps = {k: IMAGE_CHUNK_STEPS for k in images}
        tally, state = _Tally(), {}
        t0 = time.perf_counter()
        with ReplayBuffer.create_writer(out_path, attrs, chunk_steps=chunk_steps, overwrite=overwrite) as writer:
            included_seeds, included_success = _copy_included(included, writer)
            bar = tqdm(
                _episodes(env, make_expert, rules, episodes, seed, state, workers, policy),
                total=episodes,
                desc=f"collect {env_id}" + (f" ({workers} workers)" if workers > 1 else ""),
                unit="ep",
                disable=not progress,
            )
            for i, (episode, success, score) in enumerate(bar):
                if tally.record(episode, success, score, seed + i, keep_failed):
                    writer.add_episode(episode)
                bar.set_postfix(success=f"{tally.succeeded / (i + 1):.2f}", kept=len(tally.kept_seeds))
            bar.close()
            seconds = time.perf_counter() - t0
            if not tally.kept_seeds and not included_seeds:
                raise UserError(
                    f"{env_id}: 0 of {episodes} episodes succeeded (seeds {seed}..{seed + episodes - 1}); "
                    f"nothing written to {out_path} (pass keep_failed=True to store failures)"
                )
            writer.update_attrs(
                {
                    **tally.summary(),
                    "episode_seeds": included_seeds + tally.kept_seeds,
                    "episode_success": included_success + tally.kept_success,
                    "info_keys": state.get("stored_info") or [],
                    **tally.shapes,
                    "collect_seconds": round(seconds, 3),
                    **({"included": {"path": str(include), "episodes": len(included_seeds)}} if included else {}),
                    **({"episodes_ended_by_policy": tally.policy_ended} if policy is not None else {}),
                }
            )
    finally:
        env.close()
        if included is not None:
            included.close()
    return {
        "path": str(out_path),
        **tally.summary(),
        "steps": tally.steps_kept,
        "steps_total": tally.steps_total,
        "mean_episode_length": tally.steps_kept / max(len(tally.kept_seeds), 1),
        "episodes_included": len(included_seeds),
        "episodes_ended_by_policy": tally.policy_ended,
        "seconds": seconds,
        "steps_per_s": tally.steps_total / max(seconds, 1e-9),
    }
