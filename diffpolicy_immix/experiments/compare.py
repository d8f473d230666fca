"""``compare``: run an experiment's sweep, aggregate the runs, draw the figures, write the report.

```python
from diffpolicy_immix.experiments import compare_main

compare_main(["experiment=reach_around", "seeds=5", "parallel=2"])  # what `dpi-compare ...` calls
```
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diffpolicy_immix.data import DatasetError
from diffpolicy_immix.errors import UserError

from .aggregate import ComparisonSummary, summarize
from .plots import write_all_plots
from .records import RunRecord, load_method_curves, load_run
from .report import compact_table, sweep_table, write_report
from .runner import RunFn, RunOutcome, describe_task, plan_runs, run_sweep
from .spec import ExperimentSpec, experiment_names, load_experiment
from .sweep import EvaluateFn, SweepOutcome, SweepSummary, check_sampling_sweep, collect_sweep, run_sampling_sweep

__all__ = ["CompareResult", "aggregate_runs", "compare", "compare_cli", "compare_main"]


@dataclass
class CompareResult:
    """What ``compare`` produced."""

    spec: ExperimentSpec
    summary: ComparisonSummary
    outcomes: list[RunOutcome]
    report: Path
    figures: dict[str, Path] = field(default_factory=dict)
    sweep: SweepSummary | None = None
    """The sampling sweep (None when the experiment has none)."""
    sweep_outcomes: list[SweepOutcome] = field(default_factory=list)

    @property
    def failures(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "busy")]

    @property
    def sweep_failures(self) -> list[SweepOutcome]:
        return [o for o in self.sweep_outcomes if o.status == "failed"]


def aggregate_runs(spec: ExperimentSpec) -> tuple[dict[str, list[RunRecord]], ComparisonSummary]:
    """Read the finished runs of ``spec`` under its output folder and compute every statistic."""
    records: dict[str, list[RunRecord]] = {}
    for m in spec.methods:
        found = [load_run(spec.output_root, m.label, s) for s in spec.seeds]
        records[m.label] = [r for r in found if r is not None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curves = {
            label: load_method_curves(label, recs, spec.metric, list(spec.table_metrics))
            for label, recs in records.items()
        }
    summary = summarize(
        curves,
        spec.baseline,
        higher_is_better=spec.higher_is_better,
        threshold=spec.threshold,
        threshold_mode=spec.threshold_mode,
        last_k=spec.last_k,
        table_metrics=spec.table_metrics,
        metric=spec.metric,
        n_boot=spec.n_boot,
        ci=spec.ci,
        seed=spec.bootstrap_seed,
    )
    summary.notes.extend(str(w.message) for w in caught)
    for name in spec.table_metrics:
        if not any(name in c.extra for c in curves.values()):
            summary.notes.append(f"table metric {name!r} is not in any eval.csv; left out")
    return records, summary


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Turn a ``ValueError`` / ``FileNotFoundError`` raised while reading the experiment, planning its runs
    or reading their files into a ``UserError`` (one line on the command line); other errors pass."""
    try:
        yield
    except (UserError, DatasetError):
        raise
    except (ValueError, FileNotFoundError) as err:
        text = str(err).strip().splitlines()
        raise UserError(text[0] if text else type(err).__name__) from err


def compare(
    spec: ExperimentSpec, run_fn: RunFn | None = None, echo: bool = True, evaluate_fn: EvaluateFn | None = None
) -> CompareResult:
    """Run (unless ``spec.run`` is false) and report an experiment: train the runs, then, with a
    ``sampling_sweep``, evaluate the finished runs' sampling settings (validation, choice, test).

    Args:
        run_fn: replaces ``app.run_training`` (tests use a synthetic one).
        echo: print the compact table and the report's path.
        evaluate_fn: replaces the sampling sweep's evaluation of a checkpoint (tests).
    """
    outcomes: list[RunOutcome] = []
    sweep_outcomes: list[SweepOutcome] = []
    if spec.run:
        with input_errors():
            plans = plan_runs(spec)
            check_sampling_sweep(spec, plans)
        outcomes = run_sweep(spec, plans, run_fn=run_fn).outcomes
        sweep_outcomes = run_sampling_sweep(spec, evaluate_fn)
    with input_errors():  # unreadable run files (final.json, eval.csv) name the file
        records, summary = aggregate_runs(spec)
        sweep = collect_sweep(spec, records) if spec.sampling_sweep is not None else None
    if not any(records.values()):
        summary.notes.append(
            f"no finished run under {spec.output_root}"
            + ("" if spec.run else " (run=false: nothing was trained; drop run=false to train)")
        )
    first = next((recs[0] for recs in records.values() if recs), None)
    task_info = describe_task(first.config) if first is not None else {"kind": "?", "text": "unknown (no finished run)"}
    figures = write_all_plots(summary, spec.output_root, name=spec.name)
    report = write_report(spec, summary, records, outcomes, task_info, figures, sweep, sweep_outcomes)
    result = CompareResult(spec, summary, outcomes, report, figures, sweep, sweep_outcomes)
    if echo:
        _echo(result)
    return result


def _echo(result: CompareResult) -> None:
    """The compact table, verdicts, notes, failures and the report's path, on the terminal."""
    spec, summary = result.spec, result.summary
    print(compact_table(spec, summary))
    for s in summary.methods.values():
        if s.verdict:
            print(f"- {s.verdict}")
    for note in summary.notes:
        print(f"- note: {note}")
    if result.sweep is not None:
        print(sweep_table(spec, result.sweep))
        for note in result.sweep.notes:
            print(f"- note: {note}")
    if result.failures:
        print(f"{len(result.failures)} run(s) failed:", file=sys.stderr)
        for o in result.failures:
            print(f"  {o.label} seed {o.seed}: {o.error}", file=sys.stderr)
    if result.sweep_failures:
        print(f"{len(result.sweep_failures)} sampling-sweep evaluation(s) failed:", file=sys.stderr)
        for so in result.sweep_failures:
            print(f"  {so.job.label} seed {so.job.seed} {so.job.split} {so.job.slug}: {so.error}", file=sys.stderr)
    print(f"report: {result.report}")


def compare_main(overrides: list[str], run_fn: RunFn | None = None) -> None:
    """``dpi-compare experiment=<name> [key=value ...]``: run, aggregate, report.

    Keys are the fields of ``ExperimentSpec`` (``seeds=5``, ``parallel=2``, ``threads=1``, ``run=false``,
    ``out_root=PATH``, ``extra=[train.steps=500]``, ...). Raises ``UserError`` with a one-line message on
    bad input; exits with status 1 (after writing the report) when a run or a sampling-sweep evaluation failed.
    """
    with input_errors():
        spec = load_experiment(None, list(overrides))
    result = compare(spec, run_fn=run_fn)
    if result.failures or result.sweep_failures:
        raise SystemExit(1)


def compare_cli(argv: list[str] | None = None) -> int:
    """Console entry point (``dpi-compare``): arguments from ``sys.argv``; a bad input prints one line
    ``error: ...`` and returns 2, a failed run returns 1, success 0."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(compare_main.__doc__)
        print(f"packaged experiments: {', '.join(experiment_names())} (see docs/compare.md)")
        return 0
    try:
        compare_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except (UserError, DatasetError) as err:
        text = str(err).strip().splitlines()
        print(f"error: {text[0] if text else type(err).__name__}", file=sys.stderr)
        return 2
    return 0
