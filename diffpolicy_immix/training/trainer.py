"""The one trainer for every diffusion model of the toolkit (policies and image generators alike).

A model is any ``nn.Module`` with ``compute_loss(batch, generator=None, with_stats=False) -> (loss,
stats)`` whose ``forward`` does the same (so DDP can wrap it). The trainer owns the noise generator it
passes to the model, the data order, the optimizer, the EMA copy, the logs and the checkpoints:

    trainer = Trainer(model, dataset, TrainConfig(steps=2000), "runs/pusht", evaluate_fn=rollouts)
    final = trainer.train()        # {"step": 2000, "train_loss": ..., "score": ..., ...}

``rollouts(model, *, step, final) -> dict[str, float]`` is called with the step being evaluated and
whether it is the run's last evaluation (so a callback can evaluate cheaply during training and fully at
the end). The trainer imports nothing about policies, images, data sets or environments.

Reading order: construction (device, seeds, optimizer, resume), ``train`` (the loop), ``train_step``,
``log_metrics``, ``evaluate``, ``save_checkpoint``, ``close``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from diffpolicy_immix.errors import UserError
from diffpolicy_immix.utils.io import atomic_write, remove_stale_temps

from .batching import BatchStream, epoch_seed, sequential_batches, to_device
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    preserved_rng,
    restore_rng_state,
)
from .config import TrainConfig
from .distributed import (
    all_reduce_mean,
    barrier,
    broadcast_from_main,
    gather_to_main,
    init_distributed,
    local_assigner,
    shutdown_distributed,
)
from .ema import EMA
from .logger import CsvLog, TensorBoardLog

__all__ = [
    "SAFE_RESUME_CHANGES",
    "EvaluateFn",
    "Trainer",
    "config_changes",
    "lr_factor",
    "resolve_device",
    "seed_everything",
    "to_plain",
]

log = logging.getLogger(__name__)


class EvaluateFn(Protocol):
    """``evaluate_fn(model, *, step, final) -> dict[str, float]``: the evaluation callback.

    ``step`` is the optimizer step being evaluated; ``final`` is True for the run's last evaluation (at
    ``train.steps``). Its ``score`` (higher is better) ranks the top-k checkpoints.
    """

    def __call__(self, model: nn.Module, *, step: int, final: bool) -> dict[str, float]: ...


VAL_SEED_OFFSET = 1_000_003
"""The validation loss draws noise from a generator seeded with seed + this, the same at every evaluation."""

SAFE_RESUME_CHANGES: tuple[str, ...] = (
    "resume",
    "out_dir",
    "threads",
    "train.steps",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.keep_top_k",
    "task.eval.n_envs",
    "task.eval.vector_mode",
    "task.eval.n_videos",
    "task.eval.video_size",
)
"""Configuration keys a resumed run may change (dotted; a prefix ``a.b`` also covers ``a.b.c``): the budget
(``train.steps`` may grow), the logging/evaluation/checkpoint cadence and how evaluations are run. Any
other difference from the checkpoint's configuration is refused."""


# ---------------------------------------------------------------------------------------------- helpers


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate used by optimizer step ``step`` (0-based).

    Linear warm-up ``step / warmup_steps``, then constant 1 or a half cosine that reaches 0 at
    ``total_steps``.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but torch.cuda.is_available() is False; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch's, numpy's and Python's global RNGs (dropout, augmentation) from (seed, rank).

    The stream differs from the noise generator's (seed + rank), so dropout masks and training noise
    are not drawn from identical sequences. Call it before building the model to fix its initial weights.
    """
    value = epoch_seed(seed, rank, stream=7)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)  # noqa: NPY002 (the global state third-party code uses)
    random.seed(value)


def to_plain(obj: Any) -> Any:
    """Built-in types only (dict, list, str, int, float, bool, None), for YAML and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_changes(saved: dict[str, Any], current: dict[str, Any], allowed: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two run configurations, as ``key: old -> new``.

    Keys equal to or under an entry of ``allowed`` are left out; a key present on one side only reads
    ``(absent)`` on the other.
    """
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in [*a, *(k for k in b if k not in a)]:
        if any(key == p or key.startswith(p + ".") for p in allowed):
            continue
        old, new = a.get(key, "(absent)"), b.get(key, "(absent)")
        if old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


class _MetricWindow:
    """Sums of the per-step metrics since the last CSV row (kept in checkpoints so rows survive resume)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum: Tensor | float = 0.0  # a device tensor while accumulating: no host sync per step
        self.grad_norm_sum: Tensor | float = 0.0
        self.count = 0
        self.stats_sum: dict[str, float] = {}
        self.stats_count: dict[str, int] = {}

    def add(self, loss: Tensor, grad_norm: Tensor | None, stats: dict[str, float]) -> None:
        self.loss_sum = self.loss_sum + loss.double()
        if grad_norm is not None:
            self.grad_norm_sum = self.grad_norm_sum + grad_norm.double()
        self.count += 1
        for key, value in stats.items():
            self.stats_sum[key] = self.stats_sum.get(key, 0.0) + float(value)
            self.stats_count[key] = self.stats_count.get(key, 0) + 1

    def means(self, with_grad_norm: bool) -> dict[str, float]:
        """Per-key means; the trainer's own ``loss``/``grad_norm`` win over same-named model stats."""
        out = {k: self.stats_sum[k] / self.stats_count[k] for k in sorted(self.stats_sum)}
        out["loss"] = float(self.loss_sum) / self.count
        if with_grad_norm:
            out["grad_norm"] = float(self.grad_norm_sum) / self.count
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": float(self.loss_sum),
            "grad_norm_sum": float(self.grad_norm_sum),
            "count": self.count,
            "stats_sum": dict(self.stats_sum),
            "stats_count": dict(self.stats_count),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum = float(state["loss_sum"])
        self.grad_norm_sum = float(state["grad_norm_sum"])
        self.count = int(state["count"])
        self.stats_sum = dict(state["stats_sum"])
        self.stats_count = dict(state["stats_count"])


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains ``model`` on ``train_dataset`` and writes everything under ``out_dir``.

    Args:
        model: an ``nn.Module`` with ``compute_loss(batch, generator=None, with_stats=False)``; its
            ``forward`` must do the same. Its ``objective.assigner`` is used as built (an ``lsa`` assigner
            with ``process_group="auto"`` assigns over all ranks by itself).
        train_dataset: ``len()`` plus either ``get_batch(indices) -> dict[str, Tensor]`` or
            ``__getitem__`` returning dicts of tensors (collated by a DataLoader).
        cfg: the training configuration.
        out_dir: run directory (see docs/training.md for its layout).
        evaluate_fn: ``evaluate_fn(model) -> dict[str, float]``, called on rank 0 with the EMA model (the
            raw model when EMA is off); its ``score`` (higher is better) ranks top-k checkpoints.
        val_dataset: optional; its mean loss is logged as ``val_loss`` at each evaluation (and
            ``score = -val_loss`` when there is no ``evaluate_fn``).
        full_config: the whole run configuration (model, data, ...), saved to ``config.yaml`` and
            into every checkpoint.
        resume: False; True to continue from ``out_dir/checkpoints/latest.pt`` when it exists; or the
            path of a checkpoint to continue from (an error when it is missing or unreadable).
        allow_changes: dotted configuration keys that may differ from the checkpoint's configuration on
            resume (default ``SAFE_RESUME_CHANGES``); any other difference raises ``UserError`` listing
            the differing keys, before anything is written.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        cfg: TrainConfig,
        out_dir: str | Path,
        evaluate_fn: EvaluateFn | None = None,
        val_dataset: Any = None,
        full_config: dict[str, Any] | None = None,
        resume: bool | str | Path = False,
        allow_changes: tuple[str, ...] = SAFE_RESUME_CHANGES,
    ) -> None:
        if not callable(getattr(model, "compute_loss", None)):
            raise ValueError(f"model {type(model).__name__} has no compute_loss(batch, generator, with_stats) method")
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.evaluate_fn = evaluate_fn
        self.val_dataset = val_dataset
        self.full_config = to_plain(full_config) if full_config is not None else {"train": cfg.to_dict()}
        self.config_yaml = yaml.safe_dump(self.full_config, sort_keys=False)
        self.allow_changes = tuple(allow_changes)

        self.device = resolve_device(cfg.device)
        self.dist, self._owns_process_group = init_distributed(self.device.type == "cuda")
        if self.device.type == "cuda" and self.dist.is_distributed:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp, self.use_compile = self._accelerator_options()
        self.noise_seeds = [cfg.seed + r for r in range(self.dist.world_size)]
        seed_everything(cfg.seed, self.dist.rank)

        self.model = model.to(self.device)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema.enabled else None
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.lr_scheduler = LambdaLR(self.optimizer, self._lr_lambda())
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.noise_generator = torch.Generator(device=self.device).manual_seed(self.noise_seeds[self.dist.rank])
        self.batches = BatchStream(
            train_dataset,
            cfg.batch_size,
            cfg.seed,
            self.dist.rank,
            self.dist.world_size,
            cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.checkpoints = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_top_k)

        self.step = 0
        self.epoch = 0
        self.wall_time = 0.0  # seconds of this run so far: training plus evaluations, summed over resumes
        self.eval_time = 0.0  # the part of wall_time spent evaluating
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1
        self.last_train: dict[str, float] = {}
        self._window = _MetricWindow()
        self._saved_step = -1
        self._saved_eval_step = -1
        self._started: float | None = None
        self._closed = False
        resume_path = self._resume_path(resume)
        if resume_path is not None:
            self._restore(load_checkpoint(resume_path), resume_path)

        self.train_model = self._wrap_for_training(self.model)
        self._open_logs()

    # -- construction helpers ----------------------------------------------------------------------

    def _accelerator_options(self) -> tuple[str, bool]:
        amp, use_compile = self.cfg.amp, self.cfg.compile
        if self.device.type != "cuda" and amp == "fp16":
            warnings.warn(f"train.amp='fp16' needs CUDA; running on {self.device} in float32", stacklevel=3)
            amp = "none"
        return amp, use_compile

    def _lr_lambda(self) -> Callable[[int], float]:
        cfg = self.cfg

        def factor(step: int) -> float:
            return lr_factor(step, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, schedule=cfg.lr_schedule)

        return factor

    def _resume_path(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            path = self.checkpoints.latest_path
            if not path.is_file():
                warnings.warn(f"resume requested but {path} does not exist; starting from step 0", stacklevel=3)
                return None
            return path
        if not isinstance(resume, str | Path) or str(resume).strip() == "":
            raise UserError(f"resume={resume!r} is invalid; pass true, false or the path of a checkpoint")
        return Path(resume)

    def _wrap_for_training(self, model: nn.Module) -> nn.Module:
        wrapped: nn.Module = model
        if self.dist.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=device_ids)
        if self.use_compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _open_logs(self) -> None:
        self._pbar = None
        self._metrics_log = self._eval_log = None
        self._tb = None
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        with atomic_write(self.out_dir / "config.yaml") as f:
            f.write(self.config_yaml)
        self._metrics_log = CsvLog(
            self.out_dir / "metrics.csv",
            ("step", "epoch", "loss", "lr", "wall_time", "train_wall_s", "samples_per_s"),
        )
        self._eval_log = CsvLog(self.out_dir / "eval.csv", ("step", "epoch", "wall_time", "train_wall_s", "eval_s"))
        self._drop_outputs_after(self.step)
        self._tb = TensorBoardLog(self.out_dir / "tensorboard")
        log.info(
            "training on %s, world size %d, noise seeds %s, %d steps per epoch",
            self.device,
            self.dist.world_size,
            self.noise_seeds,
            self.batches.steps_per_epoch,
        )

    def _remove_leftovers(self) -> None:
        """Delete the temporary files of killed writes (their process is gone) and say so."""
        removed = remove_stale_temps(self.out_dir) + remove_stale_temps(self.checkpoints.directory)
        if removed:
            names = ", ".join(p.name for p in removed)
            warnings.warn(
                f"{self.out_dir}: removed {len(removed)} leftover temporary file(s) of a killed run: {names}",
                stacklevel=4,
            )

    def _drop_outputs_after(self, step: int) -> None:
        """Log rows and scored checkpoints past ``step`` belong to an abandoned continuation (a run killed
        after its last checkpoint) or, at step 0, to an earlier run in the same directory: drop them. An
        evaluation *at* ``step`` that the checkpoint does not record is dropped too (it is redone)."""
        assert self._metrics_log is not None and self._eval_log is not None
        if step == 0 and self.checkpoints.latest_path.exists():
            warnings.warn(
                f"{self.out_dir} already holds a run; starting over at step 0 (pass resume=True to continue it)",
                stacklevel=4,
            )
        evaluated = self.last_eval_step == step
        self._metrics_log.truncate_after(step)
        self._eval_log.truncate_after(step if evaluated else step - 1)
        for _, scored_step, path in self.checkpoints.ranked():
            if scored_step > step or (scored_step == step and not evaluated):
                path.unlink(missing_ok=True)

    # -- the loop ----------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Run until ``cfg.steps``; evaluate and checkpoint on the configured cadence and at the end.

        Returns:
            Final metrics: ``step``, ``epoch``, ``wall_time`` (training plus evaluations),
            ``train_wall_s`` (training alone), ``train_loss`` (last logged mean) and the last
            evaluation's metrics.
        """
        cfg = self.cfg
        ok = False
        try:
            self._pbar = tqdm(
                total=cfg.steps,
                initial=self.step,
                desc="train",
                dynamic_ncols=True,
                disable=not self.dist.is_main,
            )
            stream = self.batches.iterate(self.step)
            self._started = started = time.perf_counter() - self.wall_time
            self._last_row_time, self._last_row_step = time.perf_counter(), self.step
            self._last_row_eval = self.eval_time
            while self.step < cfg.steps:
                self.epoch, batch = next(stream)
                with_stats = cfg.diag_every > 0 and self.step % cfg.diag_every == 0
                lr = self.optimizer.param_groups[0]["lr"]
                loss, grad_norm, stats = self.train_step(batch, with_stats)
                self.step += 1
                self.wall_time = time.perf_counter() - started
                self._window.add(loss, grad_norm, stats)
                self._pbar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self.log_metrics(lr)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate(final=self.step == cfg.steps)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.last_eval_step != self.step and (self.evaluate_fn is not None or self.val_dataset is not None):
                self.evaluate(final=True)
            if self._saved_step != self.step or self._saved_eval_step != self.last_eval_step:
                self.save_checkpoint()  # the checkpoint records the final evaluation: a resume never redoes it
            ok = True
            return self.final_metrics()
        finally:
            self.close(clean=ok)

    def train_step(
        self, batch: dict[str, Any], with_stats: bool = False
    ) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        """One optimizer step on ``batch``.

        Returns:
            The loss (a detached scalar tensor, not synchronized), the gradient norm before clipping
            (None without clipping), and the model's stats (empty unless ``with_stats``).
        """
        self.train_model.train()
        batch = to_device(batch, self.device)
        with self._autocast():
            loss, stats = self.train_model(batch, generator=self.noise_generator, with_stats=with_stats)
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()
        grad_norm = None
        if self.cfg.grad_clip is not None:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach(), grad_norm, dict(stats or {})

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- logging -----------------------------------------------------------------------------------

    def log_metrics(self, lr: float) -> dict[str, float]:
        """Write one ``metrics.csv`` row with the means since the last row (averaged over ranks)."""
        means = all_reduce_mean(self._window.means(self.cfg.grad_clip is not None), self.device)
        self._window.reset()
        if not math.isfinite(means["loss"]):
            raise FloatingPointError(
                f"training loss is {means['loss']} at step {self.step}; lower train.lr or set train.grad_clip"
            )
        now = time.perf_counter()
        steps = self.step - self._last_row_step
        busy = now - self._last_row_time - (self.eval_time - self._last_row_eval)  # evaluations excluded
        samples_per_s = steps * self.cfg.batch_size * self.dist.world_size / max(busy, 1e-9)
        self._last_row_time, self._last_row_step, self._last_row_eval = now, self.step, self.eval_time
        base = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": means["loss"],
            "lr": lr,
            "wall_time": self.wall_time,
            "train_wall_s": self.wall_time - self.eval_time,
            "samples_per_s": samples_per_s,
        }
        row = {**base, **{k: v for k, v in means.items() if k not in base}}
        self.last_train = row
        if self.dist.is_main:
            assert self._metrics_log is not None and self._tb is not None
            self._metrics_log.write(row)
            self._tb.write("train", row, self.step)
            if self._pbar is not None:
                self._pbar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        return row

    # -- evaluation --------------------------------------------------------------------------------

    def evaluate(self, final: bool | None = None) -> dict[str, float]:
        """Evaluate the EMA model on rank 0 (others wait), log to ``eval.csv``, keep top-k checkpoints.

        Args:
            final: passed to ``evaluate_fn``; default: whether ``step`` has reached ``train.steps``.

        Global random states are restored afterwards, so evaluating never changes the training run. The
        row's ``eval_s`` is this evaluation's duration, ``wall_time`` the run's time at its end
        (evaluations included) and ``train_wall_s`` the training time alone.
        """
        final = self.step >= self.cfg.steps if final is None else bool(final)
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            model = self.ema.model if self.ema is not None else self.model
            was_training = model.training
            with preserved_rng(self.device.type == "cuda"), local_assigner(model):
                model.eval()
                try:
                    if self.val_dataset is not None:
                        metrics["val_loss"] = self.validation_loss(model)
                    if self.evaluate_fn is not None:
                        metrics.update(self._checked_eval(self.evaluate_fn(model, step=self.step, final=final)))
                finally:
                    model.train(was_training)
            if self.evaluate_fn is None and "val_loss" in metrics:
                metrics["score"] = -metrics["val_loss"]
            spent = time.perf_counter() - started
            wall = (time.perf_counter() - self._started) if self._started is not None else self.wall_time + spent
            row = {
                "step": self.step,
                "epoch": self.epoch,
                "wall_time": wall,
                "train_wall_s": wall - self.eval_time - spent,
                "eval_s": spent,
                **metrics,
            }
            assert self._eval_log is not None and self._tb is not None
            self._eval_log.write(row)
            self._tb.write("eval", metrics, self.step)
            if "score" in metrics and self._pbar is not None:
                self._pbar.write(f"step {self.step}: score {metrics['score']:.4f}")
        metrics = broadcast_from_main(metrics)
        self.last_eval, self.last_eval_step = metrics, self.step
        if "score" in metrics and self.cfg.keep_top_k > 0 and self.dist.is_main:
            weights = (self.ema.model if self.ema is not None else self.model).state_dict()
            meta = {"weights": "ema" if self.ema is not None else "model", "config_yaml": self.config_yaml}
            self.checkpoints.save_scored(weights, meta, self.step, metrics["score"])
        self.eval_time += time.perf_counter() - started
        if self._started is not None:
            self.wall_time = time.perf_counter() - self._started
        return metrics

    @staticmethod
    def _checked_eval(result: Any) -> dict[str, float]:
        if not isinstance(result, dict):
            raise TypeError(f"evaluate_fn must return a dict[str, float], got {type(result).__name__}")
        out = {}
        for key, value in result.items():
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"evaluate_fn returned {key}={value!r}, which is not a number") from None
        return out

    @torch.no_grad()
    def validation_loss(self, model: nn.Module) -> float:
        """Mean loss of ``model`` over the validation set, with noise from a fixed seed."""
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + VAL_SEED_OFFSET)
        total, count = 0.0, 0
        for batch in sequential_batches(self.val_dataset, self.cfg.batch_size):
            batch = to_device(batch, self.device)
            size = _batch_size(batch)
            with self._autocast():
                loss, _ = model.compute_loss(batch, generator=generator)
            total += float(loss) * size
            count += size
        return total / max(count, 1)

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any] | None:
        """Everything needed to continue exactly (on rank 0; None elsewhere). Every rank must call it:
        each contributes its random states."""
        rng_all = gather_to_main(capture_rng_state(self.noise_generator, self.device.type == "cuda"))
        if not self.dist.is_main:
            return None
        return {
            "format_version": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "step": self.step,
            "epoch": self.batches.position(self.step)[0],
            "wall_time": self.wall_time,
            "eval_time": self.eval_time,
            "world_size": self.dist.world_size,
            "noise_seeds": list(self.noise_seeds),
            "rng": rng_all,
            "log_state": self._window.state_dict(),
            "last_eval": dict(self.last_eval),
            "last_eval_step": self.last_eval_step,
            "train_config": self.cfg.to_dict(),
            "config_yaml": self.config_yaml,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/latest.pt`` atomically (rank 0). Every rank must call it."""
        state = self.checkpoint_state()
        path = self.checkpoints.save_latest(state) if state is not None else None
        self._saved_step, self._saved_eval_step = self.step, self.last_eval_step
        barrier()
        return path

    def _check_resume_config(self, state: dict[str, Any], path: Path) -> None:
        """Refuse a continuation whose configuration differs from the checkpoint's beyond ``allow_changes``."""
        try:
            saved = yaml.safe_load(state.get("config_yaml") or "null")
        except yaml.YAMLError:
            saved = None
        if not isinstance(saved, dict):
            saved = {"train": state.get("train_config", {})}
        diffs = config_changes(saved, self.full_config, self.allow_changes)
        if diffs:
            raise UserError(
                f"resume: {path} was trained with another configuration ({'; '.join(diffs)}); use the "
                f"checkpoint's values or a new out_dir (a resume may change only: {', '.join(self.allow_changes)})"
            )
        if int(state["step"]) > self.cfg.steps:
            raise UserError(
                f"resume: train.steps={self.cfg.steps} is below the step of {path} ({int(state['step'])}); "
                "a resumed run can only extend its budget"
            )

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        self._check_resume_config(state, path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                warnings.warn(f"{path} holds no EMA weights; the EMA restarts from the loaded model", stacklevel=3)
                self.ema = EMA(self.model, self.cfg.ema)
            else:
                self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.grad_scaler is not None and state.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.step = self._saved_step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.wall_time = float(state.get("wall_time", 0.0))
        self.eval_time = float(state.get("eval_time", 0.0))
        self.last_eval = dict(state.get("last_eval", {}))
        self.last_eval_step = self._saved_eval_step = int(state.get("last_eval_step", -1))
        self._window.load_state_dict(state["log_state"])
        rng = state["rng"]
        if state.get("world_size", 1) != self.dist.world_size or self.dist.rank >= len(rng):
            warnings.warn(
                f"{path} was written by {state.get('world_size')} ranks, this job has "
                f"{self.dist.world_size}; "
                "data order and noise continue from fresh seeds",
                stacklevel=3,
            )
            self.noise_generator.manual_seed(epoch_seed(self.cfg.seed + self.dist.rank, self.step, stream=11))
        else:
            restore_rng_state(rng[self.dist.rank], self.noise_generator)
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    # -- results and shutdown ----------------------------------------------------------------------

    def final_metrics(self) -> dict[str, float]:
        """``step``, ``epoch``, ``wall_time``, ``train_wall_s``, ``train_loss`` and the last evaluation's metrics."""
        out: dict[str, float] = {
            "step": self.step,
            "epoch": self.epoch,
            "wall_time": self.wall_time,
            "train_wall_s": self.wall_time - self.eval_time,
        }
        if "loss" in self.last_train:
            out["train_loss"] = self.last_train["loss"]
        out.update(self.last_eval)
        return out

    def close(self, clean: bool = True) -> None:
        """Close logs and, when this trainer started the process
        group, shut it down (dropping the DDP wrapper and optimizer first). Called by ``train``."""
        if self._closed:
            return
        self._closed = True
        if self._pbar is not None:
            self._pbar.close()
        if self._tb is not None:
            self._tb.close()
        if self.dist.is_distributed:
            self.train_model = self.model
            self.optimizer = None  # type: ignore[assignment]
            self.lr_scheduler = None  # type: ignore[assignment]
            if clean:
                shutdown_distributed(self._owns_process_group)
            elif self._owns_process_group:
                torch.distributed.destroy_process_group()


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, list | tuple):
        return _batch_size(batch[0])
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__} batch")
