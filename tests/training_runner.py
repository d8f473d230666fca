"""Runs a small training job in its own process (for the resume test); a test helper, not a test.

    python tests/training_runner.py OUT --steps 12 [--kill-at-step 8] [--resume] [--loader items]

With ``--kill-at-step K`` the process sends itself SIGKILL right after writing the metrics row of step K:
no cleanup, no flush beyond what the trainer already did, exactly like a crash or a preempted job.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from training_toys import ToyBatchData, ToyItemData, ToyModel, make_evaluate_fn, toy_points

from diffpolicy_immix.training import EMAConfig, TrainConfig, Trainer, seed_everything


class KillingTrainer(Trainer):
    kill_at_step = -1

    def log_metrics(self, lr: float) -> dict[str, float]:
        row = super().log_metrics(lr)
        if self.step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--kill-at-step", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--loader", choices=("batch", "items"), default="batch")
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed_everything(7)
    model = ToyModel(dropout=0.2)
    x = toy_points(48)  # 48 samples / batch 8: epochs of 6 steps, so step-5 checkpoints sit mid-epoch
    data = ToyBatchData(x) if args.loader == "batch" else ToyItemData(x)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=8,
        lr=1e-2,
        warmup_steps=3,
        grad_clip=0.5,
        ema=EMAConfig(power=0.75),
        eval_every=4,
        checkpoint_every=args.checkpoint_every,
        keep_top_k=2,
        seed=3,
        device="cpu",
        diag_every=3,
    )
    KillingTrainer.kill_at_step = args.kill_at_step
    trainer = KillingTrainer(
        model,
        data,
        cfg,
        args.out,
        evaluate_fn=make_evaluate_fn(x[:8]),
        val_dataset=ToyBatchData(x[:16]),
        resume=args.resume,
    )
    trainer.train()


if __name__ == "__main__":
    main()
