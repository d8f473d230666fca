"""A training run from a composed configuration, and a trained model from a checkpoint alone.

    from diffpolicy_immix.app import run_training, load_model
    final = run_training(cfg)                       # cfg: the composed dpi_train.yaml as a dict
    model, cfg = load_model("runs/.../checkpoints/latest.pt")

Every input check (configuration values, data set paths and contents, optional dependencies) runs
before the first training step and raises :class:`~diffpolicy_immix.errors.UserError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from diffpolicy_immix.errors import UserError
from diffpolicy_immix.training import EvaluateFn, Trainer, load_checkpoint, load_weights, seed_everything

from .config import (
    TASK_KINDS,
    apply_sampling,
    check_sampling,
    default_out_dir,
    make_objective,
    resume_target,
    train_config,
)
from .images import build_image_model, image_parts
from .policy import (
    PolicyEvaluator,
    apply_task_overrides,
    build_policy,
    normalizer_mode,
    open_policy_datasets,
    policy_config,
)

__all__ = ["RunParts", "build_run", "load_model", "run_training"]


@dataclass
class RunParts:
    """What a run trains: the model, its data and its evaluation callback."""

    model: nn.Module
    train_dataset: Any
    val_dataset: Any = None
    evaluate: EvaluateFn | None = None


@contextmanager
def _input_errors(what: str) -> Iterator[None]:
    """Turn a ``ValueError`` raised while *building* a run from its configuration (the config dataclasses
    of the models, objectives and data sets raise it for bad values) into a ``UserError``; anything else
    passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(first) from err


def _task_kind(cfg: dict[str, Any]) -> str:
    kind = cfg["task"].get("kind", "policy")
    if kind not in TASK_KINDS:
        raise UserError(f"task.kind={kind!r} is invalid; choose one of {TASK_KINDS}")
    return kind


def build_run(cfg: dict[str, Any], out_dir: Path | None = None) -> RunParts:
    """Model, data sets and evaluation callback of a run configuration (initial weights seeded)."""
    kind = _task_kind(cfg)
    with _input_errors("run"):
        seed_everything(int(cfg["seed"]))  # fixes the initial weights
        if kind == "policy":
            mode = normalizer_mode(cfg)  # checked before any data is read
            evaluate = None
            if (cfg["task"].get("eval") or {}).get("episodes"):
                evaluate = PolicyEvaluator(cfg, out_dir)
            train_ds, val_ds = open_policy_datasets(cfg)  # runs the pre-flight checks (env vs data)
            pcfg = policy_config(cfg)  # validated before the normalizer reads the windows
            normalizer = train_ds.get_normalizer(mode=mode, action_origin=pcfg.action_origin)
            model = build_policy(cfg, train_ds.obs_dim, train_ds.action_dim, normalizer)
            return RunParts(model, train_ds, val_ds, evaluate)
        model, train_ds, evaluate = image_parts(cfg, out_dir)
        return RunParts(model, train_ds, None, evaluate)


def run_training(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) a run; returns the final metrics (train loss, last evaluation, wall times)."""
    out_dir = Path(cfg["out_dir"]) if cfg.get("out_dir") else default_out_dir(cfg)
    with _input_errors("train"):
        tcfg = train_config(cfg)  # validated before any data or model work
        # the objective and its assigner too: a bad option stops before demonstrations are collected
        make_objective(cfg.get("objective") or {}, cfg.get("assign") or {}, cfg["task"])
    resume = resume_target(cfg.get("resume", False))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    parts = build_run(cfg, out_dir)
    full = dict(cfg, out_dir=str(out_dir))
    trainer = Trainer(
        parts.model,
        parts.train_dataset,
        tcfg,
        out_dir,
        evaluate_fn=parts.evaluate,
        val_dataset=parts.val_dataset,
        full_config=full,
        resume=resume,
    )
    try:
        final = trainer.train()
    finally:
        trainer.close()
    final["out_dir"] = str(out_dir)
    return final


def _read_weights(path: Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, config YAML) of a ``latest.pt`` checkpoint or a weights-only ``.safetensors`` file."""
    if path.suffix == ".safetensors":
        state, meta = load_weights(path)
        if not use_ema and meta.get("weights") == "ema":
            raise UserError(f"{path} holds only the EMA weights; use ema=true, or the run's checkpoints/latest.pt")
        return state, meta.get("config_yaml", "")
    ckpt = load_checkpoint(path)
    if not use_ema:
        return ckpt["model"], ckpt.get("config_yaml") or ""
    if ckpt.get("ema") is None:
        warnings.warn(f"{path} has no EMA weights; using the raw model", stacklevel=3)
        return ckpt["model"], ckpt.get("config_yaml") or ""
    return ckpt["ema"]["model"], ckpt.get("config_yaml") or ""


def load_model(
    checkpoint: str | Path,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    task_overrides: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint alone (its saved configuration), EMA weights by default.

    Args:
        checkpoint: ``checkpoints/latest.pt`` (full training state) or a weights-only
            ``step=...-score=....safetensors`` file.
        use_ema: the averaged weights; when the checkpoint has none, the raw weights with a warning.
        task_overrides: for a policy, task fields replaced before the model is built (``dpi-eval``'s
            ``task.*``: env_id, env_kwargs, n_action_steps, ...; see :func:`apply_task_overrides`). The
            policy executes the overridden ``n_action_steps`` per predicted chunk.
        sampling: sampling settings replaced before the model is built (keys or short names of
            :data:`~diffpolicy_immix.app.config.SAMPLING_KEYS`, e.g. ``{"objective.sampler": "ddpm",
            "steps": 20}``). The model samples with the objective's settings; ``task.eval.guidance_scale``
            is only written into the returned configuration, for the caller's image evaluation.

    Returns:
        (model in eval mode on ``device``, the run's configuration dict with the overrides applied)
    """
    path = Path(checkpoint)
    state, config_yaml = _read_weights(path, use_ema)
    try:
        cfg = yaml.safe_load(config_yaml or "null")
    except yaml.YAMLError:
        cfg = None
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise UserError(f"{path}: the checkpoint holds no run configuration (key 'config_yaml')")
    kind = _task_kind(cfg)
    if kind == "policy" and task_overrides:
        cfg = dict(cfg, task=apply_task_overrides(cfg["task"], task_overrides, str(path)))
    if sampling:
        cfg = apply_sampling(cfg, sampling)
        check_sampling(cfg)
    with _input_errors("checkpoint"):
        if kind == "policy":
            from diffpolicy_immix.data import LinearNormalizer

            task = cfg["task"]
            cameras_only = bool(task.get("image_keys")) and set(task.get("obs_keys") or []) <= set(task["image_keys"])
            obs_dim, action_dim = _policy_dims(state, path, cameras_only)
            model = build_policy(cfg, obs_dim, action_dim, LinearNormalizer())
        else:
            model = build_image_model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: the weights do not fit the model its configuration describes ({first})") from err
    return model.to(device).eval(), cfg


def _policy_dims(state: dict[str, torch.Tensor], checkpoint: Path, cameras_only: bool) -> tuple[int, int]:
    """(low-dim observation size, action size) from the saved normalizer; a policy that observes cameras
    only has no low-dim normalizer (size 0)."""
    obs_key, action_key = "normalizer.params.obs.scale", "normalizer.params.action.scale"
    for key in (action_key,) if cameras_only else (obs_key, action_key):
        if key not in state:
            raise UserError(f"{checkpoint}: no normalizer for {key!r} in the model weights")
    obs_dim = int(state[obs_key].shape[0]) if obs_key in state else 0
    return obs_dim, int(state[action_key].shape[0])
