"""Console entry points of diffpolicy_immix (``dpi-*``).

Input errors (the toolkit's ``UserError`` and the data layer's ``DatasetError``) print one line,
``error: <message>``, and exit with status 2 before any long work starts; any other exception is a defect
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from diffpolicy_immix.errors import MissingInputError, UserError
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can act on: printed as one line, exit status 2, no traceback."""
    from diffpolicy_immix.data import DatasetError

    return (UserError, DatasetError)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_hydra(config_name: str, task_fn: Callable[[Any], None]) -> None:
    """Run ``task_fn(cfg)`` as a Hydra app on a packaged primary config (overrides from sys.argv)."""
    import hydra

    def guarded(cfg: Any) -> None:
        try:
            task_fn(cfg)
        except _user_errors() as err:
            fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)

    guarded.__name__ = task_fn.__name__
    hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=config_name)(guarded)()


# -- dpi-collect / dpi-data -------------------------------------------------------------------------


def _collect(cfg: Any) -> None:
    from diffpolicy_immix.data import collect_demonstrations

    plain = _plain(cfg)
    task = plain["task"]
    kind = task.get("kind", "policy")
    if kind != "policy" or "env_id" not in task or "demos" not in task:
        raise UserError(
            f"task={task.get('name')} (kind {kind!r}) has no scripted expert to collect; dpi-collect needs a "
            "policy task with task.env_id and task.demos (e.g. task=reach_around)"
        )
    episodes = plain["episodes"] if plain["episodes"] is not None else task["demos"]["episodes"]
    seed = plain["seed"] if plain["seed"] is not None else task["demos"]["seed"]
    out = plain["out"] or task["dataset"]
    policy = None
    steps = (0, 0)
    if plain.get("takeover") is not None:
        from diffpolicy_immix.app import TakeoverPolicy
        from diffpolicy_immix.data.collect import step_range

        steps = step_range(plain.get("takeover_steps"), "takeover_steps")
        policy = TakeoverPolicy(str(plain["takeover"]), task["env_id"])
    summary = collect_demonstrations(
        task["env_id"],
        out,
        episodes=int(episodes),
        seed=int(seed),
        max_steps=plain["max_steps"],
        keep_failed=plain["keep_failed"],
        dart_noise=plain["dart_noise"] if plain.get("dart_noise") is not None else task["demos"].get("dart_noise", 0.0),
        workers=plain["workers"] if plain.get("workers") is not None else task["demos"].get("workers", 1),
        hold_steps=plain["hold_steps"] if plain.get("hold_steps") is not None else task["demos"].get("hold_steps", 0),
        expert_options=plain["expert"] if plain.get("expert") is not None else task["demos"].get("expert", {}),
        policy=policy,
        policy_steps=steps,
        include=plain.get("include"),
    )
    extra = ""
    if policy is not None:
        extra += f"; the policy ended {summary['episodes_ended_by_policy']} episodes before the takeover"
    if plain.get("include") is not None:
        extra += f"; {summary['episodes_included']} episodes copied first from {plain['include']}"
    print(
        f"{task['name']}: expert success {summary['episodes_succeeded']}/{summary['episodes_attempted']} "
        f"({100 * summary['success_rate']:.1f}%), mean max score {summary['mean_score']:.3f}; "
        f"stored {summary['episodes_kept']} episodes, {summary['steps']} steps -> {summary['path']} "
        f"({summary['steps_per_s']:.0f} env steps/s){extra}"
    )


def collect() -> None:
    """``dpi-collect task=<name> episodes=N seed=S [out=PATH] [keep_failed=true] [dart_noise=0.05] [workers=4]
    [hold_steps=20] [expert={jitter:false}] [takeover=CHECKPOINT takeover_steps=[0,40]] [include=STORE]``."""
    run_hydra("dpi_collect", _collect)


def data(argv: list[str] | None = None) -> None:
    """``dpi-data info PATH`` | ``dpi-data validate PATH``: inspect or check a demonstration store (zarr,
    robomimic HDF5 or LeRobot folder); ``dpi-data convert SRC DST.zarr [--mask NAME]``: convert one of the
    latter to a zarr store."""
    from diffpolicy_immix.data import DatasetError, describe_store, validate_store
    from diffpolicy_immix.data.convert import convert, describe_source, detect_format, validate_source

    parser = argparse.ArgumentParser(prog="dpi-data", description=data.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="episodes, steps, keys with shapes/dtypes, episode-length statistics").add_argument(
        "path"
    )
    sub.add_parser("validate", help="exit non-zero with the first problem found").add_argument("path")
    conv = sub.add_parser("convert", help="robomimic HDF5 / LeRobot folder -> zarr (Diffusion Policy's layout)")
    conv.add_argument("src", help="a robomimic .hdf5 file or a local LeRobot dataset folder")
    conv.add_argument("dst", help="the zarr store to write (e.g. datasets/lift.zarr)")
    conv.add_argument("--mask", default=None, help="robomimic filter key: keep only the demos in mask/<NAME>")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = parser.parse_args(argv)
    try:
        try:
            if args.command == "convert":
                s = convert(args.src, args.dst, mask=args.mask, overwrite=args.overwrite)
                print(
                    f"{args.src} ({s['format']}): {s['episodes']} episodes, {s['steps']} steps, keys "
                    f"{', '.join(s['keys'])} -> {s['path']} ({s['seconds']:.1f} s, {s['steps_per_s']:.0f} steps/s)"
                )
            elif detect_format(args.path) != "zarr":  # a robomimic HDF5 file or a LeRobot folder
                if args.command == "info":
                    print(describe_source(args.path))
                else:
                    s = validate_source(args.path)
                    print(f"{args.path}: valid {s['format']} ({s['n_episodes']} episodes, {s['n_steps']} steps)")
            elif args.command == "info":
                print(describe_store(args.path))
            elif args.command == "validate":
                summary = validate_store(args.path)
                print(f"{args.path}: valid ({summary['n_episodes']} episodes, {summary['n_steps']} steps)")
        except RuntimeError as err:  # a codec error while reading the arrays (e.g. a corrupt chunk)
            if args.command == "convert":
                raise
            from diffpolicy_immix.app import unreadable_store_error

            raise unreadable_store_error(args.path, err) from err
    except (DatasetError, UserError, FileNotFoundError) as err:
        fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)


# -- dpi-train / dpi-eval ---------------------------------------------------------------------------


def _plain(cfg: Any) -> dict[str, Any]:
    """The composed config as plain containers; a mandatory value left unset (``???``) is a UserError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "") or "a mandatory value"
        raise UserError(f"{key} is required: set {key}=<value>") from None
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    print(title + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


def _check_train_choice(cfg: Any) -> None:
    """``train`` is an optional group (``train: ${task}``), so Hydra ignores a ``train=NAME`` that names no
    config; refuse it here, listing the group's configs (the packaged ones and any ``--config-dir``'s)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from diffpolicy_immix.preflight import check_train_choice

    options = GlobalHydra.instance().config_loader().get_group_options("train")
    check_train_choice(HydraConfig.get().runtime.choices.get("train"), str(cfg.task.name), options)


def _train(cfg: Any) -> None:
    from diffpolicy_immix.app import run_training

    _check_train_choice(cfg)
    final = run_training(_plain(cfg))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        _print_metrics(f"finished {final['out_dir']}: ", final)


def train() -> None:
    """``dpi-train task=<name> assign=<none|lsa|knn|sinkhorn> [assign.k=2] [objective=...] [train.steps=N]``."""
    run_hydra("dpi_train", _train)


def _load_trained(
    cfg: Any,
    kind: str,
    other_command: str,
    task_overrides: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None,
) -> tuple[Path, torch.device, Any, dict[str, Any]]:
    """(checkpoint path, device, model with EMA weights unless ema=false, run config) for dpi-eval/dpi-sample.

    The checkpoint is a run's ``checkpoints/latest.pt`` or one of its weights-only ``.safetensors`` files;
    ``task_overrides`` (dpi-eval's ``task.*``) replace fields of a policy checkpoint's task; ``sampling``
    (dpi-eval's ``sampler``/``steps``/``spacing``) replaces sampling settings of the checkpoint's objective.
    """
    from diffpolicy_immix.app import load_model
    from diffpolicy_immix.training.trainer import resolve_device

    ckpt = Path(str(_plain(cfg)["checkpoint"]))
    if not ckpt.is_file():
        raise MissingInputError(f"checkpoint={ckpt} does not exist")
    try:
        device = resolve_device(str(cfg.device))
    except ValueError as err:
        raise UserError(str(err).replace("train.device", "device")) from None
    model, run_cfg = load_model(
        ckpt, use_ema=bool(cfg.ema), device=device, task_overrides=task_overrides, sampling=sampling
    )
    found = run_cfg["task"].get("kind", "policy")
    if found != kind:
        raise UserError(f"{ckpt} holds a {found} model; use {other_command} for it")
    return ckpt, device, model, run_cfg


def _evaluate(cfg: Any) -> None:
    import csv
    import json

    from diffpolicy_immix.app import SAMPLING_KEYS, PolicyEvalConfig
    from diffpolicy_immix.evaluation import rollout_episodes, summarize_episodes
    from diffpolicy_immix.preflight import check_policy_env
    from diffpolicy_immix.utils.io import atomic_write

    plain = _plain(cfg)
    # dpi-eval's config names the sampling settings it offers by their short names (sampler, steps, spacing)
    sampling = {k: plain[k] for k in SAMPLING_KEYS.values() if plain.get(k) is not None}
    ckpt, device, model, run_cfg = _load_trained(cfg, "policy", "dpi-sample", plain.get("task"), sampling)
    task = run_cfg["task"]
    if task.get("env_id") is None:
        raise UserError(f"{ckpt}: its task has no env_id to evaluate on; set task.env_id=<gymnasium id>")
    spec = check_policy_env(task, model.obs_dim, model.action_dim, str(ckpt))  # env vs the policy's dims
    settings = PolicyEvalConfig.from_task(task)
    video_size = int(cfg.video_size) if cfg.get("video_size") is not None else settings.video_size
    n_episodes = plain["episodes"] if plain["episodes"] is not None else settings.episodes
    max_steps = plain["max_steps"] if plain["max_steps"] is not None else settings.max_steps
    for key, value, low in (("episodes", n_episodes, 1), ("max_steps", max_steps, 1), ("n_envs", plain["n_envs"], 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UserError(f"{key}={value!r} is invalid; it must be an integer >= {low}")
    out = Path(str(cfg.out)) if cfg.out else ckpt.parent.parent / "eval" / ckpt.stem
    out.mkdir(parents=True, exist_ok=True)
    episodes = rollout_episodes(
        model,
        spec,
        n_episodes=n_episodes,
        seed_offset=int(cfg.seed_offset),
        n_envs=int(cfg.n_envs),
        vector_mode=str(cfg.vector_mode or settings.vector_mode),
        max_steps=max_steps,
        video_dir=out / "videos" if cfg.video else None,
        n_videos=int(cfg.n_videos) if cfg.video else 0,
        video_size=video_size,
        device=device,
        generator=torch.Generator(device=device).manual_seed(int(run_cfg.get("seed", 0))),
    )
    metrics = summarize_episodes(episodes)
    rows = [e.as_dict() for e in episodes]
    with atomic_write(out / "episodes.csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(out / "metrics.json") as f:
        f.write(json.dumps({"checkpoint": str(ckpt), **metrics}, indent=2))
    _print_metrics(f"{task['name']} ({ckpt}): ", metrics)
    print(f"per-episode results and videos: {out}")


def evaluate() -> None:
    """``dpi-eval checkpoint=PATH [episodes=50] [video=true] [task.n_action_steps=4] [task.env_id=ID]
    [++task.env_kwargs.KEY=VALUE] [task.success=...] [task.max_episode_steps=N]``."""
    run_hydra("dpi_eval", _evaluate)


def _sample(cfg: Any) -> None:
    from diffpolicy_immix.app import image_metric
    from diffpolicy_immix.imagegen import sample_and_score

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
    """The README's main job: on PointMaze, collect demonstrations if missing, train a vanilla and an
    immiscible (KNN, k=2) diffusion policy side by side with the task's recipe, evaluate both on held-out
    seeds and print the comparison (``dpi-compare experiment=quickstart``; extra ``key=value`` overrides
    pass through)."""
    from diffpolicy_immix.experiments import compare_cli

    raise SystemExit(compare_cli(["experiment=quickstart", *(sys.argv[1:] if argv is None else argv)]))
