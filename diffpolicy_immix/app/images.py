"""Image generator runs: the image data set, the model and its sample-quality evaluator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffpolicy_immix.errors import MissingInputError, UserError

from .config import make_objective, require

__all__ = ["ImageRunEvaluator", "build_image_model", "check_image_task", "image_metric", "open_image_train_set"]

ROOT_DATASETS = ("mnist", "cifar10", "folder")
"""Image data sets read from a local folder given by ``task.root``."""


def check_image_task(task: dict[str, Any]) -> None:
    """``task.root`` must name an existing folder for the data sets read from disk."""
    dataset = str(require(task, "dataset", "task"))
    if dataset not in ROOT_DATASETS:
        return
    root = task.get("root")
    if root in (None, "", "???"):
        raise UserError(f"task.dataset={dataset} reads local files: set task.root=<folder>")
    path = Path(str(root))
    if not path.exists():
        raise MissingInputError(f"task.root={root} does not exist")
    if not path.is_dir():
        raise UserError(f"task.root={root} is not a folder")


def open_image_train_set(task: dict[str, Any]) -> Any:
    """The training split of the task's image data set."""
    from diffpolicy_immix.imagegen import make_image_dataset

    check_image_task(task)
    opts = dict(task.get("dataset_options") or {})
    return make_image_dataset(
        str(task["dataset"]), split="train", root=task.get("root"), image_size=task.get("image_size"), **opts
    )


def build_image_model(cfg: dict[str, Any]) -> nn.Module:
    """The image model of a run: a preset of ``ImageModelConfig`` plus ``task.model_overrides`` (completed
    by the run with the data's channels, size and classes, so checkpoints rebuild alone); its label-dropout
    stream is seeded from the run's ``seed``."""
    from diffpolicy_immix.imagegen import ImageDiffusionModel, ImageModelConfig

    task = cfg["task"]
    overrides = dict(task.get("model_overrides") or {})
    model_cfg = ImageModelConfig.from_preset(str(task.get("model", "digits")), **overrides)
    objective = make_objective(cfg["objective"], cfg["assign"], task)
    return ImageDiffusionModel(model_cfg, objective, label_seed=int(cfg.get("seed", 0)))


def image_metric(task: dict[str, Any]) -> Any:
    """The task's classifier Fréchet distance (the classifier is trained once and cached)."""
    from diffpolicy_immix.imagegen import ClassifierFD

    check_image_task(task)
    return ClassifierFD.from_dataset(
        str(task["dataset"]),
        root=task.get("root"),
        image_size=task.get("image_size"),
        **dict(task.get("dataset_options") or {}),
    )


class ImageRunEvaluator:
    """Samples ``n`` images from the (EMA) model with a fixed seed and scores them (classifier FD, class
    accuracy); the trainer's ``evaluate_fn``. The grid of each evaluation is written to
    ``<grid_dir>/step<step>.png``."""

    def __init__(
        self, metric: Any, n: int, guidance_scale: float | None, seed: int, grid_dir: Path | None = None
    ) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"task.eval.n_samples={n!r} is invalid; it must be an integer >= 1")
        self.metric, self.n, self.guidance_scale, self.seed, self.grid_dir = metric, n, guidance_scale, seed, grid_dir

    def __call__(self, model: nn.Module, *, step: int, final: bool) -> dict[str, float]:
        from diffpolicy_immix.imagegen import sample_and_score

        device = next(model.parameters()).device
        grid = self.grid_dir / f"step{step:07d}.png" if self.grid_dir is not None else None
        return sample_and_score(
            model,
            self.n,
            self.metric,
            guidance_scale=self.guidance_scale,
            generator=torch.Generator(device=device).manual_seed(self.seed),
            grid_path=grid,
        )


def image_parts(cfg: dict[str, Any], out_dir: Path | None) -> tuple[nn.Module, Any, ImageRunEvaluator | None]:
    """(model, train set, evaluator or None) of an image run; completes ``task.model_overrides``."""
    task = cfg["task"]
    train = open_image_train_set(task)
    channels, height, _ = train.image_shape
    overrides = dict(task.get("model_overrides") or {})
    overrides.setdefault("in_channels", channels)
    overrides.setdefault("image_size", height)
    overrides.setdefault("num_classes", train.num_classes if task.get("conditional", True) else None)
    task["model_overrides"] = overrides
    model = build_image_model(cfg)
    ev = task.get("eval") or {}
    evaluate = None
    if int(ev.get("n_samples", 0) or 0) > 0:
        evaluate = ImageRunEvaluator(
            image_metric(task),
            n=int(ev["n_samples"]),
            guidance_scale=ev.get("guidance_scale"),
            seed=int(cfg["seed"]),
            grid_dir=(out_dir / "samples") if out_dir is not None else None,
        )
    return model, train, evaluate
