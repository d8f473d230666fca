"""The sampling sweep: each method evaluated at its own best sampling setting, chosen on a validation split.

One fixed sampling setting (guidance scale, sampling steps, sampler) can favour one method: on 8x8 digits
vanilla noise samples best at guidance 1.0 and KNN at 1.5, so a fixed 2.0 makes a gain that is not there.
With ``sampling_sweep`` in an experiment, each finished run's final EMA checkpoint is evaluated again::

    every finished run x every grid point        per method: the point with the        every run of the method
    on the VALIDATION split                 -->  best mean over its seeds         -->  at that point, on the TEST split
    <run>/sweep/val_<slug>.json                  (validation results only)             <run>/sweep/test_<slug>.json

Every result is a small JSON file of its own, written atomically, so an interrupted sweep resumes where it
stopped: a file is reused when its ``protocol`` (split, setting, episodes or samples, seeds, training
steps) is the one the experiment asks for, and evaluated again otherwise.

The splits:

- policies: validation episode ``i`` is reset with seed ``validation.seed_offset + i`` (200000+), test
  episode ``i`` with the task's test seed ``task.eval.seed_offset + i`` (100000+); the demonstrations use
  ``demos.seed + i`` (0+). The policy's sampling noise is seeded with the run's seed, as in training.
- images: the Fréchet distance's reference images are the data set's test split cut into two disjoint,
  class-stratified halves (:func:`reference_halves`): the validation half and the test half (the metric's
  classifier is trained on the train split only). Validation samples are drawn with the noise seed
  ``run seed + validation.seed_offset``, test samples with the run's seed.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .aggregate import Estimate, best_setting, diff_ci, mean_ci
from .records import RunRecord, load_run, write_json_atomic
from .runner import RunPlan, cpu_cores, progress_bar, run_in_processes
from .spec import ExperimentSpec, SplitSpec, setting_slug

__all__ = [
    "SPLITS",
    "MethodSweep",
    "SweepJob",
    "SweepOutcome",
    "SweepSummary",
    "check_sampling_sweep",
    "collect_sweep",
    "evaluate_job",
    "evaluate_setting",
    "read_result",
    "reference_halves",
    "result_path",
    "run_sampling_sweep",
    "sweep_jobs",
]

SPLITS = {"validation": "val", "test": "test"}
"""Split -> the prefix of its result files."""
CHECKPOINT = Path("checkpoints") / "latest.pt"
"""The run's final checkpoint (it holds the EMA weights), relative to the run folder."""

EvaluateFn = Callable[["SweepJob"], dict[str, float]]


def result_path(run_dir: str | Path, split: str, setting: dict[str, Any]) -> Path:
    """``<run_dir>/sweep/<val|test>_<slug>.json``."""
    return Path(run_dir) / "sweep" / f"{SPLITS[split]}_{setting_slug(setting)}.json"


@dataclass(frozen=True)
class SweepJob:
    """One evaluation: a run's final checkpoint at one sampling setting on one split."""

    label: str
    seed: int
    run_dir: str
    split: str
    """``validation`` or ``test``."""
    setting: dict[str, Any]
    """Full sampling key -> value."""
    protocol: dict[str, Any]
    """What a stored result must match to be reused (see :func:`_protocol`)."""
    metric: str
    """The experiment's metric, the value the result file records."""
    device: str = "auto"
    """The run's ``train.device``."""

    @property
    def slug(self) -> str:
        return setting_slug(self.setting)

    @property
    def path(self) -> Path:
        return result_path(self.run_dir, self.split, self.setting)

    def stored(self) -> dict[str, Any] | None:
        """The stored result when it exists and was made with this job's protocol, else None."""
        return read_result(self.path, self.protocol)


def read_result(path: Path, protocol: dict[str, Any]) -> dict[str, Any] | None:
    """A result file's content when it exists, parses and matches ``protocol``; None otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("protocol") != json.loads(json.dumps(protocol)):
        return None
    value = data.get("value")
    return data if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class SweepOutcome:
    """What happened to a job: ``finished``, ``skipped`` (a result was stored) or ``failed``."""

    job: SweepJob
    status: str
    value: float = math.nan
    error: str = ""
    elapsed_s: float = 0.0


# -- the protocol of each split ---------------------------------------------------------------------


def _split_spec(spec: ExperimentSpec, split: str) -> SplitSpec:
    assert spec.sampling_sweep is not None
    return spec.sampling_sweep.validation if split == "validation" else spec.sampling_sweep.test


def _protocol(spec: ExperimentSpec, cfg: dict[str, Any], split: str, setting: dict[str, Any]) -> dict[str, Any]:
    """How a (run, setting) is evaluated on ``split``: the fields a stored result must match.

    Raises:
        ValueError: an image task without ``eval.n_samples`` and no ``n`` for the split.
    """
    part = _split_spec(spec, split)
    task = cfg["task"]
    out: dict[str, Any] = {"split": split, "setting": dict(setting), "train_steps": int(cfg["train"]["steps"])}
    if task.get("kind", "policy") == "policy":
        from diffpolicy_immix.app import PolicyEvalConfig

        ev = PolicyEvalConfig.from_task(task)
        out["episodes"] = part.episodes or ev.episodes
        out["seed_offset"] = part.seed_offset if split == "validation" else ev.seed_offset
    else:
        n = part.n or int((task.get("eval") or {}).get("n_samples") or 0)
        if n < 2:
            raise ValueError(
                f"experiment.sampling_sweep.{split}.n is not set and task.eval.n_samples is {n}; give n: <samples>"
            )
        offset = part.seed_offset if split == "validation" else 0
        out.update(n=n, reference=f"{split} half of the test split", sample_seed=int(cfg["seed"]) + int(offset or 0))
    return out


def _job(
    spec: ExperimentSpec,
    label: str,
    seed: int,
    run_dir: str | Path,
    cfg: dict[str, Any],
    split: str,
    setting: dict[str, Any],
) -> SweepJob:
    return SweepJob(
        label=label,
        seed=int(seed),
        run_dir=str(run_dir),
        split=split,
        setting=dict(setting),
        protocol=_protocol(spec, cfg, split, setting),
        metric=spec.metric,
        device=str((cfg.get("train") or {}).get("device", "auto")),
    )


def _seed_range(first: int, count: int) -> str:
    return f"{first}..{first + count - 1}"


def _check_policy_seeds(spec: ExperimentSpec, cfg: dict[str, Any]) -> None:
    """Validation episodes must not reuse the demonstrations' or the test episodes' seeds (those of the
    sweep's test split and of the training evaluations)."""
    from diffpolicy_immix.app import PolicyEvalConfig

    val = _protocol(spec, cfg, "validation", {})
    test = _protocol(spec, cfg, "test", {})
    demos = cfg["task"].get("demos") or {}
    ranges = [("test", test["seed_offset"], max(test["episodes"], PolicyEvalConfig.from_task(cfg["task"]).episodes))]
    if demos.get("episodes"):
        ranges.append(("demonstration", int(demos.get("seed", 0)), int(demos["episodes"])))
    lo, n = val["seed_offset"], val["episodes"]
    for name, first, count in ranges:
        if lo < first + count and first < lo + n:
            raise ValueError(
                f"experiment.sampling_sweep.validation: seeds {_seed_range(lo, n)} overlap the {name} seeds "
                f"{_seed_range(first, count)}; choose another seed_offset"
            )


def check_sampling_sweep(spec: ExperimentSpec, plans: list[RunPlan]) -> None:
    """Refuse, before any training, a grid point that a method's configuration cannot sample with, or
    validation seeds that overlap the test or demonstration seeds.

    Raises:
        ValueError: one line naming the method and the setting (or the split).
    """
    from diffpolicy_immix.app import apply_sampling, check_sampling

    if spec.sampling_sweep is None:
        return
    checked: set[str] = set()
    for plan in plans:
        if plan.label in checked:  # the seeds of a method share its configuration
            continue
        checked.add(plan.label)
        for point in spec.sampling_sweep.points:
            try:
                check_sampling(apply_sampling(plan.config, point))
            except ValueError as err:
                raise ValueError(
                    f"experiment {spec.name}, method {plan.label!r}, sampling setting {setting_slug(point)}: "
                    f"{_short(err)}"
                ) from None
        if plan.config["task"].get("kind", "policy") == "policy":
            _check_policy_seeds(spec, plan.config)
        else:
            _protocol(spec, plan.config, "validation", {})
            _protocol(spec, plan.config, "test", {})


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# -- evaluating one job -----------------------------------------------------------------------------


def reference_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, class-stratified halves of a labelled reference set: (validation, test) indices.

    Each class's indices are shuffled by a generator seeded with ``seed`` (classes in increasing order); the
    first half of each class (rounded down) is validation, the rest test. Deterministic given the labels.

    Args:
        labels: ndarray, shape (N,), integer classes.
    Returns:
        (validation, test): sorted int arrays that together hold ``0..N-1`` once.
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val, test = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        val.append(idx[: idx.size // 2])
        test.append(idx[idx.size // 2 :])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=4)
def _reference_metric(task_key: str, split: str) -> Any:
    """The task's classifier FD with one half of its test split as the reference (kept per process)."""
    import torch

    from diffpolicy_immix.app import image_metric
    from diffpolicy_immix.imagegen import ClassifierFD, make_image_dataset

    task = json.loads(task_key)
    full = image_metric(task)
    opts = dict(task.get("dataset_options") or {})
    test = make_image_dataset(
        str(task["dataset"]), split="test", root=task.get("root"), image_size=task.get("image_size"), **opts
    )
    val_idx, test_idx = reference_halves(test.labels.numpy())
    idx = val_idx if split == "validation" else test_idx
    info = {**full.info, "reference_split": f"{split} half of test"}
    return ClassifierFD(full.classifier, test.images(torch.from_numpy(idx)), info=info)


def _image_metrics(model: Any, cfg: dict[str, Any], job: SweepJob) -> dict[str, float]:
    from diffpolicy_immix.app import ImageRunEvaluator

    task = cfg["task"]
    key = json.dumps({k: task.get(k) for k in ("dataset", "root", "image_size", "dataset_options")}, sort_keys=True)
    evaluator = ImageRunEvaluator(
        _reference_metric(key, job.split),
        n=int(job.protocol["n"]),
        guidance_scale=(task.get("eval") or {}).get("guidance_scale"),
        seed=int(job.protocol["sample_seed"]),
    )
    return evaluator(model, step=int(job.protocol["train_steps"]), final=True)


def _policy_metrics(model: Any, cfg: dict[str, Any], job: SweepJob) -> dict[str, float]:
    from diffpolicy_immix.app import PolicyEvaluator

    task = dict(cfg["task"])
    task["eval"] = {
        **dict(task.get("eval") or {}),
        "episodes": int(job.protocol["episodes"]),
        "episodes_mid": None,
        "seed_offset": int(job.protocol["seed_offset"]),
        "n_videos": 0,
    }
    evaluator = PolicyEvaluator(dict(cfg, task=task), out_dir=None)
    return evaluator(model, step=int(job.protocol["train_steps"]), final=True)


def evaluate_setting(job: SweepJob) -> dict[str, float]:
    """The metrics of a run's final EMA checkpoint, rebuilt with the job's sampling setting, on its split."""
    from diffpolicy_immix.app import load_model
    from diffpolicy_immix.training.trainer import resolve_device

    checkpoint = Path(job.run_dir) / CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist")
    model, cfg = load_model(checkpoint, use_ema=True, device=resolve_device(job.device), sampling=job.setting)
    if cfg["task"].get("kind", "policy") == "policy":
        return _policy_metrics(model, cfg, job)
    return _image_metrics(model, cfg, job)


def evaluate_job(job: SweepJob, threads: int | None = None, evaluate_fn: EvaluateFn | None = None) -> SweepOutcome:
    """Evaluate one job and write its result file; a failure is returned, never raised.

    Args:
        threads: torch threads for the evaluation (None: leave as is); restored afterwards.
        evaluate_fn: ``job -> metrics`` (default :func:`evaluate_setting`).
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        metrics = (evaluate_fn or evaluate_setting)(job)
        value = metrics.get(job.metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"the evaluation gave no {job.metric!r}; it gave {', '.join(sorted(metrics))}")
    except Exception as err:  # a failing evaluation is reported, the sweep goes on
        return SweepOutcome(job, "failed", error=f"{type(err).__name__}: {_short(err)}")
    finally:
        torch.set_num_threads(previous)
    elapsed = time.perf_counter() - started
    write_json_atomic(
        job.path,
        {
            "label": job.label,
            "seed": job.seed,
            "split": job.split,
            "setting": job.setting,
            "metric": job.metric,
            "value": float(value),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)},
            "protocol": job.protocol,
            "elapsed_s": elapsed,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return SweepOutcome(job, "finished", value=float(value), elapsed_s=elapsed)


# -- the sweep --------------------------------------------------------------------------------------


def _finished_records(spec: ExperimentSpec) -> dict[str, list[RunRecord]]:
    """label -> the runs that finished training and kept their final checkpoint."""
    out: dict[str, list[RunRecord]] = {}
    for m in spec.methods:
        found = [load_run(spec.output_root, m.label, s) for s in spec.seeds]
        out[m.label] = [r for r in found if r is not None and (r.path / CHECKPOINT).is_file()]
    return out


def sweep_jobs(
    spec: ExperimentSpec,
    records: dict[str, list[RunRecord]],
    split: str,
    settings: dict[str, dict[str, Any]] | None = None,
) -> list[SweepJob]:
    """The evaluations of ``split``: every grid point of every run (validation), or each method's runs at
    ``settings[label]`` (test; methods without a setting are left out)."""
    assert spec.sampling_sweep is not None
    jobs = []
    for label, recs in records.items():
        if settings is None:
            points = spec.sampling_sweep.points
        else:
            points = [settings[label]] if label in settings else []
        for r in recs:
            jobs += [_job(spec, label, r.seed, r.path, r.config, split, p) for p in points]
    return jobs


def _run_jobs(
    spec: ExperimentSpec, jobs: list[SweepJob], stage: str, evaluate_fn: EvaluateFn | None
) -> list[SweepOutcome]:
    """Evaluate the jobs without a stored result, in this process or ``spec.parallel`` processes."""
    stored = [j.stored() is not None for j in jobs]
    outcomes = [SweepOutcome(j, "skipped") for j, done in zip(jobs, stored) if done]
    pending = [j for j, done in zip(jobs, stored) if not done]
    threads = spec.threads or max(1, cpu_cores() // spec.parallel)
    bar = progress_bar(spec, len(jobs), len(outcomes), f"{spec.name} sampling sweep, {stage}", "eval")

    def record(job: SweepJob, outcome: SweepOutcome | BaseException) -> None:
        if isinstance(outcome, BaseException):  # the worker process died
            outcome = SweepOutcome(job, "failed", error=f"{type(outcome).__name__}: {_short(outcome)}")
        outcomes.append(outcome)
        bar.update(1)
        if outcome.status == "failed":
            bar.write(f"[{job.label} seed {job.seed} {job.split} {job.slug}] FAILED: {outcome.error}")

    try:
        if spec.parallel == 1:
            for job in pending:
                record(job, evaluate_job(job, threads, evaluate_fn))
        else:
            task = functools.partial(evaluate_job, threads=threads, evaluate_fn=evaluate_fn)
            run_in_processes(task, pending, spec.parallel, threads, record)
    finally:
        bar.close()
    return outcomes


def run_sampling_sweep(spec: ExperimentSpec, evaluate_fn: EvaluateFn | None = None) -> list[SweepOutcome]:
    """Validate every finished run at every grid point, choose each method's setting on those results,
    then evaluate each method's runs at its choice on the test split. Stored results are reused.

    Args:
        evaluate_fn: ``job -> metrics``, replaces :func:`evaluate_setting` (tests); must be a module-level
            function when ``spec.parallel > 1``.
    Returns:
        Every job's outcome (failures are collected, not raised).
    """
    if spec.sampling_sweep is None:
        return []
    records = _finished_records(spec)
    outcomes = _run_jobs(spec, sweep_jobs(spec, records, "validation"), "validation", evaluate_fn)
    summary = collect_sweep(spec, records)
    chosen = {label: summary.points[m.chosen] for label, m in summary.methods.items() if m.chosen is not None}
    outcomes += _run_jobs(spec, sweep_jobs(spec, records, "test", chosen), "test", evaluate_fn)
    return outcomes


# -- reading the results back -----------------------------------------------------------------------


@dataclass
class MethodSweep:
    """One method's sampling sweep, read from its runs' result files.

    Attributes:
        seeds: the method's finished runs, sorted.
        validation: ndarray, shape (P, S): the validation metric per grid point and seed (NaN: missing).
        chosen: index of the chosen grid point (None: no point has a result for every seed).
        test: ndarray, shape (S,): the test metric at the chosen point (NaN: missing).
        test_estimate: mean of ``test`` over the seeds that have it, with a bootstrap interval.
        delta: test mean minus the baseline's (each at its own chosen point), with a bootstrap interval.
    """

    label: str
    seeds: list[int]
    validation: np.ndarray
    chosen: int | None = None
    test: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_estimate: Estimate | None = None
    delta: Estimate | None = None
    verdict: str = ""

    def validation_means(self) -> np.ndarray:
        """ndarray, shape (P,): the mean over seeds per grid point (NaN where a seed is missing)."""
        if not self.seeds:
            return np.full(self.validation.shape[0], math.nan)
        return self.validation.mean(axis=1)


@dataclass
class SweepSummary:
    """The sampling sweep of every method, and the notes that qualify it."""

    points: list[dict[str, Any]]
    slugs: list[str]
    metric: str
    higher_is_better: bool
    baseline: str
    ci: float
    validation: dict[str, Any]
    """How a validation evaluation was made: the protocol of one run, its setting left out."""
    test: dict[str, Any]
    """How a test evaluation was made, likewise."""
    methods: dict[str, MethodSweep]
    notes: list[str] = field(default_factory=list)

    def chosen(self, label: str) -> str | None:
        """The slug of a method's chosen setting."""
        m = self.methods.get(label)
        return self.slugs[m.chosen] if m is not None and m.chosen is not None else None


def _read_values(spec: ExperimentSpec, r: RunRecord, split: str, points: list[dict[str, Any]]) -> np.ndarray:
    """ndarray, shape (len(points),): one run's stored results on ``split`` (NaN where missing or stale)."""
    values = np.full(len(points), math.nan)
    for i, point in enumerate(points):
        stored = _job(spec, r.label, r.seed, r.path, r.config, split, point).stored()
        if stored is not None:
            values[i] = float(stored["value"])
    return values


def _method_sweep(spec: ExperimentSpec, label: str, records: list[RunRecord], notes: list[str]) -> MethodSweep:
    """One method's validation table, its choice (on validation only) and its test results at the choice."""
    assert spec.sampling_sweep is not None
    points = spec.sampling_sweep.points
    recs = sorted((r for r in records if r.config), key=lambda r: r.seed)
    val = np.zeros((len(points), 0))
    if recs:
        val = np.stack([_read_values(spec, r, "validation", points) for r in recs], axis=1)  # (P, S)
    has_any = np.isfinite(val).any(axis=0)  # (S,): seeds with at least one validation result
    if recs and not has_any.any():
        notes.append(f"{label}: none of its {len(recs)} finished run(s) has a validation result yet")
    recs = [r for r, ok in zip(recs, has_any) if ok]
    ms = MethodSweep(label, [r.seed for r in recs], val[:, has_any])
    if not recs:
        return ms
    incomplete = int((~np.isfinite(ms.validation).all(axis=1)).sum())
    if incomplete:
        notes.append(
            f"{label}: {incomplete} of {len(points)} settings lack a validation result for some seed and were "
            "not candidates"
        )
    ms.chosen = best_setting(ms.validation, spec.higher_is_better)
    if ms.chosen is None:
        notes.append(f"{label}: no setting has a validation result for every seed; nothing was chosen")
        return ms
    ms.test = np.array([_read_values(spec, r, "test", [points[ms.chosen]])[0] for r in recs])  # (S,)
    done = np.isfinite(ms.test)
    if done.any():
        boot = {"n_boot": spec.n_boot, "ci": spec.ci, "seed": spec.bootstrap_seed}
        ms.test_estimate = mean_ci(ms.test[done], tag=f"sweep-test/{label}", **boot)
    if not done.all():
        notes.append(f"{label}: {int((~done).sum())} of {len(recs)} seeds have no test result yet")
    return ms


def _split_protocols(spec: ExperimentSpec, records: dict[str, list[RunRecord]]) -> dict[str, dict[str, Any]]:
    """split -> how its evaluations are made (one run's protocol, without what differs between runs)."""
    cfg = next((r.config for recs in records.values() for r in recs if r.config), None)
    if cfg is None:
        return {}
    return {
        split: {k: v for k, v in _protocol(spec, cfg, split, {}).items() if k not in ("setting", "sample_seed")}
        for split in SPLITS
    }


def collect_sweep(spec: ExperimentSpec, records: dict[str, list[RunRecord]]) -> SweepSummary:
    """Read every stored validation and test result of the finished runs, choose each method's setting on
    the validation results alone, and compare the methods' test results (each at its own choice)."""
    assert spec.sampling_sweep is not None
    notes: list[str] = []
    methods = {m.label: _method_sweep(spec, m.label, records.get(m.label, []), notes) for m in spec.methods}
    _compare_tests(methods, spec)
    protocols = _split_protocols(spec, records)
    return SweepSummary(
        points=spec.sampling_sweep.points,
        slugs=[setting_slug(p) for p in spec.sampling_sweep.points],
        metric=spec.metric,
        higher_is_better=spec.higher_is_better,
        baseline=spec.baseline,
        ci=spec.ci,
        validation=protocols.get("validation", {}),
        test=protocols.get("test", {}),
        methods=methods,
        notes=notes,
    )


def _compare_tests(methods: dict[str, MethodSweep], spec: ExperimentSpec) -> None:
    """Each method's test difference from the baseline (paired over shared seeds) and a verdict, in place."""
    boot = {"n_boot": spec.n_boot, "ci": spec.ci, "seed": spec.bootstrap_seed}
    base = methods.get(spec.baseline)
    if base is None or base.test_estimate is None:
        return
    pct = f"{100 * spec.ci:g}%"
    for label, ms in methods.items():
        if label == spec.baseline or ms.test_estimate is None:
            continue
        mine = {s: v for s, v in zip(ms.seeds, ms.test) if math.isfinite(v)}
        ref = {s: v for s, v in zip(base.seeds, base.test) if math.isfinite(v)}
        shared = sorted(set(mine) & set(ref))
        paired = len(shared) == len(mine) == len(ref)
        a = np.array([mine[s] for s in shared] if paired else list(mine.values()))
        b = np.array([ref[s] for s in shared] if paired else list(ref.values()))
        d = diff_ci(a, b, paired, tag=f"sweep-delta/{label}", **boot)
        ms.delta = d
        gain_lo, gain_hi = (d.lo, d.hi) if spec.higher_is_better else (-d.hi, -d.lo)
        head = f"{label} at its best setting vs {spec.baseline} at its own: test {spec.metric} {d.value:+.4g}"
        if min(len(a), len(b)) < 2:
            ms.verdict = f"{head} (one seed: no interval; anecdotal)."
        elif gain_lo > 0:
            ms.verdict = f"{head} ({pct} CI {d.lo:+.4g} to {d.hi:+.4g}): better."
        elif gain_hi < 0:
            ms.verdict = f"{head} ({pct} CI {d.lo:+.4g} to {d.hi:+.4g}): WORSE."
        else:
            ms.verdict = f"{head} ({pct} CI {d.lo:+.4g} to {d.hi:+.4g} includes 0): no detectable difference."
