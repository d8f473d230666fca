"""Sequence-sampler throughput vs a per-sample Python reference, and store write/open times.

    python scripts/bench_sampler.py                 # 200 episodes x 100 steps, obs 20-d, action 2-d, B=256

Prints windows/s of
  - the vectorized sampler (``SequenceSampler.sample``: one ``np.take`` per key),
  - ``PolicyDataset.get_batch`` (the same plus conversion to torch tensors),
  - a per-sample reference (loop over windows, slice, pad by hand with edge frames, stack),
  - ``PolicyDataset.__getitem__`` per sample + ``torch.stack`` (what a default DataLoader does),
with ratios against the reference, then the time to append+write the store and to open it in memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zarr

from diffpolicy_immix.data import PolicyDataset, ReplayBuffer, SequenceSampler


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
        f"python {platform.python_version()}, numpy {np.__version__}, zarr {zarr.__version__}, "
        f"torch {torch.__version__}"
    )


def reference_table(sampler: SequenceSampler) -> np.ndarray:
    """Per-window (first row, end row, front padding, back padding), precomputed once like Diffusion
    Policy's index table, so the reference loop below only slices, pads and stacks."""
    ends = sampler.episode_ends
    table = []
    for ep in range(len(ends)):
        if not sampler.episode_mask[ep]:
            continue
        start = int(ends[ep - 1]) if ep > 0 else 0
        length = int(ends[ep]) - start
        for t0 in range(-sampler.pad_before, length - sampler.horizon + sampler.pad_after + 1):
            lo, hi = max(t0, 0), min(t0 + sampler.horizon, length)
            table.append((start + lo, start + hi, lo - t0, t0 + sampler.horizon - hi))
    return np.array(table, dtype=np.int64)


def reference_batch(
    arrays: dict[str, np.ndarray], table: np.ndarray, indices: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-sample loop: for each window slice its rows and pad by repeating the edge frames."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
    masks = []
    for i in indices:
        row_lo, row_hi, n_front, n_back = table[i]
        for k, a in arrays.items():
            rows = a[row_lo:row_hi]
            parts = [np.repeat(rows[:1], n_front, axis=0), rows, np.repeat(rows[-1:], n_back, axis=0)]
            out[k].append(np.concatenate(parts))
        masks.append(np.r_[np.ones(n_front, bool), np.zeros(row_hi - row_lo, bool), np.ones(n_back, bool)])
    return {k: np.stack(v) for k, v in out.items()}, np.stack(masks)


def per_item_batch(ds: PolicyDataset, indices: np.ndarray) -> dict[str, torch.Tensor]:
    items = [ds[int(i)] for i in indices]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def time_batches(fn: Callable[[np.ndarray], object], batches: list[np.ndarray], warmup: int = 3) -> float:
    """Median seconds per batch."""
    for b in batches[:warmup]:
        fn(b)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100, help="steps per episode")
    parser.add_argument("--obs-dim", type=int, default=20)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--n-obs-steps", type=int, default=2)
    parser.add_argument("--n-action-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=100, help="timed batches (reference: a fifth)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    episodes = [
        {
            "obs": rng.normal(size=(args.steps, args.obs_dim)).astype(np.float32),
            "action": rng.normal(size=(args.steps, args.action_dim)).astype(np.float32),
        }
        for _ in range(args.episodes)
    ]
    print(f"machine: {machine()}")
    print(
        f"data: {args.episodes} episodes x {args.steps} steps, obs {args.obs_dim}-d, action {args.action_dim}-d "
        f"float32; horizon {args.horizon}, To {args.n_obs_steps}, Ta {args.n_action_steps}, batch {args.batch}"
    )

    # ---- write / open -------------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        t0 = time.perf_counter()
        with ReplayBuffer.create_writer(path, {"task": "bench"}) as w:
            for ep in episodes:
                w.add_episode(ep)
        write_s = time.perf_counter() - t0
        n_steps = args.episodes * args.steps
        raw_mb = sum(a.nbytes for ep in episodes for a in ep.values()) / 2**20
        disk_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        t0 = time.perf_counter()
        buf = ReplayBuffer.open(path, in_memory=True)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = PolicyDataset(
            path, ["obs"], horizon=args.horizon, n_obs_steps=args.n_obs_steps, n_action_steps=args.n_action_steps
        )
        ds_s = time.perf_counter() - t0
    print(
        f"write (append {args.episodes} episodes + atomic rename): {write_s * 1e3:.1f} ms "
        f"({n_steps / write_s:,.0f} steps/s, {raw_mb:.2f} MiB raw -> {disk_mb:.2f} MiB on disk)"
    )
    print(f"open in memory + validate: {open_s * 1e3:.1f} ms; PolicyDataset(...): {ds_s * 1e3:.1f} ms")

    # ---- sampling -----------------------------------------------------------------------------------
    arrays = {"obs": buf["obs"], "action": buf["action"]}
    sampler = ds.sampler
    batches = [rng.integers(0, len(sampler), size=args.batch) for _ in range(args.repeats)]
    few = batches[: max(5, args.repeats // 5)]
    table = reference_table(sampler)
    assert len(table) == len(sampler)

    # the fast paths and the reference must agree before anything is timed
    got, got_mask = sampler.sample(batches[0])
    want, want_mask = reference_batch(arrays, table, batches[0])
    assert all(np.array_equal(got[k], want[k]) for k in arrays) and np.array_equal(got_mask, want_mask)
    assert torch.equal(per_item_batch(ds, batches[0])["obs"], ds.get_batch(batches[0])["obs"])

    results = {
        "SequenceSampler.sample (vectorized)": time_batches(lambda b: sampler.sample(b), batches),
        "PolicyDataset.get_batch (vectorized, torch)": time_batches(ds.get_batch, batches),
        "reference: per-sample loop + hand padding": time_batches(lambda b: reference_batch(arrays, table, b), few),
        "PolicyDataset.__getitem__ x B + torch.stack": time_batches(lambda b: per_item_batch(ds, b), few),
    }
    ref = results["reference: per-sample loop + hand padding"]
    print(f"{len(sampler)} windows; median of {args.repeats} batches (reference paths: {len(few)})")
    print(f"{'path':<46} {'ms/batch':>9} {'windows/s':>12} {'vs reference':>13}")
    for name, sec in results.items():
        print(f"{name:<46} {sec * 1e3:9.3f} {args.batch / sec:12,.0f} {ref / sec:12.1f}x")


if __name__ == "__main__":
    main()
