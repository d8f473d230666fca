"""Reading a composed run configuration: labels, output folders, the training and objective parts.

The configuration is a plain dict (Hydra's composed ``dpi_train.yaml`` turned into a container) with the
groups ``task``, ``policy``, ``assign``, ``objective``, ``train`` and the top-level keys ``seed``,
``out_dir``, ``resume``, ``threads``. Every check here raises :class:`~diffpolicy_immix.errors.UserError`
naming the key and the value.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.errors import UserError
from diffpolicy_immix.immiscible import make_assigner
from diffpolicy_immix.training import TrainConfig

__all__ = [
    "SAMPLING_KEYS",
    "TASK_KINDS",
    "apply_sampling",
    "assign_label",
    "check_sampling",
    "default_out_dir",
    "make_objective",
    "require",
    "resume_target",
    "sampling_key",
    "train_config",
]

TASK_KINDS = ("policy", "image")

SAMPLING_KEYS = {
    "objective.sampler": "sampler",
    "objective.num_inference_steps": "steps",
    "objective.timestep_spacing": "spacing",
    "objective.clip_sample": "clip_sample",
    "objective.clip_sample_range": "clip_sample_range",
    "objective.init_noise_scale": "init_noise_scale",
    "task.eval.guidance_scale": "guidance_scale",
    "policy.candidates": "candidates",
}
"""Run-configuration keys that change only how a trained model draws samples (never its training or its
weights), each with a short name that may stand for it and that labels a setting."""


def require(table: dict[str, Any], key: str, owner: str) -> Any:
    """``table[key]``, or a ``UserError`` naming ``owner.key`` when it is missing or null."""
    value = table.get(key) if isinstance(table, dict) else None
    if value is None:
        raise UserError(f"{owner}.{key} is missing; set {owner}.{key}=<value>")
    return value


def assign_label(assign: dict[str, Any]) -> str:
    """A short name of an assigner configuration for run directories: ``none``, ``lsa``, ``knn-k2``."""
    name = str(assign.get("name", "none"))
    if name == "knn":
        return f"knn-k{assign.get('k', 4)}"
    if name == "sinkhorn":
        return f"sinkhorn-reg{assign.get('reg', 0.05):g}"
    return name


def default_out_dir(cfg: dict[str, Any]) -> Path:
    """``runs/<task>/<assigner>[-<objective>][-s<data_scale>]/seed<seed>``."""
    label = assign_label(cfg["assign"])
    objective = cfg.get("objective", {})
    if objective.get("kind", "ddpm") != "ddpm":
        label += f"-{objective['kind']}"
    if float(objective.get("data_scale", 1.0)) != 1.0:
        label += f"-s{float(objective['data_scale']):g}"
    return Path("runs") / str(cfg["task"]["name"]) / label / f"seed{cfg['seed']}"


def train_config(cfg: dict[str, Any]) -> TrainConfig:
    """The ``train`` group as a validated ``TrainConfig`` (its ``seed`` is the run's)."""
    values = copy.deepcopy(cfg["train"])
    values.pop("name", None)
    values["seed"] = int(cfg["seed"])
    return TrainConfig.from_dict(values)


def resume_target(value: Any) -> bool | Path:
    """``resume``: false, true (``out_dir/checkpoints/latest.pt``) or the path of a checkpoint."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str | Path) and str(value).strip():
        path = Path(str(value))
        if not path.is_file():
            raise UserError(f"resume={value} is not a file; pass true, false or the path of a checkpoint (latest.pt)")
        return path
    raise UserError(f"resume={value!r} is invalid; pass true, false or the path of a checkpoint")


def make_objective(objective: dict[str, Any], assign: dict[str, Any], task: dict[str, Any]) -> DiffusionObjective:
    """The objective of a run, with its assigner (the one source of training noise). Steps left null in
    the objective config take the task's defaults (``num_train_timesteps``, ``num_inference_steps``)."""
    options = {k: v for k, v in assign.items() if k != "name"}
    assigner = make_assigner(str(assign.get("name", "none")), **options)
    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    unknown = sorted(set(objective) - fields)
    if unknown:
        raise UserError(f"objective: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    values = dict(objective)
    for key, fallback in (("num_train_timesteps", 100), ("num_inference_steps", 10)):
        if values.get(key) is None:
            values[key] = int(task.get(key) or fallback)
    return DiffusionObjective(ObjectiveConfig(**values), assigner)


def sampling_key(name: str) -> str:
    """The full key of a sampling setting named by its key or short name (``steps`` ->
    ``objective.num_inference_steps``).

    Raises:
        UserError: ``name`` is not in :data:`SAMPLING_KEYS` (it would change training, or nothing).
    """
    if name in SAMPLING_KEYS:
        return name
    for key, short in SAMPLING_KEYS.items():
        if name == short:
            return key
    raise UserError(
        f"{name!r} is not a sampling setting (only keys that change how a trained model samples, not its "
        f"training, can vary here); valid: {', '.join(SAMPLING_KEYS)}"
    )


def apply_sampling(cfg: dict[str, Any], sampling: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of a run configuration with sampling settings replaced.

    Args:
        sampling: key or short name -> value, e.g. ``{"objective.num_inference_steps": 20, "sampler": "ddpm"}``.

    Raises:
        UserError: a key that is not a sampling setting.
    """
    out = copy.deepcopy(cfg)
    for name, value in (sampling or {}).items():
        *parents, leaf = sampling_key(str(name)).split(".")
        table = out
        for part in parents:
            if table.get(part) is None:  # e.g. a task without an eval section
                table[part] = {}
            table = table[part]
        table[leaf] = value
    return out


def check_sampling(cfg: dict[str, Any]) -> None:
    """Check the sampling settings of a run configuration (after :func:`apply_sampling`).

    Raises:
        UserError: a value the objective refuses (e.g. ``sampler=ddpm`` for flow matching), a negative
            guidance scale, or a guidance scale on a policy task.
    """
    task = cfg["task"]
    guidance = (task.get("eval") or {}).get("guidance_scale")
    if task.get("kind", "policy") == "policy":
        if "guidance_scale" in (task.get("eval") or {}):
            raise UserError(
                f"task.eval.guidance_scale applies to image tasks; task {task.get('name')!r} is a policy task"
            )
    elif guidance is not None and (
        isinstance(guidance, bool) or not isinstance(guidance, int | float) or not guidance >= 0
    ):
        raise UserError(f"task.eval.guidance_scale={guidance!r} is invalid; it must be a number >= 0")
    try:
        make_objective(cfg["objective"], {"name": "none"}, task)
    except (ValueError, TypeError) as err:
        raise UserError(str(err).strip().splitlines()[0]) from None
