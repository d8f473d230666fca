"""Plot single training runs' evaluations against wall time and steps, one PNG per metric.

    python scripts/plot_trials.py OUT.png RUN_DIR[=LABEL] [RUN_DIR[=LABEL] ...] [--metric success_rate]
        [--threshold 0.85]

Each RUN_DIR is a `dpi-train` output folder (its eval.csv is read). Used for the recipe trials in
docs/results.md ("Time to competence"), where single exploratory runs are compared rather than seeds.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_eval(run: Path, metric: str) -> tuple[list[float], list[float], list[float]]:
    """(steps, wall times in minutes, metric values) of a run's eval.csv."""
    path = run / "eval.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no eval.csv (is {run} a dpi-train output folder?)")
    rows = list(csv.DictReader(path.open()))
    if rows and metric not in rows[0]:
        raise SystemExit(f"error: {path}: no column {metric!r} (columns: {', '.join(rows[0])})")
    return (
        [float(r["step"]) for r in rows],
        [float(r["wall_time"]) / 60 for r in rows],
        [float(r[metric]) for r in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--metric", default="success_rate")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for spec in args.runs:
        path, _, label = spec.partition("=")
        steps, minutes, values = read_eval(Path(path), args.metric)
        label = label or Path(path).name
        axes[0].plot(minutes, values, marker="o", label=label)
        axes[1].plot(steps, values, marker="o", label=label)
    for ax, xlabel in zip(axes, ("wall time (min, training + evaluations)", "training step")):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if args.threshold is not None:
            ax.axhline(args.threshold, color="k", ls="--", lw=1, label="competence threshold")
    axes[0].set_ylabel(args.metric)
    axes[1].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
