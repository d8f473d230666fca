"""Runs built from a composed configuration: data, model, evaluation callback and the shared trainer.

The configuration is a plain dict (Hydra's composed ``dpi_train.yaml`` turned into a container), with the
groups ``task``, ``policy``, ``image_model``, ``assign``, ``objective``, ``train`` and the top-level keys
``seed``, ``out_dir``, ``resume``. The same dict is saved in every checkpoint, so a checkpoint rebuilds
its model without the original command line.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import make_assigner

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .trainer import Trainer, seed_everything

__all__ = [
    "assign_label",
    "build_image_model",
    "build_run",
    "default_out_dir",
    "ensure_demonstrations",
    "image_metric",
    "load_model",
    "make_objective",
    "policy_evaluator",
    "run_training",
    "train_config",
]

TASK_KINDS = ("policy", "image")


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


def make_objective(objective: dict[str, Any], assign: dict[str, Any], task: dict[str, Any]) -> DiffusionObjective:
    """The objective of a run, with its assigner (the one source of training noise). Steps left null in
    the objective config take the task's defaults (``num_train_timesteps``, ``num_inference_steps``)."""
    options = {k: v for k, v in assign.items() if k != "name"}
    assigner = make_assigner(str(assign.get("name", "none")), **options)
    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    unknown = sorted(set(objective) - fields)
    if unknown:
        raise ValueError(f"objective: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    values = dict(objective)
    for key, fallback in (("num_train_timesteps", 100), ("num_inference_steps", 10)):
        if values.get(key) is None:
            values[key] = int(task.get(key) or fallback)
    return DiffusionObjective(ObjectiveConfig(**values), assigner)


def ensure_demonstrations(task: dict[str, Any], progress: bool = True) -> Path:
    """The task's dataset path; collects the scripted expert's demonstrations first when it is missing."""
    path = Path(str(task["dataset"]))
    if path.exists():
        return path
    if "env_id" not in task or "demos" not in task:
        raise FileNotFoundError(f"dataset {path} does not exist and task {task.get('name')!r} has no expert to make it")
    from diffpolicy_immix.data import collect_demonstrations

    demos = task["demos"]
    print(f"[{task['name']}] {path} is missing: collecting {demos['episodes']} expert demonstrations")
    summary = collect_demonstrations(
        str(task["env_id"]), path, episodes=int(demos["episodes"]), seed=int(demos["seed"]), progress=progress
    )
    print(
        f"[{task['name']}] expert success {100 * summary['success_rate']:.1f}%, "
        f"{summary['episodes_kept']} episodes -> {path}"
    )
    return path


# -- policies ---------------------------------------------------------------------------------------


def _policy_config(cfg: dict[str, Any]) -> Any:
    from diffpolicy_immix.policy import PolicyConfig

    task = cfg["task"]
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    net = {k: v for k, v in cfg["policy"].items() if k != "name"}
    unknown = sorted(set(net) - fields)
    if unknown:
        raise ValueError(f"policy: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    shape = {k: int(task[k]) for k in ("horizon", "n_obs_steps", "n_action_steps")}
    return PolicyConfig(**shape, **net)


def _policy_datasets(cfg: dict[str, Any]) -> tuple[Any, Any]:
    from diffpolicy_immix.data import PolicyDataset

    task = cfg["task"]
    path = ensure_demonstrations(task)
    kwargs = dict(
        obs_keys=list(task["obs_keys"]),
        action_key=str(task.get("action_key", "action")),
        horizon=int(task["horizon"]),
        n_obs_steps=int(task["n_obs_steps"]),
        n_action_steps=int(task["n_action_steps"]),
        val_ratio=float(task.get("val_ratio", 0.0)),
        seed=int(task.get("split_seed", 42)),
        max_train_episodes=task.get("max_train_episodes"),
    )
    train = PolicyDataset(path, **kwargs)
    val = train.get_validation_dataset() if kwargs["val_ratio"] > 0 else None
    return train, val


def _build_policy(cfg: dict[str, Any], obs_dim: int, action_dim: int, normalizer: Any) -> nn.Module:
    from diffpolicy_immix.policy import DiffusionPolicy

    objective = make_objective(cfg["objective"], cfg["assign"], cfg["task"])
    return DiffusionPolicy(_policy_config(cfg), obs_dim, action_dim, normalizer, objective)


def policy_evaluator(cfg: dict[str, Any], out_dir: Path | None, trainer_ref: list[Trainer]) -> Callable[..., dict]:
    """Rollouts of the EMA policy on the task's test seeds (Diffusion Policy's protocol)."""
    from diffpolicy_immix.evaluation import evaluate_policy

    task = cfg["task"]
    ev = task.get("eval", {})

    def evaluate(model: nn.Module) -> dict[str, float]:
        step = trainer_ref[0].step if trainer_ref else 0
        n_videos = int(ev.get("n_videos", 0))
        metrics = evaluate_policy(
            model,
            str(task["env_id"]),
            n_episodes=int(ev.get("episodes", 50)),
            seed_offset=int(ev.get("seed_offset", 100000)),
            n_envs=int(ev.get("n_envs", 10)),
            vector_mode=str(ev.get("vector_mode", "sync")),
            max_steps=ev.get("max_steps"),
            video_dir=(out_dir / "videos" / f"step{step:07d}") if (out_dir and n_videos) else None,
            n_videos=n_videos,
            device=next(model.parameters()).device,
            generator=torch.Generator(device=next(model.parameters()).device).manual_seed(int(cfg["seed"])),
            progress=False,
        )
        metrics["score"] = metrics["mean_max_reward"]
        return metrics

    return evaluate


# -- images -----------------------------------------------------------------------------------------


def _image_train_set(task: dict[str, Any]) -> Any:
    from diffpolicy_immix.imagegen import make_image_dataset

    opts = dict(task.get("dataset_options") or {})
    return make_image_dataset(
        str(task["dataset"]), split="train", root=task.get("root"), image_size=task.get("image_size"), **opts
    )


def build_image_model(cfg: dict[str, Any]) -> nn.Module:
    """The image model of a run: a preset of ``ImageModelConfig`` plus ``task.model_overrides`` (which
    ``build_run`` completes with the data's channels, size and classes, so checkpoints rebuild alone)."""
    from diffpolicy_immix.imagegen import ImageDiffusionModel, ImageModelConfig

    task = cfg["task"]
    overrides = dict(task.get("model_overrides") or {})
    model_cfg = ImageModelConfig.from_preset(str(task.get("model", "digits")), **overrides)
    objective = make_objective(cfg["objective"], cfg["assign"], task)
    return ImageDiffusionModel(model_cfg, objective)


def image_metric(task: dict[str, Any]) -> Any:
    """The task's classifier Fréchet distance (the classifier is trained once and cached)."""
    from diffpolicy_immix.imagegen import ClassifierFD

    return ClassifierFD.from_dataset(
        str(task["dataset"]),
        root=task.get("root"),
        image_size=task.get("image_size"),
        **dict(task.get("dataset_options") or {}),
    )


def _image_parts(cfg: dict[str, Any], out_dir: Path | None) -> tuple[Any, ...]:
    from diffpolicy_immix.imagegen import ImageEvaluator

    task = cfg["task"]
    train = _image_train_set(task)
    channels, height, _ = train.image_shape
    overrides = task.setdefault("model_overrides", {}) or {}
    overrides.setdefault("in_channels", channels)
    overrides.setdefault("image_size", height)
    overrides.setdefault("num_classes", train.num_classes if task.get("conditional", True) else None)
    task["model_overrides"] = overrides
    model = build_image_model(cfg)
    ev = task.get("eval", {})
    evaluate = None
    if int(ev.get("n_samples", 0)) > 0:
        metric = image_metric(task)
        evaluate = ImageEvaluator(
            metric,
            n=int(ev["n_samples"]),
            guidance_scale=ev.get("guidance_scale"),
            seed=int(cfg["seed"]),
            grid_dir=(out_dir / "samples") if out_dir is not None else None,
        )
    return model, train, None, evaluate


# -- runs -------------------------------------------------------------------------------------------


def build_run(cfg: dict[str, Any], out_dir: Path | None = None) -> tuple[nn.Module, Any, Any, Callable | None, list]:
    """(model, train_dataset, val_dataset, evaluate_fn, trainer_ref) for a run configuration.

    ``trainer_ref`` is a list the caller fills with the trainer, so the evaluation callback can name its
    outputs after the current step.
    """
    kind = cfg["task"].get("kind", "policy")
    if kind not in TASK_KINDS:
        raise ValueError(f"task.kind={kind!r} is invalid; choose one of {TASK_KINDS}")
    seed_everything(int(cfg["seed"]))  # fixes the initial weights
    trainer_ref: list[Trainer] = []
    if kind == "policy":
        train_ds, val_ds = _policy_datasets(cfg)
        model = _build_policy(cfg, train_ds.obs_dim, train_ds.action_dim, train_ds.get_normalizer())
        evaluate = policy_evaluator(cfg, out_dir, trainer_ref) if cfg["task"].get("eval", {}).get("episodes") else None
        return model, train_ds, val_ds, evaluate, trainer_ref
    model, train_ds, val_ds, evaluate = _image_parts(cfg, out_dir)
    return model, train_ds, val_ds, evaluate, trainer_ref


def train_config(cfg: dict[str, Any]) -> TrainConfig:
    values = copy.deepcopy(cfg["train"])
    values.pop("name", None)
    values["seed"] = int(cfg["seed"])
    return TrainConfig.from_dict(values)


def run_training(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) a run; returns the final metrics (train loss, last evaluation, wall time)."""
    out_dir = Path(cfg["out_dir"]) if cfg.get("out_dir") else default_out_dir(cfg)
    tcfg = train_config(cfg)  # validate before any data or model work
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    model, train_ds, val_ds, evaluate, trainer_ref = build_run(cfg, out_dir)
    full = dict(cfg, out_dir=str(out_dir))
    trainer = Trainer(
        model,
        train_ds,
        tcfg,
        out_dir,
        evaluate_fn=evaluate,
        val_dataset=val_ds,
        full_config=full,
        resume=bool(cfg.get("resume", False)),
    )
    trainer_ref.append(trainer)
    try:
        final = trainer.train()
    finally:
        trainer.close()
    final["out_dir"] = str(out_dir)
    return final


def load_model(
    checkpoint: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a checkpoint alone (its saved configuration), EMA weights by default.

    Returns:
        (model in eval mode on ``device``, the run's configuration dict)
    """
    import yaml

    ckpt = load_checkpoint(checkpoint)
    cfg = yaml.safe_load(ckpt.get("config_yaml") or "null")
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise ValueError(f"{checkpoint}: the checkpoint holds no run configuration (key 'config_yaml')")
    kind = cfg["task"].get("kind", "policy")
    state = ckpt["ema"]["model"] if (use_ema and ckpt.get("ema")) else ckpt["model"]
    if kind == "policy":
        from diffpolicy_immix.data import LinearNormalizer

        obs_dim, action_dim = _policy_dims(state, checkpoint)
        model = _build_policy(cfg, obs_dim, action_dim, LinearNormalizer())
    else:
        model = build_image_model(cfg)
    model.load_state_dict(state)
    if not use_ema and ckpt.get("ema") is None:
        warnings.warn(f"{checkpoint} has no EMA weights; using the raw model", stacklevel=2)
    return model.to(device).eval(), cfg


def _policy_dims(state: dict[str, torch.Tensor], checkpoint: str | Path) -> tuple[int, int]:
    try:
        return int(state["normalizer.params.obs.scale"].shape[0]), int(state["normalizer.params.action.scale"].shape[0])
    except KeyError as err:
        raise ValueError(f"{checkpoint}: no normalizer for {err.args[0]!r} in the model weights") from None
