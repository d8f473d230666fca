"""Benchmark: CIFAR-10-sized image diffusion training steps, and the per-step cost of each noise assigner.

Measures, for batches of 3x32x32 images (random data in [-1, 1]; timing does not depend on content):
  1. the steady-state time of one training step (loss, backward, AdamW) of an ImageDiffusionModel
     with plain Gaussian noise (assigner "none"): the reference;
  2. for each assigner (none, lsa, knn k=8, knn k=64): the time of the assigner call alone and of a
     whole training step with it, with ratios against the reference step.
Medians over ``--steps`` timed rounds after ``--warmup`` untimed steps per assigner; each round times
every assigner once (interleaved, so drifts in machine load affect all of them alike).

    python scripts/bench_image.py                       # CPU (and CUDA when available)
    python scripts/bench_image.py --device cpu --steps 5 --preset cifar10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.imagegen import IMAGE_MODEL_PRESETS, ImageDiffusionModel, ImageModelConfig
from diffpolicy_immix.immiscible import make_assigner

ASSIGNERS: list[tuple[str, str, dict]] = [
    ("none", "none", {}),
    ("lsa", "lsa", {}),
    ("knn k=8", "knn", {"k": 8}),
    ("knn k=64", "knn", {"k": 64}),
]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines = [
        f"machine: {platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads)"
    ]
    if torch.cuda.is_available():
        lines.append(f"cuda: {torch.cuda.get_device_name(0)}")
    try:
        lines.append("load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    except OSError:
        pass
    return "\n".join(lines)


def timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``steps`` runs after ``warmup`` runs."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_device(device: torch.device, cfg: ImageModelConfig, batch: int, steps: int, warmup: int) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    data_gen = torch.Generator(device=device).manual_seed(1)
    x0 = torch.rand(batch, *cfg.image_shape, generator=data_gen, device=device) * 2 - 1  # data, not noise
    labels = torch.randint(0, cfg.num_classes or 1, (batch,), generator=data_gen, device=device)
    batch_dict = {"image": x0, "label": labels}
    torch.manual_seed(0)
    model = ImageDiffusionModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n[{device}] batch {batch} x {cfg.image_shape}, UNet {n_params / 1e6:.2f} M parameters")

    def step() -> None:
        loss, _ = model.compute_loss(batch_dict, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    objectives = {
        label: DiffusionObjective(ObjectiveConfig(kind="ddpm", num_train_timesteps=1000), make_assigner(name, **o))
        for label, name, o in ASSIGNERS
    }
    for objective in objectives.values():  # warm up every path (allocator, solver imports, kernels)
        model.objective = objective
        for _ in range(warmup):
            step()
            objective.assigner(x0, generator=gen)
    # Interleave the assigners round by round, so slow drifts of machine load hit all of them alike.
    t_assign: dict[str, list[float]] = {label: [] for label in objectives}
    t_step: dict[str, list[float]] = {label: [] for label in objectives}
    for _ in range(steps):
        for label, objective in objectives.items():
            model.objective = objective
            t_assign[label].append(timed(lambda a=objective.assigner: a(x0, generator=gen), 1, 0, device))
            t_step[label].append(timed(step, 1, 0, device))
    rows = [(label, statistics.median(t_assign[label]), statistics.median(t_step[label])) for label in objectives]
    ref_step = rows[0][2]
    print(
        f"{'assigner':<10} {'assign ms':>10} {'step ms':>10} {'assign/step':>12} {'step / none':>12} {'images/s':>10}"
    )
    for label, t_assign, t_step in rows:
        print(
            f"{label:<10} {t_assign * 1e3:>10.2f} {t_step * 1e3:>10.1f} {t_assign / t_step:>11.1%} "
            f"{t_step / ref_step:>11.3f}x {batch / t_step:>10.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument(
        "--preset", choices=sorted(IMAGE_MODEL_PRESETS), default="cifar10", help="UNet config (ImageModelConfig preset)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ImageModelConfig.from_preset(args.preset)
    print(machine())
    print(f"config: preset {args.preset!r}: {cfg}")
    print("objective: DDPM, 1000 train steps, epsilon prediction; optimizer AdamW; fp32")
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available")
        else:
            print("(no CUDA device: CPU only)")
    for device in devices:
        bench_device(device, cfg, args.batch_size, args.steps, args.warmup)


if __name__ == "__main__":
    main()
