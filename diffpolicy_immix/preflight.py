"""Checks of a policy task's environment against its dataset, run before any training.

```python
from diffpolicy_immix.preflight import preflight
preflight(task)              # dataset path, env id, wrappers, success spec (no data read)
preflight(task, train_ds)    # also observation/action dims and the action range vs the data
```

``dpi-train`` runs both before any training (the first before demonstrations are collected, the second
right after the datasets are opened); ``dpi-eval`` runs :func:`check_policy_env` against the checkpoint's
dimensions. Every failure is one line (:class:`~diffpolicy_immix.errors.UserError`, a ``ValueError``;
:class:`~diffpolicy_immix.errors.MissingInputError`, a ``FileNotFoundError``, for a missing dataset;
:class:`~diffpolicy_immix.errors.MissingExtraError` for an env whose optional dependency is missing) naming
both sides; an action range that exceeds the env's bounds, or a success info key the env does not report
after a reset and one step, is a ``UserWarning``. docs/tasks.md and docs/reliability.md list each message.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from diffpolicy_immix.errors import MissingExtraError, MissingInputError, UserError
from diffpolicy_immix.evaluation.envspec import EnvSpec, make_env, reports_success, resolve

__all__ = [
    "check_dataset_path",
    "check_policy_env",
    "check_spaces",
    "check_train_choice",
    "dataset_dims",
    "open_env",
    "preflight",
]


def _has_builtin_expert(env_id: str) -> bool:
    try:
        import diffpolicy_immix_envs as E
    except ModuleNotFoundError:
        return False
    return env_id in E.TASK_IDS.values() or env_id in E.TASK_IDS


def check_dataset_path(task: Mapping[str, Any]) -> Path:
    """The task's dataset path; MissingInputError (a FileNotFoundError) when it is missing and no built-in
    expert can make it (a task whose env is one of the toolkit's ``immix/`` tasks and that has ``demos`` is
    collected)."""
    if task.get("dataset") in (None, ""):
        raise UserError(f"task {task.get('name', '?')!r} has no dataset (set task.dataset=PATH)")
    path = Path(os.path.expanduser(str(task["dataset"])))
    if path.exists():
        return path
    env_id = str(task.get("env_id") or "")
    if task.get("demos") and _has_builtin_expert(env_id):
        return path
    if not env_id:
        name = task.get("name", "?")
        raise MissingInputError(f"dataset {path} does not exist (task {name!r} has no env_id to collect it)")
    raise MissingInputError(
        f"dataset {path} does not exist (task {task.get('name', '?')!r}: no built-in expert collects demonstrations "
        f"for env {env_id!r})"
    )


def dataset_dims(task: Mapping[str, Any], dataset: Any) -> tuple[int, int, np.ndarray, np.ndarray, str]:
    """(obs dim Do, action dim Da, action min (Da,), action max (Da,), label) of the dataset as the task
    reads it (``obs_keys`` slices concatenated, the action flattened).

    ``dataset`` is a :class:`~diffpolicy_immix.data.PolicyDataset` (its training episodes) or a store path.
    """
    from diffpolicy_immix.data import PolicyDataset

    if not isinstance(dataset, PolicyDataset):
        n_obs = int(task.get("n_obs_steps", 2))
        n_act = int(task.get("n_action_steps", 8))
        dataset = PolicyDataset(
            dataset,
            obs_keys=list(task["obs_keys"]),
            action_key=str(task.get("action_key", "action")),
            horizon=int(task.get("horizon", n_obs + n_act - 1)),
            n_obs_steps=n_obs,
            n_action_steps=n_act,
            image_keys=[str(k) for k in task.get("image_keys") or []] or None,
            validate=False,
        )
    actions = dataset.get_all_actions().numpy()  # (T_train, Da)
    if len(actions):
        lo, hi = actions.min(axis=0), actions.max(axis=0)
    else:
        lo = hi = np.zeros(dataset.action_dim, dtype=np.float32)
    return dataset.obs_dim, dataset.action_dim, lo, hi, str(dataset.path or "<memory>")


def _fmt(x: float) -> str:
    return f"{float(x):.4g}"


def _camera_obs_dim(env_id: str, space: gym.Space, obs_keys: list[str], image_keys: list[str]) -> int:
    """Low-dim observation width a camera task reads from the env's Dict observation (the ``obs_keys``
    that are not cameras, sliced); every key must be in the Dict."""
    from diffpolicy_immix.data.dataset import parse_obs_key

    if not isinstance(space, gym.spaces.Dict):
        raise UserError(
            f"env {env_id} observation space {space} is not a Dict; task.image_keys {image_keys} need dict observations"
        )
    width = 0
    for spec in obs_keys:
        name, part = parse_obs_key(spec)
        if name not in space.spaces:
            raise UserError(
                f"env {env_id} observation has no key {name!r} (task.obs_keys {obs_keys}); "
                f"it has {sorted(space.spaces)}"
            )
        if name in image_keys:
            continue
        sub = space.spaces[name]
        n = int(np.prod(sub.shape)) if isinstance(sub, gym.spaces.Box) else 0
        width += len(range(n)[part])
    return width


def check_spaces(
    env_id: str,
    observation_space: gym.Space,
    action_space: gym.Space,
    obs_keys: list[str],
    action_key: str,
    dims: tuple[int, int, np.ndarray | None, np.ndarray | None, str],
    image_keys: list[str] | None = None,
    side: str = "dataset",
) -> None:
    """Raise when the env's observation/action dims differ from the dataset's; warn when the data's action
    range leaves the env's action bounds.

    Args:
        dims: (obs dim Do, action dim Da, action min (Da,) or None, action max (Da,) or None, label) of the
            other side (:func:`dataset_dims`, or a trained policy's dims without a range).
        image_keys: a camera task's image keys: the observation is a Dict and only its low-dim keys count
            toward Do.
        side: how the other side is named in messages (``"dataset"``, ``"checkpoint"``).
    """
    obs_dim, action_dim, lo, hi, label = dims
    wrap_hint = "add task.wrappers: [gymnasium.wrappers:FlattenObservation]"
    if image_keys:
        env_obs = _camera_obs_dim(env_id, observation_space, list(obs_keys), list(image_keys))
    else:
        if not isinstance(observation_space, gym.spaces.Box):
            raise UserError(f"env {env_id} observation space {observation_space} is not a Box; {wrap_hint}")
        if len(observation_space.shape) != 1:
            raise UserError(
                f"env {env_id} observation space has shape {observation_space.shape}, not a flat vector; {wrap_hint}"
            )
        env_obs = int(observation_space.shape[0])
    if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
        raise UserError(
            f"env {env_id} action space {action_space} is not a flat Box; diffusion policies need continuous actions"
        )
    env_act = int(action_space.shape[0])
    if env_obs != obs_dim:
        raise UserError(f"env {env_id} observation dim {env_obs} != {side} obs_keys {obs_keys} dim {obs_dim} ({label})")
    if env_act != action_dim:
        raise UserError(
            f"env {env_id} action dim {env_act} != {side} action key {action_key!r} dim {action_dim} ({label})"
        )
    if lo is None or hi is None:
        return
    low = np.broadcast_to(np.asarray(action_space.low, dtype=np.float64), (env_act,))
    high = np.broadcast_to(np.asarray(action_space.high, dtype=np.float64), (env_act,))
    below = lo < low - 1e-6 * np.maximum(1.0, np.abs(low))  # infinite bounds are never exceeded
    above = hi > high + 1e-6 * np.maximum(1.0, np.abs(high))
    bad = np.flatnonzero(below | above)
    if len(bad):
        i = int(bad[0])
        more = f" (and {len(bad) - 1} more dims)" if len(bad) > 1 else ""
        warnings.warn(
            f"dataset action {action_key!r} dim {i} range [{_fmt(lo[i])}, {_fmt(hi[i])}] exceeds env {env_id} action "
            f"bounds [{_fmt(low[i])}, {_fmt(high[i])}]{more} ({label}); the env may clip such actions",
            UserWarning,
            stacklevel=3,
        )


def _probe_success_key(spec: EnvSpec, env: gym.Env) -> None:
    """Warn when success is read from an info key the env does not report at reset or after one step."""
    if spec.success.kind != "info_key":
        return
    _, info = env.reset(seed=0)
    seen = reports_success(spec, info)
    if not seen:
        space = env.action_space
        action = space.low + 0.5 * (space.high - space.low) if isinstance(space, gym.spaces.Box) else space.sample()
        if isinstance(space, gym.spaces.Box):
            action = np.where(np.isfinite(action), action, 0.0).astype(space.dtype)
        _, _, _, _, info = env.step(action)
        seen = reports_success(spec, info)
    if not seen:
        warnings.warn(
            f"env {spec.env_id} does not report info[{spec.success.key!r}] at reset or after one step; success is "
            f"read from it (set task.success: an info key it reports, a reward threshold, terminated or none)",
            UserWarning,
            stacklevel=3,
        )


def open_env(spec: EnvSpec) -> gym.Env:
    """Build the spec's env once (resolving its id first), for the checks.

    Raises:
        UserError: the id does not resolve, or the env's constructor or a wrapper rejects its arguments.
        MissingExtraError: building it needs an optional dependency that is not installed.
    """
    resolve(spec)
    try:
        return make_env(spec)()
    except UserError:
        raise
    except ImportError as exc:  # e.g. PointMaze without gymnasium-robotics: the message names the extra
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingExtraError(f"task.env_id={spec.env_id}: {first}") from exc
    except Exception as exc:  # the user's env constructor or wrapper rejected its arguments
        text = " ".join(str(exc).split())
        raise UserError(
            f"env {spec.env_id}: building it with env_kwargs {dict(spec.env_kwargs)} and wrappers "
            f"{[w.target for w in spec.wrappers]} raised {type(exc).__name__}: {text}"
        ) from exc


def preflight(task: Mapping[str, Any], dataset: Any = None) -> None:
    """Check a policy task before training (image tasks pass through).

    Without ``dataset``: the dataset path exists (or a built-in expert will collect it), the env
    resolves and builds with its kwargs and wrappers, the success spec is valid (and its info key is
    reported). With ``dataset`` (a PolicyDataset or a store path) also: observation and action dims
    after ``obs_keys`` slicing match the env's spaces, and the data's action range lies inside the
    env's bounds (a warning otherwise).

    Raises:
        UserError / MissingInputError / MissingExtraError: one line naming the field, the env and the dataset.
    """
    if task.get("kind", "policy") != "policy":
        return
    if dataset is None:
        check_dataset_path(task)
    spec = EnvSpec.from_task(task)
    env = open_env(spec)
    try:
        if dataset is not None:
            check_spaces(
                spec.env_id,
                env.observation_space,
                env.action_space,
                [str(k) for k in task["obs_keys"]],
                str(task.get("action_key", "action")),
                dataset_dims(task, dataset),
                image_keys=[str(k) for k in task.get("image_keys") or []],
            )
        _probe_success_key(spec, env)
    finally:
        env.close()


def check_policy_env(task: Mapping[str, Any], obs_dim: int, action_dim: int, label: str) -> EnvSpec:
    """``dpi-eval``'s check of the (possibly overridden) task env against a trained policy's dimensions.

    Args:
        task: the checkpoint's task with the evaluation's overrides.
        obs_dim, action_dim: Do and Da of the policy (its normalizer's widths).
        label: the checkpoint, named in messages.

    Returns:
        The validated :class:`EnvSpec` to evaluate on.
    """
    spec = EnvSpec.from_task(task)
    env = open_env(spec)
    try:
        check_spaces(
            spec.env_id,
            env.observation_space,
            env.action_space,
            [str(k) for k in task.get("obs_keys") or []],
            str(task.get("action_key", "action")),
            (obs_dim, action_dim, None, None, label),
            image_keys=[str(k) for k in task.get("image_keys") or []],
            side="checkpoint",
        )
        _probe_success_key(spec, env)
    finally:
        env.close()
    return spec


def check_train_choice(choice: str | None, task_name: str, options: Iterable[str]) -> None:
    """``dpi-train``'s ``train`` group is optional (a task without ``train/<task>.yaml`` trains with
    ``train/default.yaml``), so Hydra drops a ``train=NAME`` that names no config; this raises instead.

    ``choice``: Hydra's runtime choice for ``train`` (``HydraConfig.get().runtime.choices["train"]``);
    ``options``: the ``train`` group's configs.
    """
    options = sorted(options)
    if choice is None or choice == task_name or choice in options:
        return
    raise UserError(f"train={choice}: no such training config (options: {', '.join(options)})")
