"""One trainer for every diffusion model of the toolkit: EMA, checkpoints, logs, DDP.

    from diffpolicy_immix.training import Trainer, TrainConfig
    final = Trainer(model, dataset, TrainConfig(steps=2000), "runs/demo", evaluate_fn=fn).train()

See docs/training.md for the run directory, checkpoint contents, resuming and multi-GPU use.
"""

from .checkpoint import CheckpointManager, atomic_save, load_checkpoint
from .config import EMAConfig, TrainConfig
from .distributed import GlobalLSAAssigner, global_lsa_noise
from .ema import EMA, ema_decay
from .trainer import Trainer, lr_factor, seed_everything

__all__ = [
    "EMA",
    "CheckpointManager",
    "EMAConfig",
    "GlobalLSAAssigner",
    "TrainConfig",
    "Trainer",
    "atomic_save",
    "ema_decay",
    "global_lsa_noise",
    "load_checkpoint",
    "lr_factor",
    "seed_everything",
]
