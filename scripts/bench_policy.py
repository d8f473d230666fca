"""Benchmark the diffusion policy: training throughput, inference latency, noise-assigner overhead.

    python scripts/bench_policy.py                 # CPU (and CUDA when present), a few minutes on 2 cores
    python scripts/bench_policy.py --quick         # fewer repetitions
    python scripts/bench_policy.py --device cuda   # one device only
    python scripts/bench_policy.py --sections 4    # only float32 vs bf16 vs torch.compile on CPU

Reports (shapes of Diffusion Policy's PushT low-dim task: obs 2 x 20, action 16 x 2, batch 256):

1. training throughput, samples/s of ``compute_loss + backward + AdamW step``, for every denoiser preset
   (``policy=unet_cpu | unet_paper | mlp | transformer``) side by side, with the ratio to ``unet_cpu``;
2. inference latency of one action chunk (batch 1) and of one denoiser call, for every preset at DDIM 10
   steps, and for each task's default recipe (its denoiser and sampler), against the 20 ms target on CPU;
3. the overhead of each noise assigner (none, lsa, knn k=2, knn k=16), two ways: the training step timed
   with each assigner side by side (interleaved rounds, ratio to ``none``), and the assigner call alone
   as a fraction of the ``none`` training step (target for knn: < 2%);
4. on CPU, the default low-dim recipe's training step (policy=mlp, sample prediction) in float32, under
   bf16 autocast (``train.amp=bf16``), compiled (``train.compile=true``) and both, side by side, with the
   ratio to float32 (``--no-compile`` skips the compiled variants, which need a C++ compiler).

All timings are steady-state medians after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import diffpolicy_immix_configs
import numpy as np
import torch
import yaml

from diffpolicy_immix.app import make_objective
from diffpolicy_immix.data import LinearNormalizer
from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import make_assigner
from diffpolicy_immix.policy import DiffusionPolicy, PolicyConfig

CONFIG_DIR = Path(diffpolicy_immix_configs.__file__).parent

OBS_DIM, N_OBS, ACT_DIM, HORIZON = 20, 2, 2, 16
ASSIGNERS: dict[str, dict] = {"none": {}, "lsa": {}, "knn k=2": {"k": 2}, "knn k=16": {"k": 16}}
DENOISER_PRESETS = ("unet_cpu", "unet_paper", "mlp", "transformer")  # configs/policy/<name>.yaml
TASKS = ("reach_around", "push_block", "point_maze", "pusht")


def preset(name: str) -> dict:
    """The network options ``policy=<name>`` selects (the packaged configs/policy/<name>.yaml)."""
    return yaml.safe_load((CONFIG_DIR / "policy" / f"{name}.yaml").read_text())


def task_recipe(task: str) -> tuple[dict, dict]:
    """(policy options, objective options) of ``dpi-train task=<task>`` with no other override."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose("dpi_train", overrides=[f"task={task}"]), resolve=True)
    objective = make_objective(cfg["objective"], {"name": "none"}, cfg["task"])  # nulls: the task's defaults
    shape = {k: int(cfg["task"][k]) for k in ("horizon", "n_obs_steps", "n_action_steps")}
    return {**shape, **cfg["policy"]}, dataclasses.asdict(objective.cfg)


def cpu_bf16_units() -> str:
    """Which of the CPU flags that make bf16 matmuls fast are present ("none": bf16 is emulated, slow)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return ", ".join(found) or "none"


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
        f"load average {load:.1f}, bfloat16 matrix units (avx512_bf16 / amx_bf16): {cpu_bf16_units()}",
        f"python {platform.python_version()}, torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        lines.append(f"cuda: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_policy(
    policy: dict, device: torch.device, assigner: str = "none", objective: dict | None = None
) -> DiffusionPolicy:
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit(
        {
            "obs": rng.uniform(-1, 1, (1024, OBS_DIM)).astype(np.float32),
            "action": rng.uniform(0, 512, (1024, ACT_DIM)).astype(np.float32),
        }
    )
    name = assigner.split()[0]
    objective = DiffusionObjective(ObjectiveConfig(**(objective or {})), make_assigner(name, **ASSIGNERS[assigner]))
    shape = {"horizon": HORIZON, "n_obs_steps": N_OBS, "n_action_steps": 8}
    cfg = PolicyConfig(**{**shape, **policy})
    torch.manual_seed(0)
    return DiffusionPolicy(cfg, OBS_DIM, ACT_DIM, normalizer, objective).to(device)


def make_batch(batch: int, device: torch.device, horizon: int = HORIZON) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "obs": (torch.rand(batch, horizon, OBS_DIM, generator=g) * 2 - 1).to(device),
        "action": (torch.rand(batch, horizon, ACT_DIM, generator=g) * 512).to(device),
    }


class StepRunner:
    """One policy + optimizer + batch; ``step()`` runs compute_loss + backward + AdamW, as the trainer does
    (under autocast when ``amp`` is ``"bf16"``, through ``torch.compile`` when ``compile``)."""

    def __init__(
        self,
        policy: dict,
        assigner: str,
        batch: int,
        device: torch.device,
        objective: dict | None = None,
        amp: str = "none",
        compile: bool = False,
    ) -> None:
        self.device = device
        self.policy = build_policy(policy, device, assigner, objective)
        self.forward = torch.compile(self.policy) if compile else self.policy
        self.amp = amp
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=1e-4, weight_decay=1e-6)
        self.batch = make_batch(batch, device, self.policy.cfg.horizon)
        self.gen = torch.Generator(device=device).manual_seed(0)

    def step(self) -> None:
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
            if self.amp == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            loss, _ = self.forward(self.batch, generator=self.gen)
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


def bench_throughput(device: torch.device, batch: int, rounds: dict[str, int], warmup: int) -> dict[str, float]:
    print(
        f"\n[1] training throughput on {device} (batch {batch}, H={HORIZON}, obs {N_OBS}x{OBS_DIM}, "
        f"action {ACT_DIM}; compute_loss + backward + AdamW), every denoiser preset side by side"
    )
    runners = {name: StepRunner(preset(name), "none", batch, device) for name in DENOISER_PRESETS}
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(max(rounds.values())):  # interleaved so that load changes hit every denoiser alike
        for name, runner in runners.items():
            if i < rounds.get(name, rounds["default"]):
                times[name].append(timed(runner.step, device))
    out = {}
    base = statistics.median(times["unet_cpu"])
    for name, runner in runners.items():
        t = statistics.median(times[name])
        out[name] = batch / t
        n_params = sum(p.numel() for p in runner.policy.parameters())
        print(
            f"  policy={name:12s} {n_params / 1e6:6.2f} M params, step {t * 1e3:8.1f} ms, "
            f"{batch / t:9.1f} samples/s, {base / t:5.2f}x unet_cpu  ({len(times[name])} timed steps)"
        )
    return out


def _latency(policy: DiffusionPolicy, device: torch.device, reps: int) -> tuple[float, float]:
    """(ms per action chunk at batch 1, ms per denoiser call at batch 1)."""
    gen = torch.Generator(device=device).manual_seed(0)
    obs = {"obs": make_batch(1, device, policy.cfg.horizon)["obs"][:, :N_OBS]}
    chunk = median_time(lambda: policy.predict_action(obs, generator=gen), device, warmup=3, reps=reps)
    x = torch.zeros(1, policy.cfg.horizon, ACT_DIM, device=device)
    t_arg = torch.zeros(1, device=device)
    cond = torch.zeros(1, policy.obs_encoder.out_dim, device=device)
    with torch.no_grad():
        call = median_time(lambda: policy.model(x, t_arg, cond), device, warmup=3, reps=reps)
    return chunk * 1e3, call * 1e3


def bench_latency(device: torch.device, reps: int) -> None:
    print(f"\n[2] inference latency on {device}: one action chunk at batch 1 (DDIM 10 steps) and one denoiser call")
    for name in DENOISER_PRESETS:
        policy = build_policy(preset(name), device).eval()
        chunk, call = _latency(policy, device, reps)
        mbytes = sum(p.numel() * p.element_size() for p in policy.model.parameters()) / 1e6
        print(f"  policy={name:12s} chunk {chunk:7.2f} ms; one call {call:6.2f} ms ({mbytes:5.1f} MB of weights)")
    print(f"\n[2b] each task's default recipe on {device} (dpi-train task=<task>): chunk at batch 1, target < 20 ms")
    for task in TASKS:
        policy_cfg, objective_cfg = task_recipe(task)
        policy = build_policy(policy_cfg, device, objective=objective_cfg).eval()
        chunk, call = _latency(policy, device, reps)
        steps = objective_cfg["num_inference_steps"]
        verdict = "met" if chunk < 20 else "NOT met"
        print(
            f"  {task:13s} {policy_cfg['denoiser']:11s} {objective_cfg['kind']}/{objective_cfg['sampler']} "
            f"{steps:3d} steps: chunk {chunk:7.2f} ms ({verdict}), one call {call:6.2f} ms"
        )


def bench_unet_profile(device: torch.device, reps: int = 20) -> None:
    """Where one batch-1 call of the default UNet spends its time (torch.profiler, self time per operator)."""
    from torch.profiler import ProfilerActivity, profile

    policy = build_policy(preset("unet_cpu"), device).eval()
    x = torch.zeros(1, HORIZON, ACT_DIM, device=device)
    t_arg = torch.zeros(1, device=device)
    cond = torch.zeros(1, policy.obs_encoder.out_dim, device=device)
    with torch.no_grad():
        for _ in range(5):
            policy.model(x, t_arg, cond)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                policy.model(x, t_arg, cond)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n[2c] one batch-1 call of policy=unet_cpu on {device}: self time by operator ({reps} calls)")
    for e in events[:6]:
        print(
            f"  {e.key:32s} {100 * e.self_cpu_time_total / total:5.1f}%  {e.count // reps:4d} calls per forward, "
            f"{e.self_cpu_time_total / max(e.count, 1):8.1f} us each"
        )


def bench_assigners(device: torch.device, batch: int, rounds: int, warmup: int) -> None:
    print(
        f"\n[3] assigner overhead on {device} (default model, batch {batch}, x0 shape ({batch}, {HORIZON}, {ACT_DIM}))"
    )
    trainers = {name: StepRunner(preset("unet_cpu"), name, batch, device) for name in ASSIGNERS}
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


def bench_cpu_modes(batch: int, rounds: int, use_compile: bool) -> None:
    device = torch.device("cpu")
    policy_cfg, objective_cfg = task_recipe("pusht")
    modes = {"float32": ("none", False), "bf16 autocast": ("bf16", False)}
    if use_compile:
        modes |= {"compile": ("none", True), "compile + bf16": ("bf16", True)}
    print(
        f"\n[4] the pusht recipe's training step on cpu (policy={policy_cfg['denoiser']}, batch {batch}): "
        "float32 vs bf16 autocast vs torch.compile, side by side"
    )
    runners = {
        name: StepRunner(policy_cfg, "none", batch, device, objective_cfg, amp, comp)
        for name, (amp, comp) in modes.items()
    }
    for runner in runners.values():
        for _ in range(3):  # the compiled variants compile here
            runner.step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):  # interleaved so that load changes hit every variant alike
        for name, runner in runners.items():
            times[name].append(timed(runner.step, device))
    base = statistics.median(times["float32"])
    for name in runners:
        t = statistics.median(times[name])
        print(f"  {name:15s} step {t * 1e3:7.2f} ms, {batch / t:9.1f} samples/s, {base / t:5.2f}x float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants of [4]")
    parser.add_argument("--sections", default="1,2,3,4", help="which sections to run, e.g. 4 (default: all)")
    args = parser.parse_args()
    try:
        sections = {int(part) for part in args.sections.split(",")}
    except ValueError:
        parser.error(f"--sections {args.sections!r} is invalid; give section numbers such as 1,2 or 4")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(machine())
    for name in devices:
        device = torch.device(name)
        cpu = device.type == "cpu"
        rounds = {"default": 5 if args.quick else 15, "unet_paper": 2 if cpu else 10}
        if not cpu and not args.quick:
            rounds = {"default": 50, "unet_paper": 30}
        if 1 in sections:
            bench_throughput(device, args.batch, rounds, warmup=1 if cpu else 5)
        if 2 in sections:
            bench_latency(device, reps=20 if args.quick else 50)
            if cpu:
                bench_unet_profile(device)
        if 3 in sections:
            bench_assigners(device, args.batch, rounds=5 if args.quick else 15, warmup=2 if cpu else 5)
        if 4 in sections and cpu:
            bench_cpu_modes(args.batch, rounds=20 if args.quick else 60, use_compile=not args.no_compile)


if __name__ == "__main__":
    main()
