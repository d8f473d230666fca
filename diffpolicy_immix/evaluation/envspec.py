"""Which gymnasium environment a task evaluates on, and how success is read from it.

A task config names its environment with these fields (all but ``env_id`` optional)::

    env_id: Reacher-v5                # a registered id, or gymnasium's "module:id" form
    env_module: my_pkg.envs           # import first (a module, or a list) for packages that register on import
    env_kwargs: {reward_dist_weight: 1.0}
    wrappers:                         # applied in order, outermost last: env = Class(env, **kwargs)
      - my_pkg.wrappers:ReachSuccess
      - {target: gymnasium.wrappers:ClipAction}
    success: {kind: info_key, key: success}   # | {kind: reward_threshold, threshold: -0.01}
                                              # | {kind: terminated} | {kind: none}
    max_episode_steps: 50             # overrides the registered episode length

``EnvSpec.from_task(task)`` validates them (errors name the field), :func:`resolve` turns the id into
gymnasium's registration spec (importing the module first, as ``gymnasium.make`` does for
``"module:id"``), :func:`make_env` gives a picklable thunk for vector environments and
:func:`success_from_step` reads one step's success.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from diffpolicy_immix.errors import UserError

__all__ = [
    "SUCCESS_KINDS",
    "EnvSpec",
    "SuccessSpec",
    "WrapperSpec",
    "as_env_spec",
    "build_env",
    "import_object",
    "make_env",
    "reports_success",
    "resolve",
    "success_from_step",
]

SUCCESS_KINDS = ("info_key", "reward_threshold", "terminated", "none")
# The task config keys EnvSpec.from_task reads.
TASK_FIELDS = ("env_id", "env_module", "env_kwargs", "wrappers", "success", "max_episode_steps")


@dataclass(frozen=True)
class SuccessSpec:
    """How an episode's success is read from the environment's steps.

    - ``info_key``: ``bool(info[key])`` at some step (default ``key="success"``, what the toolkit's
      tasks report; gymnasium-robotics envs report ``"is_success"``);
    - ``reward_threshold``: ``reward >= threshold`` at some step;
    - ``terminated``: the episode ended with ``terminated=True`` (not by truncation);
    - ``none``: no success signal; success rate is always 0, mean max reward is what to compare.
    """

    kind: str = "info_key"
    key: str = "success"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SUCCESS_KINDS:
            raise UserError(f"task.success.kind={self.kind!r} must be one of {', '.join(SUCCESS_KINDS)}")
        if self.kind == "info_key" and (not isinstance(self.key, str) or not self.key):
            raise UserError(f"task.success.key={self.key!r} must be a non-empty string (the info key)")
        if self.kind == "reward_threshold":
            if self.threshold is None:
                raise UserError("task.success.threshold is required with task.success.kind='reward_threshold'")
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
                raise UserError(f"task.success.threshold={self.threshold!r} must be a number")
            if not math.isfinite(float(self.threshold)):
                raise UserError(f"task.success.threshold={self.threshold!r} must be finite")
            object.__setattr__(self, "threshold", float(self.threshold))

    @classmethod
    def from_config(cls, value: Any) -> SuccessSpec:
        """From ``None`` (the default), a kind string (``"terminated"``) or a mapping with ``kind``,
        ``key``, ``threshold``."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(kind=value)
        if not isinstance(value, Mapping):
            raise UserError(f"task.success={value!r} must be a mapping such as {{kind: info_key, key: success}}")
        unknown = sorted(set(value) - {"kind", "key", "threshold"})
        if unknown:
            raise UserError(f"task.success: unknown field {unknown[0]!r}; valid fields: kind, key, threshold")
        values = dict(value)
        if "kind" not in values:
            values["kind"] = "reward_threshold" if "threshold" in values else "info_key"
        return cls(**values)


@dataclass(frozen=True)
class WrapperSpec:
    """A wrapper applied as ``env = <target>(env, **kwargs)``; ``target`` is ``"pkg.module:Class"``."""

    target: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        module, _, name = str(self.target).partition(":")
        if not module or not name:
            raise UserError(f"task.wrappers: {self.target!r} must be an import path 'package.module:Class'")
        if not isinstance(self.kwargs, Mapping):
            raise UserError(f"task.wrappers: kwargs of {self.target!r} must be a mapping, got {self.kwargs!r}")
        object.__setattr__(self, "kwargs", dict(self.kwargs))


@dataclass(frozen=True)
class EnvSpec:
    """A task's evaluation environment (see the module docstring for the config fields)."""

    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    env_module: tuple[str, ...] = ()
    wrappers: tuple[WrapperSpec, ...] = ()
    success: SuccessSpec = field(default_factory=SuccessSpec)
    max_episode_steps: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id.strip():
            raise UserError(f"task.env_id={self.env_id!r} must be a gymnasium id such as 'Reacher-v5'")
        if self.env_kwargs is None:
            object.__setattr__(self, "env_kwargs", {})
        if not isinstance(self.env_kwargs, Mapping):
            raise UserError(f"task.env_kwargs={self.env_kwargs!r} must be a mapping of keyword arguments")
        object.__setattr__(self, "env_kwargs", dict(self.env_kwargs))
        modules = self.env_module
        if modules is None:
            modules = ()
        if isinstance(modules, str):
            modules = (modules,)
        if not all(isinstance(m, str) and m for m in modules):
            raise UserError(f"task.env_module={self.env_module!r} must be a module name or a list of them")
        object.__setattr__(self, "env_module", tuple(modules))
        object.__setattr__(self, "wrappers", tuple(self.wrappers or ()))
        steps = self.max_episode_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise UserError(f"task.max_episode_steps={steps!r} must be a positive integer or null")

    def __str__(self) -> str:
        return self.env_id

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> EnvSpec:
        """Validated spec from a task config (a dict or an OmegaConf node) with the keys of
        :data:`TASK_FIELDS`; ``env_id`` is required."""
        if "env_id" not in task or task["env_id"] is None:
            raise UserError(f"task {task.get('name', '?')!r} has no env_id (the gymnasium id to evaluate on)")
        wrappers = task.get("wrappers") or []
        if isinstance(wrappers, str | Mapping) or not isinstance(wrappers, Sequence):
            raise UserError(f"task.wrappers={wrappers!r} must be a list of 'package.module:Class' entries")
        specs = []
        for i, w in enumerate(wrappers):
            if isinstance(w, str):
                specs.append(WrapperSpec(w))
            elif isinstance(w, Mapping):
                unknown = sorted(set(w) - {"target", "kwargs"})
                if unknown or "target" not in w:
                    raise UserError(
                        f"task.wrappers[{i}]={dict(w)!r}: expected {{target: 'package.module:Class', kwargs: {{...}}}}"
                    )
                specs.append(WrapperSpec(str(w["target"]), w.get("kwargs") or {}))
            else:
                raise UserError(f"task.wrappers[{i}]={w!r} must be 'package.module:Class' or {{target, kwargs}}")
        modules = task.get("env_module")
        if modules is not None and not isinstance(modules, str):
            modules = tuple(modules)
        steps = task.get("max_episode_steps")
        return cls(
            env_id=str(task["env_id"]),
            env_kwargs=_plain(task.get("env_kwargs")) or {},
            env_module=modules or (),
            wrappers=tuple(specs),
            success=SuccessSpec.from_config(_plain(task.get("success"))),
            max_episode_steps=int(steps) if isinstance(steps, int | float) and not isinstance(steps, bool) else steps,
        )


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (other values unchanged)."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def as_env_spec(env: str | EnvSpec, env_kwargs: Mapping[str, Any] | None = None) -> EnvSpec:
    """An :class:`EnvSpec` from an id string or a spec; ``env_kwargs`` are merged over the spec's."""
    spec = env if isinstance(env, EnvSpec) else EnvSpec(env_id=str(env))
    if env_kwargs:
        spec = dataclasses.replace(spec, env_kwargs={**spec.env_kwargs, **env_kwargs})
    return spec


def _import_module(name: str, field_name: str, env_id: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UserError(
            f"{field_name}: cannot import module {name!r} for env {env_id!r} ({exc}); is its package installed?"
        ) from exc


def import_object(path: str, field_name: str = "task.wrappers") -> Any:
    """``"package.module:Name"`` -> the object (a one-line UserError naming the path when it is missing)."""
    module, _, name = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UserError(f"{field_name}: cannot import module {module!r} of {path!r} ({exc})") from exc
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{field_name}: module {module!r} has no attribute {name!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def _import_toolkit_envs() -> None:
    try:
        import diffpolicy_immix_envs  # noqa: F401  (registers the immix/ ids)
    except ModuleNotFoundError as exc:
        if exc.name != "diffpolicy_immix_envs":
            raise


def resolve(spec: EnvSpec | str) -> gym.envs.registration.EnvSpec:
    """Gymnasium's registration spec of ``spec.env_id``.

    Imports ``spec.env_module`` and, for ``"module:id"``, the module (as ``gymnasium.make`` does); the
    toolkit's ``immix/`` ids are registered on first need. ``spec.max_episode_steps`` replaces the
    registered episode length. A missing namespace, name or version raises a one-line UserError
    naming the id and what to import.
    """
    spec = as_env_spec(spec)
    for module in spec.env_module:
        _import_module(module, "task.env_module", spec.env_id)
    env_id = spec.env_id
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        _import_module(module, "task.env_id", spec.env_id)
    if env_id not in gym.registry:
        _import_toolkit_envs()
    try:
        found = gym.spec(env_id)
    except gym.error.NamespaceNotFound:
        ns = env_id.split("/", 1)[0]
        raise UserError(
            f"task.env_id={spec.env_id!r}: namespace {ns!r} is not registered; import the package that registers "
            f"it with env_id='<module>:{env_id}' or task.env_module=<module>"
        ) from None
    except gym.error.Error as exc:  # NameNotFound, VersionNotFound, DeprecatedEnv, ...
        text = " ".join(str(exc).split())
        raise UserError(f"task.env_id={spec.env_id!r}: {text}") from None
    if spec.max_episode_steps is not None:
        found = dataclasses.replace(found, max_episode_steps=spec.max_episode_steps)
    return found


def build_env(spec: EnvSpec, registered: gym.envs.registration.EnvSpec, render_mode: str | None = None) -> gym.Env:
    """``gym.make(registered, **spec.env_kwargs)`` (plus ``render_mode``), then ``spec.wrappers`` in order."""
    kwargs = dict(spec.env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    for module in spec.env_module:  # a worker process may need the module for the env's entry point
        _import_module(module, "task.env_module", spec.env_id)
    env = gym.make(registered, **kwargs)
    for w in spec.wrappers:
        env = import_object(w.target)(env, **w.kwargs)
    return env


def make_env(spec: EnvSpec | str, render_mode: str | None = None) -> Callable[[], gym.Env]:
    """A picklable thunk building the spec's environment (for ``gymnasium.vector`` envs).

    The id is resolved here, in the calling process, so ids registered at run time also work in
    ``spawn``/``forkserver`` workers.
    """
    spec = as_env_spec(spec)
    return functools.partial(build_env, spec, resolve(spec), render_mode)


def success_from_step(spec: EnvSpec | SuccessSpec, reward: float, terminated: bool, info: Mapping[str, Any]) -> bool:
    """Whether one step (its reward, ``terminated`` flag and ``info``) counts as success.

    An info key the env does not report reads as False; :func:`reports_success` tells whether it
    was reported.
    """
    s = spec.success if isinstance(spec, EnvSpec) else spec
    if s.kind == "info_key":
        return bool(info.get(s.key, False))
    if s.kind == "reward_threshold":
        return reward is not None and float(reward) >= float(s.threshold)  # type: ignore[arg-type]
    if s.kind == "terminated":
        return bool(terminated)
    return False


def reports_success(spec: EnvSpec | SuccessSpec, info: Mapping[str, Any]) -> bool:
    """False only when success is read from an info key that ``info`` lacks."""
    s = spec.success if isinstance(spec, EnvSpec) else spec
    return s.kind != "info_key" or s.key in info
