"""Comparison runs across noise assigners and seeds: learning curves, time-to-threshold speed-ups with
bootstrap intervals, Diffusion Policy's best / last-k table, figures and a report.

    from diffpolicy_immix.experiments import compare_main
    compare_main(["experiment=reach_around", "seeds=5"])   # writes runs/compare/reach_around/report.md

See docs/compare.md.
"""

from .aggregate import ComparisonSummary, Estimate, MethodCurves, summarize
from .compare import CompareResult, aggregate_runs, compare, compare_cli, compare_main
from .spec import ExperimentSpec, MethodSpec, experiment_names, load_experiment

__all__ = [
    "CompareResult",
    "ComparisonSummary",
    "Estimate",
    "ExperimentSpec",
    "MethodCurves",
    "MethodSpec",
    "aggregate_runs",
    "compare",
    "compare_cli",
    "compare_main",
    "experiment_names",
    "load_experiment",
    "summarize",
]
