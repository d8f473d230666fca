"""Reading finished runs back: ``final.json``, ``eval.csv`` and ``metrics.csv`` of each run folder.

A run folder is ``<out_root>/<label>/seed<seed>``. It counts as finished when ``final.json`` exists (the
runner writes it atomically after training returns). ``load_method_curves`` turns the runs of one method
into the aligned arrays of ``aggregate.MethodCurves``.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffpolicy_immix.utils.io import atomic_write

from .aggregate import MethodCurves

__all__ = [
    "DIAGNOSTIC_COLUMNS",
    "FINAL_FILE",
    "RunRecord",
    "config_differences",
    "load_method_curves",
    "load_run",
    "read_columns",
    "run_dir",
    "write_json_atomic",
]

FINAL_FILE = "final.json"
DIAGNOSTIC_COLUMNS = ("distance_reduction_pct", "noise_norm_ratio", "self_recovery@0.5")


def run_dir(out_root: str | Path, label: str, seed: int) -> Path:
    """``<out_root>/<label>/seed<seed>``."""
    return Path(out_root) / label / f"seed{seed}"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and move it into place."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _to_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_columns(path: str | Path) -> dict[str, np.ndarray]:
    """A wide CSV log as float columns (empty or non-numeric cells become NaN); rows with a repeated
    ``step`` keep the last one."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "step" in rows[0]:
        by_step: dict[float, dict[str, str]] = {}
        for r in rows:
            by_step[_to_float(r["step"])] = r
        rows = [by_step[s] for s in sorted(by_step) if not math.isnan(s)]
    names = list(rows[0]) if rows else []
    return {name: np.array([_to_float(r.get(name, "")) for r in rows], dtype=float) for name in names}


@dataclass
class RunRecord:
    """One run's files, read back."""

    label: str
    seed: int
    path: Path
    finished: bool
    final: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.final.get("config") or {})


def load_run(out_root: str | Path, label: str, seed: int, include_unfinished: bool = False) -> RunRecord | None:
    """The run of (label, seed) under ``out_root``; None when it has not finished (unless asked)."""
    path = run_dir(out_root, label, seed)
    final_path = path / FINAL_FILE
    finished = final_path.is_file()
    if not finished and not include_unfinished:
        return None
    final: dict[str, Any] = {}
    if finished:
        try:
            final = json.loads(final_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{final_path}: not valid JSON ({err.msg}); delete it to rerun the run") from None
    rec = RunRecord(label, seed, path, finished, final)
    if (path / "eval.csv").is_file():
        rec.eval = read_columns(path / "eval.csv")
    if (path / "metrics.csv").is_file():
        rec.metrics = read_columns(path / "metrics.csv")
    return rec


def load_method_curves(
    label: str, records: list[RunRecord], metric: str, extra_metrics: list[str] | tuple[str, ...] = ()
) -> MethodCurves:
    """Align one method's runs on the evaluation steps they all have.

    Raises:
        ValueError: a run's ``eval.csv`` lacks ``metric`` (the message names the file and its columns).
    """
    records = sorted((r for r in records if r.eval), key=lambda r: r.seed)
    for r in records:
        if metric not in r.eval:
            cols = ", ".join(c for c in r.eval if c not in ("step", "epoch")) or "none"
            raise ValueError(f"{r.path / 'eval.csv'} has no column {metric!r}; its metrics: {cols}")
    if not records:
        return MethodCurves(label, np.zeros(0, int), np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0)))
    common = set(records[0].eval["step"].tolist())
    for r in records[1:]:
        common &= set(r.eval["step"].tolist())
    dropped = sum(len(r.eval["step"]) for r in records) - len(common) * len(records)
    if dropped:
        warnings.warn(
            f"{label}: {dropped} evaluation(s) are not shared by all seeds and are left out of the curves",
            stacklevel=2,
        )
    steps = np.array(sorted(common), dtype=float)

    def aligned(r: RunRecord, column: str) -> np.ndarray:
        pos = {s: i for i, s in enumerate(r.eval["step"].tolist())}
        col = r.eval.get(column)
        if col is None:
            return np.full(steps.size, np.nan)
        return np.array([col[pos[s]] for s in steps], dtype=float)

    values = np.stack([aligned(r, metric) for r in records])
    wall = np.stack([aligned(r, "wall_time") for r in records])
    extra = {
        name: np.stack([aligned(r, name) for r in records])
        for name in extra_metrics
        if any(name in r.eval for r in records)
    }

    loss_steps = np.array(sorted({s for r in records for s in r.metrics.get("step", np.zeros(0)).tolist()}))
    loss = np.full((len(records), loss_steps.size), np.nan)
    diagnostics: dict[str, np.ndarray] = {}
    throughput = np.full(len(records), np.nan)
    for i, r in enumerate(records):
        if "step" in r.metrics and "loss" in r.metrics:
            idx = np.searchsorted(loss_steps, r.metrics["step"])
            loss[i, idx] = r.metrics["loss"]
        if "samples_per_s" in r.metrics and np.isfinite(r.metrics["samples_per_s"]).any():
            throughput[i] = float(np.nanmedian(r.metrics["samples_per_s"]))
        for name in DIAGNOSTIC_COLUMNS:
            col = r.metrics.get(name)
            if col is not None and np.isfinite(col).any():
                diagnostics.setdefault(name, np.full(len(records), np.nan))[i] = float(np.nanmean(col))
    return MethodCurves(
        label=label,
        seeds=np.array([r.seed for r in records]),
        steps=steps,
        values=values,
        wall=wall,
        extra=extra,
        loss_steps=loss_steps,
        loss=loss,
        diagnostics=diagnostics,
        samples_per_s=throughput,
    )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


IGNORED_KEYS = ("seed", "out_dir", "resume", "train.seed")


def config_differences(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = IGNORED_KEYS) -> list[str]:
    """Dotted keys whose values differ between two run configurations (``key: a -> b``), in ``a``'s order;
    keys present in only one of them are listed as ``key: (absent) -> value``."""
    fa, fb = _flatten(a), _flatten(b)
    out = []
    for key in list(fa) + [k for k in fb if k not in fa]:
        if key in ignore:
            continue
        va, vb = fa.get(key, "(absent)"), fb.get(key, "(absent)")
        if va != vb:
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out
