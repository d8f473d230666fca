"""Two-rank checks under torchrun (gloo, CPU); a test helper, not a test.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/training_ddp_runner.py OUT

1. Global LSA on given noise: each rank passes its slice of shared (x0, noise); the gathered result must
   equal a single-process LSA on the concatenated batch with the same noise -- also with different batch
   sizes per rank (one of them empty), through the core's ``lsa`` assigner (``process_group="auto"``),
   and locally inside ``local_assignment()``.
2. DDP training of a toy model whose assigner is the core's ``lsa`` (global by itself under DDP, nothing
   swapped) with the trainer's own process-group start and shutdown.
Each rank writes ``OUT/rank<r>.pt`` (final weights, its per-step losses) and rank 0 ``OUT/lsa.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from training_toys import ToyBatchData, ToyModel, make_evaluate_fn, toy_points

from diffpolicy_immix.immiscible import (
    global_lsa_noise,
    local_assignment,
    make_assigner,
    pairwise_cost,
    solve_assignment,
)
from diffpolicy_immix.training import TrainConfig, Trainer, seed_everything


class RecordingTrainer(Trainer):
    """Keeps this rank's unreduced loss of every step."""

    def train_step(self, batch, with_stats=False):
        loss, grad_norm, stats = super().train_step(batch, with_stats)
        self.local_losses.append(float(loss))
        return loss, grad_norm, stats


def check_global_lsa(rank: int, world: int) -> dict:
    """Global LSA on given noise against the single-process solve; returns rank 0's findings."""
    results = {}
    for metric, shape in (("l2", (6, 5)), ("sqeuclidean", (6, 2, 3))):
        g = torch.Generator().manual_seed(42)  # identical on every rank: the shared batch
        x_all = torch.rand((world * shape[0], *shape[1:]), generator=g) * 2 - 1
        noise_all = torch.randn((world * shape[0], *shape[1:]), generator=g)
        b = shape[0]
        mine = global_lsa_noise(x_all[rank * b : (rank + 1) * b], noise_all[rank * b : (rank + 1) * b], cost=metric)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        combined = torch.cat(gathered)  # (W*B, *dims)
        reference = noise_all[solve_assignment(pairwise_cost(x_all, noise_all, metric))]
        # the per-rank (non-global) solve, for contrast: its total cost must not be lower
        per_rank = torch.cat(
            [
                noise_all[i * b : (i + 1) * b][
                    solve_assignment(pairwise_cost(x_all[i * b : (i + 1) * b], noise_all[i * b : (i + 1) * b], metric))
                ]
                for i in range(world)
            ]
        )
        flat = lambda t: t.reshape(len(t), -1)  # noqa: E731
        results[metric] = {
            "equal": bool(torch.equal(combined, reference)),
            "shape_kept": list(mine.shape) == [b, *shape[1:]],
            "global_cost": float(pairwise_cost(flat(x_all), flat(combined), metric).diagonal().sum()),
            "per_rank_cost": float(pairwise_cost(flat(x_all), flat(per_rank), metric).diagonal().sum()),
        }
    results["uneven"] = check_uneven_batches(rank, world)
    results["assigner"] = check_core_assigner(rank, world)
    return results


def check_uneven_batches(rank: int, world: int) -> dict:
    """Batch sizes 3, 5, ... and 0, 4, ... per rank: still the single-process solve on the concatenation."""
    out = {}
    for name, sizes in (("3-5", [3 + 2 * r for r in range(world)]), ("0-4", [4 * r for r in range(world)])):
        g = torch.Generator().manual_seed(7)
        x_all = torch.rand(sum(sizes), 4, generator=g) * 2 - 1
        noise_all = torch.randn(sum(sizes), 4, generator=g)
        lo = sum(sizes[:rank])
        mine = global_lsa_noise(x_all[lo : lo + sizes[rank]], noise_all[lo : lo + sizes[rank]])
        parts = [None] * world
        dist.all_gather_object(parts, mine)
        reference = noise_all[solve_assignment(pairwise_cost(x_all, noise_all))]
        out[name] = bool(torch.equal(torch.cat(parts), reference))
    return out


def check_core_assigner(rank: int, world: int) -> dict:
    """``make_assigner("lsa")`` with each rank's own generator equals one LSA over both ranks' draws;
    inside ``local_assignment()`` it solves on the rank's batch alone."""
    b = 6
    x_all = torch.rand(world * b, 3, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assign = make_assigner("lsa")
    mine = assign(x_all[rank * b : (rank + 1) * b], generator=torch.Generator().manual_seed(100 + rank))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    noise_all = torch.cat(
        [torch.randn(b, 3, 2, generator=torch.Generator().manual_seed(100 + r)) for r in range(world)]
    )
    reference = noise_all[solve_assignment(pairwise_cost(x_all, noise_all))]
    with local_assignment():
        local = assign(x_all[rank * b : (rank + 1) * b], generator=torch.Generator().manual_seed(100 + rank))
    own = noise_all[rank * b : (rank + 1) * b]
    local_ref = own[solve_assignment(pairwise_cost(x_all[rank * b : (rank + 1) * b], own))]
    return {
        "equal": bool(torch.equal(torch.cat(parts), reference)),
        "collective": assign.requires_all_ranks(),
        "local_inside_block": bool(torch.equal(local, local_ref)),
    }


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    seed_everything(0)
    x = toy_points(64)
    cfg = TrainConfig(
        steps=6,
        batch_size=8,
        lr=1e-2,
        warmup_steps=1,
        grad_clip=1.0,
        eval_every=3,
        checkpoint_every=3,
        device="cpu",
        seed=5,
        diag_every=2,
    )
    model = ToyModel()
    model.objective.assigner = make_assigner("lsa")  # process_group="auto": global under DDP by itself
    trainer = RecordingTrainer(model, ToyBatchData(x), cfg, out / "run", evaluate_fn=make_evaluate_fn(x[:8]))
    trainer.local_losses = []
    rank, world = dist.get_rank(), dist.get_world_size()
    global_in_training = trainer.model.objective.assigner.requires_all_ranks()
    lsa = check_global_lsa(rank, world)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.train()  # shuts the process group down cleanly at the end
    changed = any(not torch.equal(initial[k], v) for k, v in trainer.model.state_dict().items())
    torch.save(
        {
            "state": trainer.model.state_dict(),
            "losses": trainer.local_losses,
            "changed": changed,
            "global_in_training": global_in_training,
            "local_after_training": not trainer.model.objective.assigner.requires_all_ranks(),
            "final_step": final["step"],
        },
        out / f"rank{rank}.pt",
    )
    if rank == 0:
        (out / "lsa.json").write_text(json.dumps(lsa))


if __name__ == "__main__":
    main()
