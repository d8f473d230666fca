"""The written result of a comparison: ``<out_root>/report.md``, ``results.json``, ``sampling_sweep.csv``
(with a sampling sweep) and compact stdout tables."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from diffpolicy_immix.utils.io import atomic_write

from .aggregate import ComparisonSummary, Estimate, MethodSummary
from .records import DIAGNOSTIC_COLUMNS, RunRecord, config_differences, write_json_atomic
from .runner import RunOutcome
from .spec import ExperimentSpec
from .sweep import SweepOutcome, SweepSummary

__all__ = [
    "SWEEP_CSV",
    "compact_table",
    "render_report",
    "summary_to_dict",
    "sweep_table",
    "sweep_to_dict",
    "threshold_definition",
    "write_report",
    "write_sweep_csv",
]

SWEEP_CSV = "sampling_sweep.csv"


# -- formatting -------------------------------------------------------------------------------------


def _num(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _prefix(e: Estimate) -> str:
    return {"lower": ">= ", "upper": "<= ", "unknown": "~", "": ""}[e.bound]


def fmt_time(e: Estimate | None, budget: float, unit: str = "", digits: int = 4) -> str:
    """``1.2e+03 [1e+03, 1.5e+03]``; censored seeds are counted; all censored reads ``not reached (> B)``."""
    if e is None:
        return "n/a"
    if e.n_censored == e.n:
        return f"not reached (> {_num(budget, digits)}{unit})"
    text = f"{_prefix(e)}{_num(e.value, digits)}{unit} [{_num(e.lo, digits)}, {_num(e.hi, digits)}]"
    if e.n_censored:
        text += f" ({e.n_censored}/{e.n} not reached)"
    return text


def fmt_ratio(e: Estimate | None) -> str:
    if e is None:
        return "n/a"
    return f"{_prefix(e)}{e.value:.2f}x [{e.lo:.2f}, {e.hi:.2f}]"


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
    return _num(mean, digits) if math.isnan(std) else f"{_num(mean, digits)} ± {_num(std, digits - 1)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def threshold_definition(spec: ExperimentSpec, summary: ComparisonSummary) -> str:
    """The target level in words, with its numbers."""
    f = spec.threshold
    base = summary.methods.get(spec.baseline)
    if summary.threshold is None or base is None:
        return "No threshold: the baseline has no finished run with evaluations."
    mean = base.band[0]
    final, first, target = float(mean[-1]), float(mean[0]), summary.threshold
    m, b = f"`{spec.metric}`", f"`{spec.baseline}`"
    if spec.threshold_mode == "absolute":
        op = ">=" if spec.higher_is_better else "<="
        text = (
            f"target = **{_num(target)}** (a fixed level of {m}, e.g. the task's competence threshold); a seed "
            f"reaches it at its first evaluation with {m} {op} target."
        )
    elif spec.threshold_mode == "ratio" and spec.higher_is_better:
        text = (
            f"target = {f:g} x the final {m} of {b} (seed-mean of its last evaluation, {_num(final)}) = "
            f"**{_num(target)}**; a seed reaches it at its first evaluation with {m} >= target."
        )
    elif spec.threshold_mode == "ratio":
        text = (
            f"lower is better, so target = final {m} of {b} / {f:g} = {_num(final)} / {f:g} = **{_num(target)}** "
            f"(the level within a factor {1 / f:.3g} of the baseline's final value); a seed reaches it at its "
            f"first evaluation with {m} <= target."
        )
    else:
        op = ">=" if spec.higher_is_better else "<="
        text = (
            f"target = first + {f:g} x (final - first) of {b}'s seed-mean curve = {_num(first)} + {f:g} x "
            f"({_num(final)} - {_num(first)}) = **{_num(target)}** ({100 * f:g}% of the baseline's progress); a "
            f"seed reaches it at its first evaluation with {m} {op} target."
        )
    return text + (
        " A seed that never reaches it within the budget counts as its budget (last evaluation step or wall time):"
        " the time is then a *restricted mean*, marked `>=` (a lower bound), with the number of such seeds."
        " Speed-up = baseline time / method time (ratio of restricted means): `<=` marks an upper bound (the"
        " method has seeds that never reached the target), `>=` a lower bound (the baseline has such seeds)."
    )


def _assigner_text(cfg: dict[str, Any]) -> str:
    a = dict(cfg.get("assign") or {})
    name = str(a.pop("name", "none"))
    keep = {"knn": ("k",), "lsa": ("cost", "cost_dtype"), "sinkhorn": ("reg", "cost")}.get(name, ())
    opts = ", ".join(f"{k}={a[k]}" for k in keep if k in a)
    return f"{name} ({opts})" if opts else name


def _budget(cfg: dict[str, Any]) -> str:
    t, task = cfg.get("train", {}), cfg.get("task", {})
    parts = [f"{t.get('steps')} steps", f"batch {t.get('batch_size')}", f"evaluation every {t.get('eval_every')} steps"]
    ev = task.get("eval") or {}
    if ev.get("episodes"):
        mid = ev.get("episodes_mid", 20)
        mid = ev["episodes"] if mid is None else min(int(mid), int(ev["episodes"]))
        parts.append(
            f"{mid} episodes per evaluation during training and {ev['episodes']} at the last step "
            f"(test seeds {ev.get('seed_offset', 100000)}+i)"
        )
    if ev.get("n_samples"):
        parts.append(f"{ev['n_samples']} samples per evaluation")
    return ", ".join(parts)


# -- the report -------------------------------------------------------------------------------------


def render_report(
    spec: ExperimentSpec,
    summary: ComparisonSummary,
    records: dict[str, list[RunRecord]],
    outcomes: list[RunOutcome],
    task_info: dict[str, Any],
    figures: dict[str, Path],
    sweep: SweepSummary | None = None,
    sweep_outcomes: list[SweepOutcome] | None = None,
) -> str:
    """``report.md`` as text."""
    sections = (
        _setup_section(spec, summary, records, task_info),
        _verdict_section(spec, summary),
        _time_section(spec, summary),
        _final_section(spec, summary),
        _sweep_section(spec, sweep) if sweep is not None else [],
        _training_section(summary),
        _figures_section(figures),
        _failures_section(spec, records, outcomes, sweep_outcomes or []),
    )
    return "\n".join(line for section in sections for line in section)


def _setup_section(
    spec: ExperimentSpec,
    summary: ComparisonSummary,
    records: dict[str, list[RunRecord]],
    task_info: dict[str, Any],
) -> list[str]:
    """Title, description, setup (task, seeds, budget, bootstrap, wall clock), methods and threshold."""
    lines = [f"# Comparison: {spec.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    any_cfg = next((r[0].config for r in records.values() if r), {})
    base_cfg = records[spec.baseline][0].config if records.get(spec.baseline) else any_cfg
    lines += [
        "## Setup",
        "",
        f"- Task: `{spec.task}` ({task_info.get('kind', '?')}); dimension of the diffused data (and its noise): "
        f"{task_info.get('text', 'unknown')}. KNN selection shifts the noise distribution more at low dimension.",
        f"- Seeds per method: {len(spec.seeds)} planned ({', '.join(map(str, spec.seeds))}); finished: "
        + ", ".join(f"{k} {len(v)}" for k, v in records.items())
        + ".",
        f"- Budget per run: {_budget(any_cfg)}." if any_cfg else "- Budget per run: unknown (no finished run).",
        f"- Compared metric: `{spec.metric}` ({'higher' if spec.higher_is_better else 'lower'} is better).",
        f"- Fixed sampling setting of every evaluation during training (the verdict, time-to-threshold and "
        f"final-performance tables): {_fixed_setting(base_cfg)}"
        + (
            "; the sampling sweep below evaluates each method at its own best setting instead."
            if spec.sampling_sweep is not None
            else "; one setting can favour one method (add a `sampling_sweep` to the experiment)."
        ),
        f"- Bootstrap: {spec.n_boot} resamples of the seeds, {100 * spec.ci:g}% percentile intervals, seed "
        f"{spec.bootstrap_seed}; seeds are resampled jointly across methods when they ran the same seeds (a seed "
        "fixes initial weights, data order and training noise for every method).",
        f"- Wall time is the trainer's clock: training plus its periodic evaluations, {_threads_text(records)}.",
        "",
        "| method | overrides | assigner | objective | data_scale | differs from the baseline in |",
        "|---|---|---|---|---|---|",
    ]
    for m in spec.methods:
        recs = records.get(m.label) or []
        cfg = recs[0].config if recs else {}
        obj = cfg.get("objective", {})
        diffs = config_differences(base_cfg, cfg) if cfg and base_cfg and m.label != spec.baseline else []
        if not cfg or not base_cfg:
            diff_text = "n/a"
        else:
            diff_text = "; ".join(d.split(":")[0] for d in diffs) or ("-" if m.label == spec.baseline else "nothing")
        lines.append(
            f"| {m.label} | {' '.join(m.overrides) or '-'} | {_assigner_text(cfg) if cfg else 'n/a'} | "
            f"{obj.get('kind', 'n/a')} | {obj.get('data_scale', 'n/a')} | {diff_text} |"
        )
    lines += ["", "## Threshold", "", threshold_definition(spec, summary), ""]
    return lines


def _verdict_section(spec: ExperimentSpec, summary: ComparisonSummary) -> list[str]:
    """One sentence per method, and the notes."""
    lines: list[str] = []
    lines += ["## Verdict (fixed sampling setting)", ""]
    verdicts = [s.verdict for s in summary.methods.values() if s.verdict]
    lines += [f"- {v}" for v in verdicts] or ["- No method could be compared with the baseline."]
    lines += [f"- Note: {n}" for n in summary.notes]
    if len(spec.seeds) < 3:
        lines.append(
            f"- Note: {len(spec.seeds)} seed(s) only: intervals are missing or very rough; use >= 3 (5 for claims)."
        )
    lines.append("")
    return lines


def _time_section(spec: ExperimentSpec, summary: ComparisonSummary) -> list[str]:
    """Steps and wall time to threshold, speed-ups, per-seed steps."""
    lines: list[str] = []
    lines += ["## Time to threshold (fixed sampling setting)", ""]
    rows = []
    for label, s in summary.methods.items():
        reached = int(s.steps_est.n - s.steps_est.n_censored) if s.steps_est else 0
        rows.append(
            [
                label,
                str(s.n_seeds),
                f"{reached}/{s.n_seeds}",
                fmt_time(s.steps_est, float(s.step_budget.max()) if s.step_budget.size else math.nan),
                fmt_ratio(s.speedup_steps) if label != spec.baseline else "1 (baseline)",
                fmt_time(s.wall_est, float(s.wall_budget.max()) if s.wall_budget.size else math.nan, " s"),
                fmt_ratio(s.speedup_wall) if label != spec.baseline else "1 (baseline)",
            ]
        )
    pct = f"{100 * spec.ci:g}% CI"
    lines += _table(
        [
            "method",
            "seeds",
            "reached",
            f"steps to threshold [{pct}]",
            f"speed-up, steps [{pct}]",
            f"wall time to threshold [{pct}]",
            f"speed-up, wall time [{pct}]",
        ],
        rows,
    )
    lines += [
        "",
        "Per seed (step of the first evaluation reaching the threshold; `> B`: not reached within B steps):",
        "",
    ]
    seeds = sorted({x for s in summary.methods.values() for x in s.seeds})
    per_seed = []
    for label, s in summary.methods.items():
        cells = {
            sd: (_num(t) if math.isfinite(t) else f"> {_num(b)}") if not math.isnan(t) else "n/a"
            for sd, t, b in zip(s.seeds, s.steps_to, s.step_budget)
        }
        per_seed.append([label] + [cells.get(sd, "-") for sd in seeds])
    lines += _table(["method"] + [f"seed {sd}" for sd in seeds], per_seed)
    lines.append("")
    return lines


def _final_section(spec: ExperimentSpec, summary: ComparisonSummary) -> list[str]:
    """Diffusion Policy's table: best and last-k evaluations."""
    lines: list[str] = []
    pct = f"{100 * spec.ci:g}% CI"
    lines += [
        "## Final performance (Diffusion Policy's table, fixed sampling setting)",
        "",
        f"Per seed: the best evaluation and the mean of the last {spec.last_k} evaluations; mean ± standard "
        "deviation over seeds. Δ: difference of the last-k means from the baseline, with its bootstrap interval.",
        "",
    ]
    names = [spec.metric] + [n for n in spec.table_metrics if any(n in s.table for s in summary.methods.values())]
    header = ["method"]
    for n in names:
        header += [f"{n}: best", f"{n}: mean of last {spec.last_k}"]
    header.append(f"Δ {spec.metric} last {spec.last_k} vs {spec.baseline} [{pct}]")
    rows = []
    for label, s in summary.methods.items():
        row = [label]
        for n in names:
            t = s.table.get(n)
            row += (
                [fmt_mean_std(t["best_mean"], t["best_std"]), fmt_mean_std(t["last_mean"], t["last_std"])]
                if t
                else ["n/a", "n/a"]
            )
        d = s.delta_last_k
        row.append(f"{d.value:+.4g} [{d.lo:+.4g}, {d.hi:+.4g}]" if d else "-")
        rows.append(row)
    lines += _table(header, rows)
    lines.append("")
    return lines


def _training_section(summary: ComparisonSummary) -> list[str]:
    """Final loss, throughput and miscibility diagnostics."""
    lines: list[str] = []
    lines += [
        "## Training and miscibility",
        "",
        "Final loss: the last logged training loss (mean ± std over seeds). Throughput: median samples/s of a "
        "run, averaged over seeds. Diagnostics: means over the logged rows of `metrics.csv` "
        "(distance reduction vs random pairing in %, selected-noise norm / sqrt(D), self-recovery at t=0.5). "
        "Losses are not comparable across assigners: noise chosen near the data is easier to predict, so a "
        "lower loss is expected and is no evidence of a better model; compare the evaluation metric.",
        "",
    ]
    rows = []
    for label, s in summary.methods.items():
        rows.append(
            [label, fmt_mean_std(*s.final_loss), _num(s.samples_per_s, 4)]
            + [_num(s.diagnostics.get(c, math.nan), 4) for c in DIAGNOSTIC_COLUMNS]
        )
    lines += _table(["method", "final loss", "samples/s", *DIAGNOSTIC_COLUMNS], rows)
    lines.append("")
    return lines


def _figures_section(figures: dict[str, Path]) -> list[str]:
    """The learning-curve figures."""
    lines: list[str] = []
    if figures:
        lines += ["## Figures", ""]
        captions = {"step": "metric vs training step", "wall": "metric vs wall time", "loss": "training loss"}
        for kind, path in figures.items():
            lines += [f"![{captions.get(kind, kind)}]({path.name})", ""]
    return lines


def _failures_section(
    spec: ExperimentSpec,
    records: dict[str, list[RunRecord]],
    outcomes: list[RunOutcome],
    sweep_outcomes: list[SweepOutcome],
) -> list[str]:
    """Failed runs, runs that did not finish and failed sampling-sweep evaluations."""
    lines: list[str] = []
    failed = [o for o in outcomes if o.status in ("failed", "busy")]
    failed_evals = [o for o in sweep_outcomes if o.status == "failed"]
    missing = [
        f"{m.label}/seed{sd}"
        for m in spec.methods
        for sd in spec.seeds
        if sd not in {r.seed for r in records.get(m.label, [])}
    ]
    if failed or missing or failed_evals:
        lines += ["## Failures and missing runs", ""]
        lines += [f"- {o.label} seed {o.seed}: {o.status}: {o.error} (see {o.run_dir}/error.txt)" for o in failed]
        if missing:
            lines.append(f"- Not finished (left out of every table): {', '.join(missing)}")
        lines += [
            f"- sampling sweep, {o.job.label} seed {o.job.seed}, {o.job.split} at {o.job.slug}: {o.error}"
            for o in failed_evals
        ]
        lines.append("")
    return lines


def _fixed_setting(cfg: dict[str, Any]) -> str:
    """The sampling setting a run configuration evaluates with: ``sampler ddim, 10 steps[, guidance 2]``."""
    if not cfg:
        return "unknown (no finished run)"
    obj, task = cfg.get("objective") or {}, cfg.get("task") or {}
    steps = obj.get("num_inference_steps") or task.get("num_inference_steps") or 10
    text = f"sampler {obj.get('sampler') or 'default'}, {steps} steps"
    if task.get("kind") == "image":
        text += f", guidance {(task.get('eval') or {}).get('guidance_scale', 'default')}"
    return text


# -- the sampling sweep -----------------------------------------------------------------------------


def _split_text(protocol: dict[str, Any], split: str) -> str:
    """One split of the sampling sweep in words."""
    if "episodes" in protocol:
        return f"{protocol['episodes']} episodes on seeds {protocol['seed_offset']}+i"
    if "n" in protocol:
        seed = "the run's seed" + (" + the validation offset" if split == "validation" else "")
        return (
            f"{protocol['n']} samples per run, their noise seeded with {seed}, scored against the {split} half "
            "of the data set's test split"
        )
    return "no result yet"


def _sweep_section(spec: ExperimentSpec, sweep: SweepSummary) -> list[str]:
    """Validation metric per grid point and method, each method's choice, and the test comparison."""
    m = f"`{spec.metric}`"
    pct = f"{100 * spec.ci:g}% CI"
    lines = [
        "## Sampling settings chosen on the validation split",
        "",
        f"Every finished run's final EMA checkpoint is evaluated at each of the {len(sweep.points)} sampling "
        f"settings of the grid on the validation split ({_split_text(sweep.validation, 'validation')}). Per "
        f"method, the setting with the best mean {m} over its seeds is chosen there (validation results only), "
        f"and every run of the method is evaluated at that one setting on the test split "
        f"({_split_text(sweep.test, 'test')}). Each method is thus compared at its own best setting; the "
        "tables above use the one fixed setting.",
        "",
        f"Validation {m}, mean over seeds ({'higher' if spec.higher_is_better else 'lower'} is better; "
        "**bold**: the method's choice; per-seed values in `results.json` and `sampling_sweep.csv`):",
        "",
    ]
    labels = list(sweep.methods)
    rows = []
    for i, slug in enumerate(sweep.slugs):
        cells = []
        for label in labels:
            ms = sweep.methods[label]
            cell = _num(float(ms.validation_means()[i])) if ms.seeds else "n/a"
            cells.append(f"**{cell}**" if ms.chosen == i else cell)
        rows.append([f"`{slug}`", *cells])
    counts = {label: len(sweep.methods[label].seeds) for label in labels}
    header = ["setting", *[f"{label} ({n} seed{'' if n == 1 else 's'})" for label, n in counts.items()]]
    lines += _table(header, rows)
    lines += ["", f"Test {m}, each method at its own chosen setting:", ""]
    rows = []
    for label, ms in sweep.methods.items():
        per_seed = ", ".join(f"{sd}: {_num(float(v))}" for sd, v in zip(ms.seeds, ms.test)) if ms.test.size else "-"
        e, d = ms.test_estimate, ms.delta
        rows.append(
            [
                label,
                f"`{sweep.chosen(label)}`" if ms.chosen is not None else "none",
                per_seed,
                f"{_num(e.value)} [{_num(e.lo)}, {_num(e.hi)}]" if e else "n/a",
                "baseline" if label == spec.baseline else (f"{d.value:+.4g} [{d.lo:+.4g}, {d.hi:+.4g}]" if d else "-"),
            ]
        )
    header = ["method", "chosen setting", "test per seed", f"mean [{pct}]", f"Δ vs {spec.baseline} [{pct}]"]
    lines += _table(header, rows)
    lines.append("")
    lines += [f"- {ms.verdict}" for ms in sweep.methods.values() if ms.verdict]
    lines += [f"- Note: {n}" for n in sweep.notes]
    lines.append("")
    return lines


def sweep_to_dict(sweep: SweepSummary) -> dict[str, Any]:
    """The sampling sweep for ``results.json``: per method the validation metric per setting (mean and per
    seed), the choice, and the test metric per seed with its mean, interval and difference from the baseline."""

    def finite(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    methods = {}
    for label, ms in sweep.methods.items():
        means = ms.validation_means()
        methods[label] = {
            "seeds": ms.seeds,
            "validation": {
                slug: {
                    "mean": finite(float(means[i])),
                    "per_seed": {str(sd): finite(float(v)) for sd, v in zip(ms.seeds, ms.validation[i])},
                }
                for i, slug in enumerate(sweep.slugs)
            },
            "chosen": sweep.chosen(label),
            "chosen_setting": sweep.points[ms.chosen] if ms.chosen is not None else None,
            "test": {
                "per_seed": {str(sd): finite(float(v)) for sd, v in zip(ms.seeds, ms.test)},
                "estimate": ms.test_estimate.to_dict() if ms.test_estimate else None,
            },
            "delta_vs_baseline": ms.delta.to_dict() if ms.delta else None,
            "verdict": ms.verdict,
        }
    return {
        "settings": [{"slug": slug, "setting": p} for slug, p in zip(sweep.slugs, sweep.points)],
        "validation": sweep.validation,
        "test": sweep.test,
        "methods": methods,
        "notes": sweep.notes,
    }


def write_sweep_csv(path: Path, sweep: SweepSummary) -> None:
    """One row per (method, seed, split, setting) with a result: the raw figures behind the sweep's tables."""
    keys = list(sweep.points[0]) if sweep.points else []
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "split", "setting", *keys, sweep.metric, "chosen"])
        for label, ms in sweep.methods.items():
            for i, (slug, point) in enumerate(zip(sweep.slugs, sweep.points)):
                for sd, v in zip(ms.seeds, ms.validation[i]):
                    if math.isfinite(v):
                        w.writerow([label, sd, "validation", slug, *point.values(), v, int(ms.chosen == i)])
            if ms.chosen is not None:
                point = sweep.points[ms.chosen]
                for sd, v in zip(ms.seeds, ms.test):
                    if math.isfinite(v):
                        w.writerow([label, sd, "test", sweep.slugs[ms.chosen], *point.values(), v, 1])


def sweep_table(spec: ExperimentSpec, sweep: SweepSummary) -> str:
    """The sampling sweep for the terminal: each method's chosen setting and test metric."""
    rows = []
    for label, ms in sweep.methods.items():
        e, d = ms.test_estimate, ms.delta
        rows.append(
            [
                label,
                sweep.chosen(label) or "none",
                f"{_num(e.value)} [{_num(e.lo)}, {_num(e.hi)}]" if e else "n/a",
                "baseline" if label == spec.baseline else (f"{d.value:+.4g} [{d.lo:+.4g}, {d.hi:+.4g}]" if d else "-"),
            ]
        )
    header = ["method", "chosen on validation", f"test {spec.metric} [CI]", f"Δ vs {spec.baseline} [CI]"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["sampling sweep: each method at its own best setting"]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _threads_text(records: dict[str, list[RunRecord]]) -> str:
    threads = sorted({r.final.get("threads") for recs in records.values() for r in recs if r.final.get("threads")})
    hosts = sorted({str(r.final.get("host")) for recs in records.values() for r in recs if r.final.get("host")})
    text = f"torch threads per run: {', '.join(map(str, threads)) or 'unknown'}"
    if hosts:
        text += f"; host(s): {', '.join(hosts)}"
    return text + " (compare wall times only between runs made under the same load)"


def summary_to_dict(spec: ExperimentSpec, summary: ComparisonSummary, task_info: dict[str, Any]) -> dict[str, Any]:
    """Machine-readable results (``results.json``)."""

    def est(e: Estimate | None) -> dict[str, Any] | None:
        return e.to_dict() if e is not None else None

    def method(s: MethodSummary) -> dict[str, Any]:
        return {
            "n_seeds": s.n_seeds,
            "seeds": s.seeds,
            "steps": s.steps.tolist(),
            "mean": s.band[0].tolist(),
            "lo": s.band[1].tolist(),
            "hi": s.band[2].tolist(),
            "wall_x": s.wall_x.tolist(),
            "steps_to_threshold": [None if not math.isfinite(x) else x for x in s.steps_to.tolist()],
            "wall_to_threshold": [None if not math.isfinite(x) else x for x in s.wall_to.tolist()],
            "steps_estimate": est(s.steps_est),
            "wall_estimate": est(s.wall_est),
            "speedup_steps": est(s.speedup_steps),
            "speedup_wall": est(s.speedup_wall),
            "table": s.table,
            "delta_last_k": est(s.delta_last_k),
            "final_loss": {"mean": s.final_loss[0], "std": s.final_loss[1]},
            "diagnostics": s.diagnostics,
            "samples_per_s": s.samples_per_s,
            "verdict": s.verdict,
            "gain": s.gain,
        }

    return {
        "experiment": spec.to_dict(),
        "task": {k: v for k, v in task_info.items() if k != "shape"} | {"shape": list(task_info.get("shape") or [])},
        "metric": summary.metric,
        "higher_is_better": summary.higher_is_better,
        "baseline": summary.baseline,
        "threshold": summary.threshold,
        "threshold_mode": summary.threshold_mode,
        "threshold_fraction": summary.threshold_fraction,
        "notes": summary.notes,
        "methods": {k: method(s) for k, s in summary.methods.items()},
    }


def write_report(
    spec: ExperimentSpec,
    summary: ComparisonSummary,
    records: dict[str, list[RunRecord]],
    outcomes: list[RunOutcome],
    task_info: dict[str, Any],
    figures: dict[str, Path],
    sweep: SweepSummary | None = None,
    sweep_outcomes: list[SweepOutcome] | None = None,
) -> Path:
    """Write ``report.md``, ``results.json`` and, with a sampling sweep, ``sampling_sweep.csv`` into
    ``spec.output_root`` (atomically); returns the report path."""
    out = spec.output_root
    out.mkdir(parents=True, exist_ok=True)
    text = render_report(spec, summary, records, outcomes, task_info, figures, sweep, sweep_outcomes)
    path = out / "report.md"
    with atomic_write(path) as f:
        f.write(text + "\n")
    results = summary_to_dict(spec, summary, task_info)
    if sweep is not None:
        results["sampling_sweep"] = sweep_to_dict(sweep)
        write_sweep_csv(out / SWEEP_CSV, sweep)
    write_json_atomic(out / "results.json", results)
    return path


def compact_table(spec: ExperimentSpec, summary: ComparisonSummary) -> str:
    """A few columns for the terminal: final metrics, wall time, steps to threshold, speed-ups, gain."""
    finals = [spec.metric, *[m for m in spec.table_metrics if m != spec.metric]]
    header = [
        "method",
        "seeds",
        *[f"final {m}" for m in finals],
        "wall time",
        "steps to thr. [CI]",
        "speed-up [CI]",
        "wall speed-up [CI]",
        f"last-{spec.last_k} {spec.metric}",
        "gain",
    ]
    rows = []
    for label, s in summary.methods.items():
        t = s.table.get(spec.metric)
        is_base = label == spec.baseline
        final_cells = []
        for m in finals:
            tm = s.table.get(m)
            final_cells.append(fmt_mean_std(tm["final_mean"], tm["final_std"], 3) if tm else "n/a")
        wall = s.wall_budget[np.isfinite(s.wall_budget)] if s.wall_budget.size else s.wall_budget
        rows.append(
            [
                label,
                str(s.n_seeds),
                *final_cells,
                f"{float(np.mean(wall)):.0f} s" if wall.size else "n/a",
                fmt_time(s.steps_est, float(s.step_budget.max()) if s.step_budget.size else math.nan, digits=4),
                "baseline" if is_base else fmt_ratio(s.speedup_steps),
                "baseline" if is_base else fmt_ratio(s.speedup_wall),
                fmt_mean_std(t["last_mean"], t["last_std"], 3) if t else "n/a",
                "-" if is_base else (s.gain or "n/a"),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    thr = (
        f"{spec.metric} {'>=' if spec.higher_is_better else '<='} {_num(summary.threshold)}"
        if summary.threshold is not None
        else "none"
    )
    out.append(
        f"threshold: {thr} ({spec.threshold_mode}, fraction {spec.threshold:g} of {spec.baseline}); "
        f"{100 * spec.ci:g}% bootstrap CIs over seeds"
    )
    return "\n".join(out)
