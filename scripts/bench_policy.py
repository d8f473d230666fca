"""Benchmark the diffusion policy: training throughput, inference latency, noise-assigner overhead.

    python scripts/bench_policy.py                 # CPU (and CUDA when present), a few minutes on 2 cores
    python scripts/bench_policy.py --quick         # fewer repetitions
    python scripts/bench_policy.py --device cuda   # one device only

Reports (shapes of Diffusion Policy's PushT low-dim task: obs 2 x 20, action 16 x 2, batch 256):

1. training throughput, samples/s of ``compute_loss + backward + AdamW step``, for the CPU default UNet
   (down_dims 64/128/256) and the paper's (256/512/1024), with the ratio between them;
2. inference latency of one action chunk (DDIM 10 steps, batch 1) for the default model, against the
   20 ms target on CPU;
3. the overhead of each noise assigner (none, lsa, knn k=2, knn k=16), two ways: the training step timed
   with each assigner side by side (interleaved rounds, ratio to ``none``), and the assigner call alone
   as a fraction of the ``none`` training step (target for knn: < 2%).

All timings are steady-state medians after warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from diffpolicy_immix.data import LinearNormalizer
from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import make_assigner
from diffpolicy_immix.policy import DiffusionPolicy, PolicyConfig

OBS_DIM, N_OBS, ACT_DIM, HORIZON = 20, 2, 2, 16
DEFAULT_DIMS = (64, 128, 256)
PAPER_DIMS = (256, 512, 1024)
ASSIGNERS: dict[str, dict] = {"none": {}, "lsa": {}, "knn k=2": {"k": 2}, "knn k=16": {"k": 16}}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"machine: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        f"load average {load:.1f}",
        f"python {platform.python_version()}, torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"cuda: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_policy(down_dims: tuple[int, ...], assigner: str, device: torch.device) -> DiffusionPolicy:
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit(
        {
            "obs": rng.uniform(-1, 1, (1024, OBS_DIM)).astype(np.float32),
            "action": rng.uniform(0, 512, (1024, ACT_DIM)).astype(np.float32),
        }
    )
    name = assigner.split()[0]
    objective = DiffusionObjective(ObjectiveConfig(kind="ddpm"), make_assigner(name, **ASSIGNERS[assigner]))
    cfg = PolicyConfig(horizon=HORIZON, n_obs_steps=N_OBS, n_action_steps=8, down_dims=down_dims)
    torch.manual_seed(0)
    return DiffusionPolicy(cfg, OBS_DIM, ACT_DIM, normalizer, objective).to(device)


def make_batch(batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "obs": (torch.rand(batch, HORIZON, OBS_DIM, generator=g) * 2 - 1).to(device),
        "action": (torch.rand(batch, HORIZON, ACT_DIM, generator=g) * 512).to(device),
    }


class StepRunner:
    """One policy + optimizer + batch; ``step()`` runs compute_loss + backward + AdamW."""

    def __init__(self, down_dims: tuple[int, ...], assigner: str, batch: int, device: torch.device) -> None:
        self.device = device
        self.policy = build_policy(down_dims, assigner, device)
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=1e-4, weight_decay=1e-6)
        self.batch = make_batch(batch, device)
        self.gen = torch.Generator(device=device).manual_seed(0)

    def step(self) -> None:
        loss, _ = self.policy.compute_loss(self.batch, generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], None], device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(reps))


def bench_throughput(device: torch.device, batch: int, reps: dict[str, int], warmup: int) -> dict[str, float]:
    print(
        f"\n[1] training throughput on {device} (batch {batch}, H={HORIZON}, obs {N_OBS}x{OBS_DIM}, "
        f"action {ACT_DIM}; compute_loss + backward + AdamW)"
    )
    out = {}
    for label, dims in (("default", DEFAULT_DIMS), ("paper", PAPER_DIMS)):
        trainer = StepRunner(dims, "none", batch, device)
        n_params = sum(p.numel() for p in trainer.policy.parameters())
        t = median_time(trainer.step, device, warmup, reps[label])
        out[label] = batch / t
        print(
            f"  {label:8s} down_dims={dims}: {n_params / 1e6:6.2f} M params, step {t * 1e3:8.1f} ms, "
            f"{batch / t:9.1f} samples/s  ({reps[label]} timed steps)"
        )
        del trainer
    print(f"  ratio default/paper throughput: {out['default'] / out['paper']:.1f}x")
    return out


def bench_latency(device: torch.device, reps: int) -> float:
    print(f"\n[2] inference latency on {device}: one action chunk, batch 1")
    gen = torch.Generator(device=device).manual_seed(0)
    result = float("nan")
    for dims in (DEFAULT_DIMS, (32, 64, 128)):
        policy = build_policy(dims, "none", device).eval()
        obs = {"obs": make_batch(1, device)["obs"][:, :N_OBS]}
        t = median_time(lambda p=policy: p.predict_action(obs, generator=gen), device, warmup=3, reps=reps)
        x = torch.zeros(1, HORIZON, ACT_DIM, device=device)
        t_arg = torch.zeros(1, device=device)
        cond = torch.zeros(1, policy.obs_encoder.out_dim, device=device)
        with torch.no_grad():
            call = median_time(lambda p=policy: p.model(x, t_arg, cond), device, warmup=3, reps=reps)
        steps = policy.objective.cfg.num_inference_steps
        mbytes = sum(p.numel() * p.element_size() for p in policy.model.parameters()) / 1e6
        label = "default" if dims == DEFAULT_DIMS else "smaller"
        target = ""
        if device.type == "cpu" and dims == DEFAULT_DIMS:
            target = " (target < 20 ms on CPU: " + ("met)" if t < 0.02 else "NOT met)")
        print(
            f"  {label:8s} down_dims={dims}: DDIM {steps} steps {t * 1e3:7.2f} ms{target}; one UNet call "
            f"{call * 1e3:.2f} ms ({mbytes:.1f} MB of weights read per call)"
        )
        if dims == DEFAULT_DIMS:
            result = t
    return result


def bench_assigners(device: torch.device, batch: int, rounds: int, warmup: int) -> None:
    print(
        f"\n[3] assigner overhead on {device} (default model, batch {batch}, x0 shape ({batch}, {HORIZON}, {ACT_DIM}))"
    )
    trainers = {name: StepRunner(DEFAULT_DIMS, name, batch, device) for name in ASSIGNERS}
    for tr in trainers.values():
        for _ in range(warmup):
            tr.step()
    times: dict[str, list[float]] = {name: [] for name in ASSIGNERS}
    for _ in range(rounds):  # interleaved so that load changes hit every assigner alike
        for name, tr in trainers.items():
            times[name].append(timed(tr.step, device))
    step = {name: statistics.median(ts) for name, ts in times.items()}

    x0 = trainers["none"].policy.normalizer.normalize("action", trainers["none"].batch["action"])
    gen = torch.Generator(device=device).manual_seed(0)
    alone = {}
    for name, tr in trainers.items():
        assign = tr.policy.objective.assigner
        alone[name] = median_time(lambda a=assign: a(x0, generator=gen), device, warmup=3, reps=max(20, rounds))

    base = step["none"]
    print(f"  {'assigner':10s} {'train step':>11s} {'ratio':>7s} {'assign alone':>13s} {'of a step':>10s}")
    for name in ASSIGNERS:
        print(
            f"  {name:10s} {step[name] * 1e3:9.1f}ms {step[name] / base:7.3f} {alone[name] * 1e3:11.3f}ms "
            f"{alone[name] / base:9.2%}"
        )
    knn = max(alone["knn k=2"], alone["knn k=16"]) / base
    print(f"  knn assign / step (worst of k=2, 16): {knn:.2%} (target < 2%: {'met' if knn < 0.02 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(machine())
    for name in devices:
        device = torch.device(name)
        cpu = device.type == "cpu"
        reps = {"default": 5 if args.quick else 15, "paper": 2 if cpu else 10}
        if not cpu and not args.quick:
            reps = {"default": 50, "paper": 30}
        bench_throughput(device, args.batch, reps, warmup=1 if cpu else 5)
        bench_latency(device, reps=20 if args.quick else 50)
        bench_assigners(device, args.batch, rounds=5 if args.quick else 15, warmup=2 if cpu else 5)


if __name__ == "__main__":
    main()
