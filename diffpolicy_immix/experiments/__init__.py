"""Comparison runs across noise assigners and seeds: learning curves, time-to-threshold speed-ups with
bootstrap intervals, Diffusion Policy's best / last-k table, figures and a report.

    from diffpolicy_immix.experiments import compare_main
    compare_main(["experiment=reach_around", "seeds=5"])   # writes runs/compare/reach_around/report.md

With a ``sampling_sweep`` block, each method is also evaluated at its own best sampling setting, chosen on
a validation split (``sweep.py``).

See docs/compare.md.
"""

from .aggregate import ComparisonSummary, Estimate, MethodCurves, summarize
from .compare import CompareResult, aggregate_runs, compare, compare_cli, compare_main
from .spec import ExperimentSpec, MethodSpec, SamplingSweepSpec, SplitSpec, experiment_names, load_experiment
from .sweep import SweepSummary, collect_sweep, run_sampling_sweep

__all__ = [
    "CompareResult",
    "ComparisonSummary",
    "Estimate",
    "ExperimentSpec",
    "MethodCurves",
    "MethodSpec",
    "SamplingSweepSpec",
    "SplitSpec",
    "SweepSummary",
    "aggregate_runs",
    "collect_sweep",
    "compare",
    "compare_cli",
    "compare_main",
    "experiment_names",
    "load_experiment",
    "run_sampling_sweep",
    "summarize",
]
