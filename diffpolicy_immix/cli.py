"""Console entry points of diffpolicy_immix (``dpi-*``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from diffpolicy_immix.immiscible import ASSIGNERS, make_assigner, miscibility_stats


def _demo_batch(batch: int, horizon: int, action_dim: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth 2-D reaching trajectories (B, H, Da) in [-1, 1]: the shape of a policy's action chunk."""
    start = torch.rand(batch, 1, action_dim, generator=generator) * 2 - 1
    goal = torch.rand(batch, 1, action_dim, generator=generator) * 2 - 1
    s = torch.linspace(0, 1, horizon)[None, :, None]
    bend = torch.sin(math.pi * s) * (torch.rand(batch, 1, action_dim, generator=generator) - 0.5)
    return (start + (goal - start) * (3 * s**2 - 2 * s**3) + bend).clamp(-1, 1)


def demo(argv: list[str] | None = None) -> None:
    """Assign noise to a batch of trajectories with every method and print the miscibility diagnostics."""
    parser = argparse.ArgumentParser(prog="dpi-demo", description=demo.__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    x0 = _demo_batch(args.batch, args.horizon, args.action_dim, g)
    dim = args.horizon * args.action_dim
    print(f"batch of {args.batch} trajectories, H={args.horizon}, Da={args.action_dim} (D={dim})")
    print(f"{'method':<16}{'dist. reduction %':>18}{'noise norm ratio':>18}{'self-recovery@0.5':>19}")
    for name, opts in [("none", {}), ("lsa", {}), ("knn", {"k": 2}), ("knn", {"k": 16}), ("sinkhorn", {})]:
        noise = make_assigner(name, **opts)(x0, torch.Generator().manual_seed(args.seed + 1))
        s = miscibility_stats(x0, noise)
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        print(
            f"{label:<16}{s['distance_reduction_pct']:>18.2f}{s['noise_norm_ratio']:>18.3f}"
            f"{s['self_recovery@0.5']:>19.3f}"
        )
    print(f"(chance level of self-recovery: {1 / args.batch:.3f}; methods available: {', '.join(ASSIGNERS)})")


# -- shared plumbing --------------------------------------------------------------------------------

CONFIG_PATH = "pkg://diffpolicy_immix_configs"
# Errors a user can act on: printed as one line, exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, RuntimeError)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_hydra(config_name: str, task_fn: Callable[[Any], None]) -> None:
    """Run ``task_fn(cfg)`` as a Hydra app on a packaged primary config (overrides from sys.argv)."""
    import hydra

    def guarded(cfg: Any) -> None:
        try:
            task_fn(cfg)
        except USER_ERRORS as err:
            fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)

    guarded.__name__ = task_fn.__name__
    hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=config_name)(guarded)()


# -- dpi-collect / dpi-data -------------------------------------------------------------------------


def _collect(cfg: Any) -> None:
    from diffpolicy_immix.data import collect_demonstrations

    task = cfg.task
    episodes = cfg.episodes if cfg.episodes is not None else task.demos.episodes
    seed = cfg.seed if cfg.seed is not None else task.demos.seed
    out = cfg.out or task.dataset
    summary = collect_demonstrations(
        task.env_id, out, episodes=int(episodes), seed=int(seed), max_steps=cfg.max_steps, keep_failed=cfg.keep_failed
    )
    print(
        f"{task.name}: expert success {summary['episodes_succeeded']}/{summary['episodes_attempted']} "
        f"({100 * summary['success_rate']:.1f}%), mean max score {summary['mean_score']:.3f}; "
        f"stored {summary['episodes_kept']} episodes, {summary['steps']} steps -> {summary['path']} "
        f"({summary['steps_per_s']:.0f} env steps/s)"
    )


def collect() -> None:
    """``dpi-collect task=<name> episodes=N seed=S [out=PATH] [keep_failed=true]``."""
    run_hydra("dpi_collect", _collect)


def data(argv: list[str] | None = None) -> None:
    """``dpi-data info PATH`` | ``dpi-data validate PATH``: inspect or check a zarr demonstration store."""
    from diffpolicy_immix.data import DatasetError, describe_store, validate_store

    parser = argparse.ArgumentParser(prog="dpi-data", description=data.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="episodes, steps, keys with shapes/dtypes, episode-length statistics").add_argument(
        "path"
    )
    sub.add_parser("validate", help="exit non-zero with the first problem found").add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(describe_store(args.path))
        else:
            summary = validate_store(args.path)
            print(f"{args.path}: valid ({summary['n_episodes']} episodes, {summary['n_steps']} steps)")
    except (DatasetError, FileNotFoundError, ValueError) as err:
        fail(str(err))


# -- dpi-train / dpi-eval ---------------------------------------------------------------------------


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    print(title + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


def _train(cfg: Any) -> None:
    from diffpolicy_immix.training.recipes import run_training

    final = run_training(_plain(cfg))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        _print_metrics(f"finished {final['out_dir']}: ", final)


def train() -> None:
    """``dpi-train task=<name> assign=<none|lsa|knn|sinkhorn> [assign.k=2] [objective=...] [train.steps=N]``."""
    run_hydra("dpi_train", _train)


def _load_trained(cfg: Any, kind: str, other_command: str) -> tuple[Path, torch.device, Any, dict[str, Any]]:
    """(checkpoint path, device, model with EMA weights unless ema=false, run config) for dpi-eval/dpi-sample."""
    from diffpolicy_immix.training.recipes import load_model
    from diffpolicy_immix.training.trainer import resolve_device

    ckpt = Path(str(cfg.checkpoint))
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint={ckpt} does not exist")
    device = resolve_device(str(cfg.device))
    model, run_cfg = load_model(ckpt, use_ema=bool(cfg.ema), device=device)
    found = run_cfg["task"].get("kind", "policy")
    if found != kind:
        raise ValueError(f"{ckpt} holds a {found} model; use {other_command} for it")
    return ckpt, device, model, run_cfg


def _evaluate(cfg: Any) -> None:
    import csv
    import json

    from diffpolicy_immix.evaluation import rollout_episodes, summarize_episodes

    ckpt, device, model, run_cfg = _load_trained(cfg, "policy", "dpi-sample")
    task = run_cfg["task"]
    out = Path(str(cfg.out)) if cfg.out else ckpt.parent.parent / "eval" / ckpt.stem
    out.mkdir(parents=True, exist_ok=True)
    episodes = rollout_episodes(
        model,
        str(task["env_id"]),
        n_episodes=int(cfg.episodes),
        seed_offset=int(cfg.seed_offset),
        n_envs=int(cfg.n_envs),
        vector_mode=str(cfg.vector_mode or task.get("eval", {}).get("vector_mode", "sync")),
        video_dir=out / "videos" if cfg.video else None,
        n_videos=int(cfg.n_videos) if cfg.video else 0,
        device=device,
        generator=torch.Generator(device=device).manual_seed(int(run_cfg.get("seed", 0))),
    )
    metrics = summarize_episodes(episodes)
    rows = [e.as_dict() for e in episodes]
    tmp = out / f".episodes.csv.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "episodes.csv")
    tmp = out / f".metrics.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"checkpoint": str(ckpt), **metrics}, indent=2))
    os.replace(tmp, out / "metrics.json")
    _print_metrics(f"{task['name']} ({ckpt}): ", metrics)
    print(f"per-episode results and videos: {out}")


def evaluate() -> None:
    """``dpi-eval checkpoint=PATH [episodes=50] [video=true]``."""
    run_hydra("dpi_eval", _evaluate)


def _sample(cfg: Any) -> None:
    from diffpolicy_immix.imagegen import sample_and_score
    from diffpolicy_immix.training.recipes import image_metric

    ckpt, device, model, run_cfg = _load_trained(cfg, "image", "dpi-eval")
    task = run_cfg["task"]
    metric = image_metric(task) if cfg.metrics else None
    out = Path(str(cfg.out)) if cfg.out else ckpt.parent.parent / "samples" / f"{ckpt.stem}-n{cfg.n}.png"
    guidance = cfg.guidance_scale if cfg.guidance_scale is not None else task.get("eval", {}).get("guidance_scale")
    metrics = sample_and_score(
        model,
        int(cfg.n),
        metric,
        guidance_scale=guidance,
        generator=torch.Generator(device=device).manual_seed(int(cfg.seed)),
        num_steps=cfg.num_steps,
        grid_path=out,
        grid_size=int(cfg.n),
    )
    _print_metrics(f"{task['name']} ({ckpt}): ", metrics)
    print(f"grid: {out}")


def sample() -> None:
    """``dpi-sample checkpoint=PATH [n=64] [guidance_scale=2]``: sample grid PNG + metrics of an image model."""
    run_hydra("dpi_sample", _sample)


def quickstart(argv: list[str] | None = None) -> None:
    """The README's main job: on ReachAround, collect demonstrations if missing, train a vanilla and an
    immiscible (KNN, k=2) diffusion policy side by side on a short budget, evaluate both on held-out
    seeds and print the comparison (``dpi-compare experiment=quickstart``; extra ``key=value`` overrides
    pass through)."""
    from diffpolicy_immix.experiments import compare_cli

    raise SystemExit(compare_cli(["experiment=quickstart", *(sys.argv[1:] if argv is None else argv)]))
