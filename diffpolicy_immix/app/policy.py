"""Diffusion policy runs: demonstrations, datasets, the policy and its rollout evaluator.

Evaluation settings live in ``task.eval`` (:class:`PolicyEvalConfig`). Rollouts are the expensive part of
a policy run, so evaluations *during* training use ``episodes_mid`` episodes and only the final
evaluation (at ``train.steps``) uses the full ``episodes``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffpolicy_immix.errors import MissingInputError, UserError

from .config import make_objective, require

__all__ = [
    "PolicyEvalConfig",
    "PolicyEvaluator",
    "TakeoverPolicy",
    "apply_task_overrides",
    "build_policy",
    "check_env",
    "ensure_demonstrations",
    "normalizer_mode",
    "open_policy_datasets",
    "policy_config",
    "unreadable_store_error",
]


@dataclass
class PolicyEvalConfig:
    """``task.eval`` of a policy task: how rollouts are run (Diffusion Policy's protocol: episode ``i``
    is reset with seed ``seed_offset + i``)."""

    episodes: int = 50
    """Episodes of the final evaluation (at ``train.steps``) and of ``dpi-eval``."""
    episodes_mid: int | None = 20
    """Episodes of the evaluations during training (null: ``episodes``; capped at ``episodes``)."""
    seed_offset: int = 100000
    """First test seed."""
    n_envs: int = 10
    """Environments stepped in lockstep."""
    vector_mode: str = "sync"
    """``sync`` (one process) or ``async`` (a process per environment)."""
    max_steps: int | None = None
    """Per-episode step cap (null: the environment's own limit)."""
    n_videos: int = 0
    """Episodes rendered to video at each evaluation (written under ``videos/step<step>/``)."""
    video_size: int = 384
    """Width and height of rendered videos, in pixels (independent of what the policy observes)."""

    def __post_init__(self) -> None:
        for name, low in (("episodes", 1), ("n_envs", 1), ("seed_offset", 0), ("n_videos", 0)):
            _check_int(name, getattr(self, name), low)
        for name in ("episodes_mid", "max_steps"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("video_size", self.video_size, 16)
        if self.video_size > 1024:
            raise UserError(f"task.eval.video_size={self.video_size!r} is invalid; it must be at most 1024")
        if self.vector_mode not in ("sync", "async"):
            raise UserError(f"task.eval.vector_mode={self.vector_mode!r} is invalid; choose 'sync' or 'async'")

    @classmethod
    def from_task(cls, task: dict[str, Any]) -> PolicyEvalConfig:
        """From ``task["eval"]``; unknown keys are errors."""
        values = dict(task.get("eval") or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"task.eval: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
        return cls(**values)

    def episodes_at(self, final: bool) -> int:
        """Episodes of an evaluation: ``episodes`` when final, else ``episodes_mid`` (capped)."""
        if final or self.episodes_mid is None:
            return self.episodes
        return min(self.episodes_mid, self.episodes)


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"task.eval.{name}={value!r} is invalid; it must be an integer >= {low}")


def policy_config(cfg: dict[str, Any]) -> Any:
    """``PolicyConfig`` from the ``policy`` group plus the task's horizon, n_obs_steps, n_action_steps,
    action_origin (and, for a camera task, its ``image_keys`` and the low-dim part of its ``obs_keys``)."""
    from diffpolicy_immix.policy import PolicyConfig

    task = cfg["task"]
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    net = {k: v for k, v in cfg["policy"].items() if k != "name"}
    unknown = sorted(set(net) - fields)
    if unknown:
        raise UserError(f"policy: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    shape: dict[str, Any] = {k: int(require(task, k, "task")) for k in ("horizon", "n_obs_steps", "n_action_steps")}
    origin = task.get("action_origin")
    if origin is not None:
        if not isinstance(origin, list | tuple):
            raise UserError(f"task.action_origin={origin!r} is invalid; it must be [start, stop] observation dims")
        shape["action_origin"] = tuple(origin)
    images = [str(k) for k in task.get("image_keys") or []]
    if images:
        lowdim = [str(k) for k in task.get("obs_keys") or [] if str(k) not in images]
        shape.update(image_keys=tuple(images), obs_keys=tuple(lowdim))
    return PolicyConfig(**shape, **net)


NORMALIZER_MODES = ("limits", "gaussian")


def normalizer_mode(cfg: dict[str, Any]) -> str | dict[str, str]:
    """The low-dim normalization of a policy task, ``task.normalizer``: ``limits`` (default: per-dimension
    min/max to [-1, 1]) or ``gaussian`` (z-score), for both keys or per key (``{action: gaussian}``).

    Raises:
        UserError: an unknown mode or key, or z-scored actions with the objective's clamp of the predicted
            chunk at +-1 (which would cut the chunk at one standard deviation).
    """
    value = cfg["task"].get("normalizer") or "limits"
    modes = dict(value) if isinstance(value, dict) else {"obs": value, "action": value}
    for key, mode in modes.items():
        if key not in ("obs", "action"):
            raise UserError(f"task.normalizer: unknown key {key!r}; valid keys: obs, action")
        if mode not in NORMALIZER_MODES:
            raise UserError(f"task.normalizer.{key}={mode!r} is invalid; choose one of {NORMALIZER_MODES}")
    objective = cfg.get("objective") or {}
    if modes.get("action", "limits") == "gaussian" and objective.get("clip_sample", True):
        clip = float(objective.get("clip_sample_range") or 1.0)
        if clip < 3:
            raise UserError(
                f"task.normalizer: z-scored actions with objective.clip_sample_range={clip:g} would cut every "
                "chunk at that many standard deviations; set objective.clip_sample_range=5 (or clip_sample=false)"
            )
    return modes if isinstance(value, dict) else str(value)


EVAL_TASK_OVERRIDES = (
    "env_id",
    "env_module",
    "env_kwargs",
    "wrappers",
    "success",
    "max_episode_steps",
    "n_action_steps",
)
"""The task fields ``dpi-eval`` may replace in a checkpoint's configuration."""


def apply_task_overrides(task: dict[str, Any], overrides: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """A copy of a checkpoint's ``task`` with an evaluation's overrides applied.

    Args:
        task: the task section of the checkpoint's configuration.
        overrides: keys of :data:`EVAL_TASK_OVERRIDES`; a null value keeps the checkpoint's, ``env_kwargs``
            is merged over the checkpoint's, every other value replaces it.
        source: the checkpoint, named in messages.

    Raises:
        UserError: an unknown key, or an ``n_action_steps`` the checkpoint's horizon cannot hold
            (``n_obs_steps + n_action_steps - 1 <= horizon``).
    """
    out = dict(task)
    for key, value in (overrides or {}).items():
        if key not in EVAL_TASK_OVERRIDES:
            raise UserError(f"task.{key} cannot be overridden at evaluation; valid: {', '.join(EVAL_TASK_OVERRIDES)}")
        if value is None or (key == "env_kwargs" and not value):
            continue
        if key == "env_kwargs":
            if not isinstance(value, dict):
                raise UserError(f"task.env_kwargs={value!r} must be a mapping of keyword arguments")
            out[key] = {**dict(task.get("env_kwargs") or {}), **value}
        else:
            out[key] = value
    n_act = out.get("n_action_steps")
    if overrides and overrides.get("n_action_steps") is not None:
        if isinstance(n_act, bool) or not isinstance(n_act, int) or n_act < 1:
            raise UserError(f"task.n_action_steps={n_act!r} is invalid; it must be an integer >= 1")
        n_obs, horizon = int(out.get("n_obs_steps", 2)), int(out.get("horizon", 16))
        if n_obs + n_act - 1 > horizon:
            raise UserError(
                f"task.n_action_steps={n_act} is too large for {source}: n_obs_steps + n_action_steps - 1 = "
                f"{n_obs} + {n_act} - 1 = {n_obs + n_act - 1} must be <= its horizon={horizon}"
            )
    return out


def build_policy(cfg: dict[str, Any], obs_dim: int, action_dim: int, normalizer: Any) -> nn.Module:
    """The run's ``DiffusionPolicy`` (its objective carries the configured assigner)."""
    from diffpolicy_immix.policy import DiffusionPolicy

    objective = make_objective(cfg["objective"], cfg["assign"], cfg["task"])
    return DiffusionPolicy(policy_config(cfg), obs_dim, action_dim, normalizer, objective)


def check_env(task: dict[str, Any]) -> None:
    """Build the task's environment once (its ``EnvSpec``: id, kwargs, wrappers), so a bad id or a missing
    optional dependency stops the run before training.

    Raises:
        MissingExtraError: the environment needs an extra that is not installed (the message names it).
        UserError: the id does not resolve, or the env rejects its kwargs.
    """
    from diffpolicy_immix.evaluation import EnvSpec
    from diffpolicy_immix.preflight import open_env

    open_env(EnvSpec.from_task(task)).close()


def ensure_demonstrations(task: dict[str, Any], progress: bool = True) -> Path:
    """The task's dataset path; collects the scripted expert's demonstrations first when it is missing
    (call :func:`~diffpolicy_immix.preflight.preflight` first: it refuses a missing path that no
    built-in expert can make)."""
    path = Path(os.path.expanduser(str(require(task, "dataset", "task"))))
    if path.exists():
        return path
    if "env_id" not in task or "demos" not in task:
        raise MissingInputError(
            f"task.dataset={path} does not exist and task {task.get('name')!r} has no scripted expert to make it"
        )
    from diffpolicy_immix.data import collect_demonstrations

    demos = task["demos"]
    print(f"[{task['name']}] {path} is missing: collecting {demos['episodes']} expert demonstrations")
    summary = collect_demonstrations(
        str(task["env_id"]),
        path,
        episodes=int(demos["episodes"]),
        seed=int(demos["seed"]),
        progress=progress,
        dart_noise=demos.get("dart_noise", 0.0),
        workers=demos.get("workers", 1),
        hold_steps=demos.get("hold_steps", 0),
        expert_options=demos.get("expert") or {},
    )
    print(
        f"[{task['name']}] expert success {100 * summary['success_rate']:.1f}%, "
        f"{summary['episodes_kept']} episodes -> {path}"
    )
    return path


class TakeoverPolicy:
    """A trained policy acting on one env before its expert takes over (``dpi-collect takeover=...``).

    ``reset(seed)`` clears the policy's observation and action queues and seeds its sampling noise with
    the episode's seed; ``act(obs)`` is one receding-horizon step (a chunk is predicted every
    ``n_action_steps`` calls), numpy in and out.

    Args:
        checkpoint: a policy run's ``checkpoints/latest.pt`` or weights-only ``.safetensors`` file.
        env_id: the task collected; the checkpoint must be a policy for it.
    """

    def __init__(self, checkpoint: str | Path, env_id: str, device: str | torch.device = "cpu") -> None:
        from .run import load_model

        path = Path(checkpoint)
        if not path.is_file():
            raise MissingInputError(f"takeover={path} does not exist")
        self.model, cfg = load_model(path, device=device)
        task = cfg["task"]
        if task.get("kind", "policy") != "policy":
            raise UserError(f"takeover={path} holds a {task.get('kind')} model, not a policy")
        if str(task.get("env_id")) != str(env_id):
            raise UserError(f"takeover={path} is a policy for {task.get('env_id')}, not for {env_id}")
        self.name = f"{path}"
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device)

    def reset(self, seed: int) -> None:
        self.model.reset()
        self._generator.manual_seed(int(seed))

    @torch.no_grad()
    def act(self, obs: Any) -> Any:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)  # (1, Do)
        return self.model.select_action(obs_t, generator=self._generator)[0].cpu().numpy()


def unreadable_store_error(path: str | Path, err: BaseException) -> UserError:
    """A one-line error for a store whose arrays cannot be read (e.g. a corrupt compressed chunk): it
    names the store, the first array that fails and the codec's message."""
    import zarr

    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = ""
    try:
        root = zarr.open_group(str(path), mode="r")
        for group in ("meta", "data"):
            if group not in root:
                continue
            for key, arr in root[group].arrays():
                try:
                    arr[...]
                except Exception as inner:  # noqa: BLE001 - any codec error marks the array
                    where = f"{group}/{key}: "
                    first = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
                    break
            if where:
                break
    except Exception:  # noqa: BLE001 - the store's layout itself is unreadable: report the first error
        pass
    return UserError(f"{path}: {where}unreadable data ({type(err).__name__}: {first}); re-collect or re-convert it")


def open_policy_datasets(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """(train, validation or None) ``PolicyDataset`` of the task (collecting demonstrations if missing).

    The pre-flight checks run around it, before any training: :func:`~diffpolicy_immix.preflight.preflight`
    of the task alone (dataset path, env id, kwargs, wrappers, success spec) before demonstrations are
    collected, and again with the training set (observation/action dims after ``obs_keys`` slicing, action
    range) once it is open. Each failure is a one-line ``UserError``.
    """
    from diffpolicy_immix.data import DatasetError, PolicyDataset
    from diffpolicy_immix.preflight import check_dataset_path, preflight

    task = cfg["task"]
    has_env = task.get("env_id") is not None  # a task without an env trains only (no evaluation)
    if has_env:
        preflight(task)
    else:
        check_dataset_path(task)
    path = ensure_demonstrations(task)
    kwargs = dict(
        obs_keys=list(require(task, "obs_keys", "task")),
        action_key=str(task.get("action_key", "action")),
        horizon=int(require(task, "horizon", "task")),
        n_obs_steps=int(require(task, "n_obs_steps", "task")),
        n_action_steps=int(require(task, "n_action_steps", "task")),
        val_ratio=float(task.get("val_ratio", 0.0)),
        seed=int(task.get("split_seed", 42)),
        max_train_episodes=task.get("max_train_episodes"),
        image_keys=[str(k) for k in task.get("image_keys") or []],
        image_cache_mb=float(task.get("image_cache_mb", 256)),
    )
    try:
        train = PolicyDataset(path, **kwargs)
    except DatasetError:
        raise
    except (RuntimeError, OSError) as err:  # a codec or file error while reading the arrays
        raise unreadable_store_error(path, err) from err
    if has_env:
        preflight(task, train)
    val = train.get_validation_dataset() if kwargs["val_ratio"] > 0 else None
    return train, val


class PolicyEvaluator:
    """Rollouts of the (EMA) policy on the task's test seeds; the trainer's ``evaluate_fn``.

    ``evaluator(model, step=s, final=f)`` runs ``episodes_at(f)`` episodes and returns the rollout
    metrics plus ``eval_episodes`` and ``score`` (= ``mean_max_reward``). Videos of the first
    ``n_videos`` episodes go to ``<out_dir>/videos/step<step>/`` at ``video_size`` pixels.
    """

    def __init__(self, cfg: dict[str, Any], out_dir: Path | None) -> None:
        from diffpolicy_immix.evaluation import EnvSpec

        require(cfg["task"], "env_id", "task")
        self.env = EnvSpec.from_task(cfg["task"])  # id, kwargs, wrappers, success spec, episode length
        self.settings = PolicyEvalConfig.from_task(cfg["task"])
        self.seed = int(cfg["seed"])
        self.out_dir = out_dir

    def __call__(self, model: nn.Module, *, step: int, final: bool) -> dict[str, float]:
        from diffpolicy_immix.evaluation import evaluate_policy

        ev = self.settings
        device = next(model.parameters()).device
        video_dir = None
        if self.out_dir is not None and ev.n_videos:
            video_dir = self.out_dir / "videos" / f"step{step:07d}"
        metrics = evaluate_policy(
            model,
            self.env,
            n_episodes=ev.episodes_at(final),
            seed_offset=ev.seed_offset,
            n_envs=ev.n_envs,
            vector_mode=ev.vector_mode,
            max_steps=ev.max_steps,
            video_dir=video_dir,
            n_videos=ev.n_videos if video_dir is not None else 0,
            video_size=ev.video_size,
            device=device,
            generator=torch.Generator(device=device).manual_seed(self.seed),
            progress=False,
        )
        metrics["eval_episodes"] = metrics.pop("n_episodes")
        metrics["score"] = metrics["mean_max_reward"]
        return metrics
