"""Deterministic data order: a per-epoch permutation drawn from (seed, epoch), sharded by rank.

Step ``s`` always reads batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so a resumed run
continues at exactly the same data position. Like ``DistributedSampler(drop_last=True)``, every epoch
drops the tail that does not fill a whole global batch, so every rank sees the same number of full
batches (global LSA needs equal batch sizes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

__all__ = ["BatchStream", "epoch_seed", "rank_batches", "sequential_batches", "steps_per_epoch", "to_device"]


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed from (seed, epoch, stream); distinct tuples give unrelated seeds."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches each rank reads per epoch."""
    return (num_samples // world_size) // batch_size


def rank_batches(
    num_samples: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """This rank's batches of one epoch.

    Returns:
        LongTensor, shape (steps_per_epoch, batch_size): dataset indices, disjoint across ranks.
    """
    per_rank = num_samples // world_size
    n_steps = per_rank // batch_size
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(num_samples, generator=generator)[: per_rank * world_size]  # (W * per_rank,)
    mine = perm[rank::world_size][: n_steps * batch_size]  # (n_steps * batch_size,)
    return mine.reshape(n_steps, batch_size)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) dict/list batch to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class BatchStream:
    """Endless batches for one rank, starting at any step.

    A dataset with ``get_batch(indices: LongTensor (B,)) -> dict[str, Tensor]`` is read directly
    (vectorized); any other map-style dataset goes through a ``DataLoader`` with default collation and
    ``num_workers`` workers, whose base seed comes from (seed, epoch, rank) rather than torch's global RNG.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.num_samples = len(dataset)
        self.steps_per_epoch = steps_per_epoch(self.num_samples, batch_size, world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train dataset has {self.num_samples} samples, fewer than one global batch "
                f"(batch_size={batch_size} x world_size={world_size}); lower train.batch_size"
            )

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) read by step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def iterate(self, start_step: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (epoch, batch) for steps start_step, start_step + 1, ..."""
        epoch, offset = self.position(start_step)
        while True:
            batches = rank_batches(self.num_samples, self.batch_size, self.seed, epoch, self.rank, self.world_size)
            batches = batches[offset:]
            for batch in self._read(batches, epoch):
                yield epoch, batch
            epoch, offset = epoch + 1, 0

    def _read(self, batches: Tensor, epoch: int) -> Iterator[dict[str, Any]]:
        if hasattr(self.dataset, "get_batch"):
            for indices in batches:
                yield self.dataset.get_batch(indices)
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches.tolist(),
            num_workers=self.num_workers,
            collate_fn=default_collate,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 1 + self.rank)),
        )
        yield from loader


def sequential_batches(dataset: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """Every sample once, in order (the last batch may be smaller): for validation losses."""
    n = len(dataset)
    if hasattr(dataset, "get_batch"):
        for start in range(0, n, batch_size):
            yield dataset.get_batch(torch.arange(start, min(n, start + batch_size)))
        return
    # A private generator keeps the loader from drawing its base seed from torch's global RNG.
    generator = torch.Generator().manual_seed(0)
    yield from DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=default_collate, generator=generator
    )
