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
    "TASK_KINDS",
    "assign_label",
    "default_out_dir",
    "make_objective",
    "require",
    "resume_target",
    "train_config",
]

TASK_KINDS = ("policy", "image")


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
