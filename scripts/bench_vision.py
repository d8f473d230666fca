"""Image-observation benchmarks on CPU: training samples/s per encoder, sampler throughput of the lazy
chunk-cached image reads, and the memory held while training vs the store's size on disk.

    python scripts/bench_vision.py                       # 200 reach_around_image episodes (collected if missing)
    python scripts/bench_vision.py --episodes 50 --steps 10 --encoders small_cnn

Numbers depend on the machine and its load; the script prints its settings with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from diffpolicy_immix.data import PolicyDataset, collect_demonstrations
from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import make_assigner
from diffpolicy_immix.policy import DiffusionPolicy, PolicyConfig
from diffpolicy_immix.training.batching import rank_batches


def rss_mib() -> float:
    """Resident memory of this process now, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disk_mib(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def make_policy(ds: PolicyDataset, encoder: str) -> DiffusionPolicy:
    cfg = PolicyConfig(image_keys=tuple(ds.image_keys), obs_keys=("state:0:2",), obs_encoder=encoder)
    objective = DiffusionObjective(
        ObjectiveConfig(kind="ddpm", num_train_timesteps=100, num_inference_steps=10), make_assigner("knn", k=2)
    )
    return DiffusionPolicy(cfg, ds.obs_dim, ds.action_dim, ds.get_normalizer(), objective)


def bench_training(ds: PolicyDataset, encoder: str, batch_size: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    policy = make_policy(ds, encoder).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    batches = rank_batches(len(ds), batch_size, seed=0, epoch=0)
    n_enc = sum(p.numel() for p in policy.obs_encoder.parameters())
    times = []
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        batch = ds.get_batch(batches[i % len(batches)])
        loss, _ = policy.compute_loss(batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    per_step = float(np.median(times))
    return {"params_encoder": n_enc, "s_per_step": per_step, "samples_per_s": batch_size / per_step}


def bench_sampler(ds: PolicyDataset, batch_size: int, n_batches: int) -> dict[str, float]:
    batches = rank_batches(len(ds), batch_size, seed=1, epoch=0)
    t0 = time.perf_counter()
    for i in range(n_batches):
        ds.get_batch(batches[i % len(batches)])
    return {"windows_per_s": n_batches * batch_size / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="datasets/reach_around_image.zarr")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--encoders", nargs="+", default=["small_cnn", "resnet18_gn"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cache-mb", type=float, default=256.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = Path(args.dataset)
    if not path.exists():
        print(f"collecting {args.episodes} reach_around_image episodes -> {path}")
        collect_demonstrations("reach_around_image", path, episodes=args.episodes, seed=0, progress=False)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch threads "
        f"{args.threads}, torch {torch.__version__}, batch {args.batch_size}"
    )
    rss0 = rss_mib()
    ds = PolicyDataset(path, obs_keys=["img", "state:0:2"], image_keys=["img"], image_cache_mb=args.cache_mb)
    n_frames = ds.replay_buffer.n_steps
    raw_mib = n_frames * int(np.prod(ds.image_shapes["img"])) / 2**20
    print(
        f"dataset: {ds.n_episodes} episodes, {n_frames} frames; images raw {raw_mib:.1f} MiB, "
        f"store on disk {disk_mib(path):.1f} MiB; RSS after opening +{rss_mib() - rss0:.1f} MiB"
    )

    cold = bench_sampler(ds, args.batch_size, 1)
    warm_batches = max(50, 2 * len(ds) // args.batch_size)
    bench_sampler(ds, args.batch_size, warm_batches)  # fills the cache
    warm = bench_sampler(ds, args.batch_size, 50)
    stats = ds.image_cache_stats()["img"]
    print(
        f"sampler: first batch {cold['windows_per_s']:.0f} windows/s (cold cache), warm "
        f"{warm['windows_per_s']:.0f} windows/s; cache {stats['cached_bytes'] / 2**20:.1f} MiB in "
        f"{stats['cached_chunks']:.0f} chunks, hit rate {stats['hit_rate']:.3f}; RSS +{rss_mib() - rss0:.1f} MiB "
        "over the process before opening the dataset"
    )

    small = PolicyDataset(path, obs_keys=["img", "state:0:2"], image_keys=["img"], image_cache_mb=16)
    bench_sampler(small, args.batch_size, warm_batches)
    tight = bench_sampler(small, args.batch_size, 50)
    print(
        f"sampler with a 16 MiB cache (smaller than the data): {tight['windows_per_s']:.0f} windows/s, hit rate "
        f"{small.image_cache_stats()['img']['hit_rate']:.3f}"
    )
    del small

    print(f"{'encoder':<12} {'enc params':>10} {'s/step':>8} {'samples/s':>10}")
    for enc in args.encoders:
        r = bench_training(ds, enc, args.batch_size, args.steps)
        print(
            f"{enc:<12} {r['params_encoder']:>10,} {r['s_per_step']:>8.3f} {r['samples_per_s']:>10.1f}"
            f"   (RSS after it {rss_mib():.0f} MiB)"
        )
    print(
        f"RSS now {rss_mib():.0f} MiB (peak {peak_rss_mib():.0f} MiB; {rss0:.0f} MiB before opening the "
        f"dataset, torch and the models included)"
    )


if __name__ == "__main__":
    main()
