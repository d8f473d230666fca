"""One trainer for every diffusion model of the toolkit: EMA, checkpoints, logs, DDP.

    from diffpolicy_immix.training import Trainer, TrainConfig
    final = Trainer(model, dataset, TrainConfig(steps=2000), "runs/demo", evaluate_fn=fn).train()

See docs/training.md for the run directory, checkpoint contents, resuming and multi-GPU use.
"""

from .checkpoint import CheckpointManager, atomic_save, load_checkpoint, load_weights, save_weights
from .config import EMAConfig, TrainConfig
from .ema import EMA, ema_decay
from .trainer import SAFE_RESUME_CHANGES, EvaluateFn, Trainer, config_changes, lr_factor, seed_everything

__all__ = [
    "EMA",
    "SAFE_RESUME_CHANGES",
    "CheckpointManager",
    "EMAConfig",
    "EvaluateFn",
    "TrainConfig",
    "Trainer",
    "atomic_save",
    "config_changes",
    "ema_decay",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "save_weights",
    "seed_everything",
]
