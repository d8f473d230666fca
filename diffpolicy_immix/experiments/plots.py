"""Figures of a comparison (matplotlib, Agg backend, PNG written atomically).

- ``learning_curves_step.png``: the metric against training steps, mean over seeds with its bootstrap band,
  the threshold as a dashed line.
- ``learning_curves_wall.png``: the same against training wall-clock time (x = the seed-mean wall time of
  each evaluation).
- ``loss.png``: the training loss (mean and band over seeds), log scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffpolicy_immix.utils.io import atomic_path

from .aggregate import ComparisonSummary

__all__ = ["plot_learning_curves", "plot_loss", "write_all_plots"]

FILES = {"step": "learning_curves_step.png", "wall": "learning_curves_wall.png", "loss": "loss.png"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _colors(labels: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def plot_learning_curves(summary: ComparisonSummary, path: str | Path, x: str = "step", title: str = "") -> Path:
    """Metric vs ``x`` (``"step"`` or ``"wall"``) for every method: mean line, bootstrap band, threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        colors = _colors(list(summary.methods))
        for label, m in summary.methods.items():
            mean, lo, hi = m.band
            xs = m.steps if x == "step" else m.wall_x
            ax.plot(xs, mean, marker="o", ms=3, color=colors[label], label=f"{label} ({m.n_seeds} seeds)")
            if m.n_seeds > 1:
                ax.fill_between(xs, lo, hi, color=colors[label], alpha=0.2, linewidth=0)
        if summary.threshold is not None:
            ax.axhline(summary.threshold, color="k", linestyle="--", linewidth=1, label="threshold")
        ax.set_xlabel("training step" if x == "step" else "training wall time (s)")
        direction = "higher is better" if summary.higher_is_better else "lower is better"
        ax.set_ylabel(f"{summary.metric} ({direction})")
        ax.set_title(title or f"{summary.metric}: mean and {100 * summary.ci:g}% bootstrap band over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_loss(summary: ComparisonSummary, path: str | Path, title: str = "") -> Path | None:
    """Training loss vs step for every method (mean and band over seeds); None when no method logged loss."""
    methods = {k: m for k, m in summary.methods.items() if m.loss_band is not None and m.loss_steps is not None}
    if not methods:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        colors = _colors(list(summary.methods))
        for label, m in methods.items():
            assert m.loss_band is not None and m.loss_steps is not None
            mean, lo, hi = m.loss_band
            ok = np.isfinite(mean)
            ax.plot(m.loss_steps[ok], mean[ok], color=colors[label], label=label)
            if m.n_seeds > 1:
                ax.fill_between(m.loss_steps[ok], lo[ok], hi[ok], color=colors[label], alpha=0.2, linewidth=0)
        if all(np.nanmin(m.loss_band[0]) > 0 for m in methods.values() if m.loss_band is not None):
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss")
        ax.set_title(title or "training loss: mean and band over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def write_all_plots(summary: ComparisonSummary, out_root: str | Path, name: str = "") -> dict[str, Path]:
    """All figures into ``out_root`` (titles start with ``name``); returns kind -> path of those written."""
    out = Path(out_root)
    head = f"{name}: " if name else ""
    band = f"mean and {100 * summary.ci:g}% band over seeds"
    written: dict[str, Path] = {}
    if summary.methods:
        for kind in ("step", "wall"):
            written[kind] = plot_learning_curves(summary, out / FILES[kind], kind, f"{head}{summary.metric}, {band}")
    loss = plot_loss(summary, out / FILES["loss"], f"{head}training loss, {band}")
    if loss is not None:
        written["loss"] = loss
    return written
