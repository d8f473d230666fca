"""The sweep: one training run per (method, seed), resumable, optionally in parallel processes.

Every run of an experiment is composed from the same Hydra overrides except the method's own
(``task=<task>``, then ``base``, the method's ``overrides``, ``extra``, then ``seed`` and ``out_dir``), so
runs differ only in what the method changes. The seed fixes the initial weights, the data order, the
training noise and the policy's sampling noise during evaluation; evaluation episodes use the task's fixed
test seeds. Hence two methods with the same seed see the same data, start from the same weights and are
evaluated on the same episodes.

Resuming: a run folder with ``final.json`` is finished and skipped; one with ``checkpoints/latest.pt``
continues from it (``resume=true``, exact on CPU); anything else starts at step 0. A killed sweep therefore
continues where it stopped when started again. A lock file (``.lock``, ``flock``) keeps two sweeps from
training the same run at once; the lock is released by the kernel when its process dies.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import functools
import json
import multiprocessing as mp
import os
import platform
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import yaml
from tqdm import tqdm

from .records import FINAL_FILE, config_differences, run_dir, write_json_atomic
from .spec import ExperimentSpec

__all__ = [
    "RunOutcome",
    "RunPlan",
    "SweepResult",
    "compose_run_config",
    "cpu_cores",
    "describe_task",
    "execute_run",
    "plan_runs",
    "run_in_processes",
    "run_sweep",
]

RunFn = Callable[[dict[str, Any]], dict[str, Any]]
T = TypeVar("T")
R = TypeVar("R")


def progress_bar(spec: ExperimentSpec, total: int, done: int, desc: str, unit: str) -> tqdm:
    """The experiment's bar over its units of work (runs, evaluations), starting at ``done`` of ``total``."""
    return tqdm(total=total, initial=done, desc=desc, unit=unit, disable=spec.progress == "quiet", dynamic_ncols=True)


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class RunPlan:
    """One run of the sweep: the composed configuration and its folder."""

    label: str
    seed: int
    run_dir: str
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.label}/seed{self.seed}"

    @property
    def finished(self) -> bool:
        return (Path(self.run_dir) / FINAL_FILE).is_file()


@dataclass
class RunOutcome:
    """What happened to a run: ``finished``, ``skipped`` (finished before), ``failed`` or ``busy``."""

    label: str
    seed: int
    run_dir: str
    status: str
    error: str = ""
    elapsed_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepResult:
    outcomes: list[RunOutcome]

    @property
    def failures(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "busy")]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


# -- planning ---------------------------------------------------------------------------------------


def compose_run_config(overrides: list[str]) -> dict[str, Any]:
    """``dpi_train`` composed with Hydra overrides, as a plain dict (no ``hydra`` key)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("compare runs compose their own configs: call it outside of a @hydra.main application")
    with initialize_config_module(config_module="diffpolicy_immix_configs", version_base=None):
        cfg = compose("dpi_train", overrides=list(overrides))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def plan_runs(
    spec: ExperimentSpec, compose: Callable[[list[str]], dict[str, Any]] = compose_run_config
) -> list[RunPlan]:
    """Every (method, seed) run of ``spec``, seed-major (all methods of seed 0 first), configs validated.

    Raises:
        ValueError: an override does not compose, a train config is invalid, or a run folder holds a run
            made with another configuration (the message names the folder and the first difference).
    """
    from diffpolicy_immix.training.config import TrainConfig

    plans = []
    for seed in spec.seeds:
        for method in spec.methods:
            out = run_dir(spec.output_root, method.label, seed)
            overrides = [
                f"task={spec.task}",
                *spec.base,
                *method.overrides,
                *spec.extra,
                f"seed={seed}",
                f"out_dir={out}",
            ]
            try:
                cfg = compose(overrides)
            except Exception as err:  # Hydra raises several types; all mean a bad override
                raise ValueError(f"experiment {spec.name}, method {method.label!r}: {_short(err)}") from None
            cfg["resume"] = False
            train = dict(cfg.get("train") or {})
            train.pop("name", None)
            train["seed"] = int(seed)
            try:
                TrainConfig.from_dict(train)
            except ValueError as err:
                raise ValueError(f"experiment {spec.name}, method {method.label!r}: {_short(err)}") from None
            plans.append(RunPlan(method.label, int(seed), str(out), cfg))
            _check_existing(plans[-1])
    if plans and not int(plans[0].config.get("train", {}).get("eval_every", 0)):
        import warnings

        warnings.warn(
            "train.eval_every is 0: each run is evaluated once, at its end, so learning curves and steps to "
            "threshold have a single point; add train.eval_every=<steps> to the experiment's base",
            stacklevel=2,
        )
    return plans


def _check_existing(plan: RunPlan) -> None:
    """Refuse to continue or skip a run folder that was made with a different configuration."""
    folder = Path(plan.run_dir)
    saved: dict[str, Any] | None = None
    if (folder / FINAL_FILE).is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            saved = json.loads((folder / FINAL_FILE).read_text()).get("config")
    elif (folder / "config.yaml").is_file():
        with contextlib.suppress(yaml.YAMLError, OSError):
            saved = yaml.safe_load((folder / "config.yaml").read_text())
    if not isinstance(saved, dict):
        return
    diffs = [d for d in config_differences(saved, plan.config) if "(absent)" not in d]
    if diffs:
        raise ValueError(
            f"{folder} holds a run made with another configuration ({diffs[0]}); "
            "delete that folder or choose another out_root"
        )


# -- executing one run ------------------------------------------------------------------------------


@contextlib.contextmanager
def _run_lock(folder: Path, wait_s: float = 10.0) -> Iterator[bool]:
    """Exclusive lock on ``folder/.lock``, waiting up to ``wait_s`` (a just-killed sweep's worker needs a
    moment to exit); yields False when another process still holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run without the guard
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.5)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def execute_run(plan: RunPlan, threads: int | None = None, run_fn: RunFn | None = None) -> RunOutcome:
    """Train (or continue, or skip) one run and write ``final.json``; never raises for a failing run.

    Args:
        threads: torch threads for this run (None: leave as is); restored afterwards.
        run_fn: ``cfg -> final metrics`` (default ``app.run_training``).
    """
    import torch

    folder = Path(plan.run_dir)
    base = {"label": plan.label, "seed": plan.seed, "run_dir": plan.run_dir}
    with _run_lock(folder) as locked:
        if not locked:
            return RunOutcome(**base, status="busy", error="another process is training this run (.lock is held)")
        if plan.finished:
            return RunOutcome(**base, status="skipped")
        cfg = copy.deepcopy(plan.config)
        cfg["resume"] = (folder / "checkpoints" / "latest.pt").is_file()
        if run_fn is None:
            from diffpolicy_immix.app import run_training as run_fn
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            metrics = run_fn(cfg)
        except Exception as err:  # a failing run is reported, the sweep goes on
            (folder / "error.txt").write_text(traceback.format_exc())
            return RunOutcome(
                **base,
                status="failed",
                error=f"{type(err).__name__}: {_short(err)}",
                elapsed_s=time.perf_counter() - started,
            )
        finally:
            torch.set_num_threads(previous)
        elapsed = time.perf_counter() - started
        metrics = {k: v for k, v in dict(metrics or {}).items() if isinstance(v, int | float | str | bool)}
        write_json_atomic(
            folder / FINAL_FILE,
            {
                "label": plan.label,
                "seed": plan.seed,
                "metrics": metrics,
                "config": plan.config,
                "resumed": bool(cfg["resume"]),
                "elapsed_s": elapsed,
                "threads": threads or previous,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": platform.node(),
                "torch": torch.__version__,
            },
        )
        (folder / "error.txt").unlink(missing_ok=True)
        return RunOutcome(**base, status="finished", elapsed_s=elapsed, metrics=metrics)


def _watch_parent(parent: int) -> None:
    """Exit when the sweep's main process is gone (e.g. killed), instead of training on as an orphan."""
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(3)


def _init_worker(parent: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the sweep --------------------------------------------------------------------------------------


def describe_task(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dimension the noise lives in, for the report: policies ``H x Da``, images ``C x H x W``.

    Best effort: reads the policy dataset's action array (or the image dataset); returns what it found
    (``dim`` is None when unknown) and never raises.
    """
    task = cfg.get("task", {})
    kind = task.get("kind", "policy")
    info: dict[str, Any] = {"kind": kind, "dim": None, "shape": None}
    try:
        if kind == "policy":
            from diffpolicy_immix.data import ReplayBuffer

            with ReplayBuffer.open(str(task["dataset"]), validate=False) as buf:
                action = buf[str(task.get("action_key", "action"))]
                da = int(action.shape[1]) if len(action.shape) > 1 else 1
            horizon = int(task["horizon"])
            info.update(shape=(horizon, da), dim=horizon * da, text=f"H x Da = {horizon} x {da} = {horizon * da}")
        else:
            shape = task.get("image_shape")
            if shape is None:
                from diffpolicy_immix.imagegen import make_image_dataset

                opts = {k: task[k] for k in ("root", "image_size") if task.get(k) is not None}
                opts.update(task.get("dataset_options") or {})
                shape = make_image_dataset(str(task.get("dataset", task.get("name"))), **opts).image_shape
            shape = tuple(int(x) for x in shape)
            dim = 1
            for x in shape:
                dim *= x
            info.update(shape=shape, dim=dim, text=f"C x H x W = {' x '.join(map(str, shape))} = {dim}")
    except Exception as err:  # the report says "unknown" rather than failing
        info["text"] = f"unknown ({type(err).__name__}: {_short(err)})"
    return info


def _prepare_data(plans: list[RunPlan]) -> None:
    """Collect missing demonstration datasets once, in this process, before any run starts (so parallel
    runs never race to write the same store)."""
    from diffpolicy_immix.app import ensure_demonstrations

    seen = set()
    for p in plans:
        task = p.config.get("task", {})
        if task.get("kind", "policy") == "policy" and task.get("dataset") not in seen:
            seen.add(task.get("dataset"))
            ensure_demonstrations(task)


def run_sweep(
    spec: ExperimentSpec,
    plans: list[RunPlan] | None = None,
    run_fn: RunFn | None = None,
    prepare_data: bool | None = None,
) -> SweepResult:
    """Train every unfinished run of ``spec``; failures are collected, not raised.

    Args:
        plans: from ``plan_runs`` (computed when None).
        run_fn: replaces ``run_training`` (tests); must be a module-level function when ``parallel > 1``.
        prepare_data: collect missing datasets first (default: when ``run_fn`` is None).
    """
    plans = plan_runs(spec) if plans is None else plans
    pending = [p for p in plans if not p.finished]
    outcomes = [RunOutcome(p.label, p.seed, p.run_dir, "skipped") for p in plans if p.finished]
    if prepare_data if prepare_data is not None else run_fn is None:
        _prepare_data(pending)
    threads = spec.threads or max(1, cpu_cores() // spec.parallel)
    bar = progress_bar(spec, len(plans), len(outcomes), f"{spec.name} runs", "run")

    def record(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        bar.update(1)
        if outcome.status in ("failed", "busy"):
            bar.write(f"[{outcome.label} seed {outcome.seed}] {outcome.status.upper()}: {outcome.error}")
        elif outcome.status == "finished" and spec.progress != "quiet":
            value = outcome.metrics.get(spec.metric)
            shown = f"{spec.metric}={value:.4g}" if isinstance(value, int | float) else "done"
            bar.write(f"[{outcome.label} seed {outcome.seed}] finished in {outcome.elapsed_s:.0f} s: {shown}")
        bar.set_postfix(failed=sum(o.status in ("failed", "busy") for o in outcomes), refresh=False)

    try:
        if spec.parallel == 1 and spec.progress == "bars":
            for p in pending:  # in this process: the run's own bar nests under the sweep's bar
                record(execute_run(p, threads, run_fn))
        elif pending:
            _run_pool(spec, pending, threads, run_fn, record)
    finally:
        bar.close()
    order = {(p.label, p.seed): i for i, p in enumerate(plans)}
    outcomes.sort(key=lambda o: order.get((o.label, o.seed), len(order)))
    return SweepResult(outcomes)


def _run_pool(
    spec: ExperimentSpec,
    pending: list[RunPlan],
    threads: int,
    run_fn: RunFn | None,
    record: Callable[[RunOutcome], None],
) -> None:
    def done(p: RunPlan, result: RunOutcome | BaseException) -> None:
        if isinstance(result, BaseException):  # the worker process died (killed, out of memory, ...)
            result = RunOutcome(p.label, p.seed, p.run_dir, "failed", f"{type(result).__name__}: {_short(result)}")
        record(result)

    task = functools.partial(execute_run, threads=threads, run_fn=run_fn)
    run_in_processes(task, pending, spec.parallel, threads, done, show_bars=spec.progress == "bars")


def run_in_processes(
    fn: Callable[[T], R],
    items: list[T],
    workers: int,
    threads: int,
    on_done: Callable[[T, R | BaseException], None],
    show_bars: bool = False,
) -> None:
    """Call ``fn(item)`` for every item in up to ``workers`` spawned processes, ``threads`` torch threads each.

    ``on_done(item, result)`` runs in this process as each call returns; ``result`` is the exception when
    the worker process died. Workers exit when this process dies; an interrupt terminates them.

    Args:
        fn: a picklable callable (a module-level function or a ``functools.partial`` of one).
        show_bars: let the workers draw their own tqdm bars.
    """
    if not items:
        return
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if not show_bars:
        env["TQDM_DISABLE"] = "1"
    with _environ(env):
        pool = cf.ProcessPoolExecutor(
            max_workers=min(workers, len(items)),
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(), threads),
        )
        futures = {pool.submit(fn, item): item for item in items}
        try:
            for fut in cf.as_completed(futures):
                try:
                    result: R | BaseException = fut.result()
                except Exception as err:  # the worker process died
                    result = err
                on_done(futures[fut], result)
        except BaseException:
            for proc in list(getattr(pool, "_processes", {}).values()):  # our own workers, by process
                proc.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
