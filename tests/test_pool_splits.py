"""scripts/pool_splits.py: the new episode block is recovered from the two test means, and the pooled
score is episode-weighted; a missing setting is a one-line error."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pool_splits.py"
SETTING = "sampler=ddim,steps=100"


def _write(path: Path, rows: list[tuple[str, int, str, float]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "split", "setting", "mean_max_reward"])
        w.writerows([m, s, split, SETTING, v] for m, s, split, v in rows)
    return path


def _run(tmp_path: Path, setting: str = SETTING) -> subprocess.CompletedProcess:
    # Seed 0: validation 0.6, test episodes 1-50 0.8, episodes 51-100 0.6 -> the 100-episode mean is 0.7.
    earlier = _write(
        tmp_path / "earlier.csv",
        [
            ("none", 0, "validation", 0.6),
            ("none", 0, "test", 0.8),
            ("none", 1, "validation", 0.5),
            ("none", 1, "test", 0.5),
        ]
        + [("x", 0, "validation", 0.7), ("x", 0, "test", 0.9), ("x", 1, "validation", 0.5), ("x", 1, "test", 0.6)],
    )
    longer = _write(
        tmp_path / "longer.csv",
        [("none", 0, "test", 0.7), ("none", 1, "test", 0.5), ("x", 0, "test", 0.8), ("x", 1, "test", 0.6)],
    )
    cmd = [sys.executable, str(SCRIPT), "--earlier", str(earlier), "--longer", str(longer), "--setting", setting]
    cmd += ["--episodes", "50", "50", "100", "--out", str(tmp_path / "pooled.csv")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_blocks_and_pooled_scores(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "pooled.csv").open() as f:
        table = {(r["method"], int(r["seed"]), r["block"]): float(r["mean_max_reward"]) for r in csv.DictReader(f)}
    assert table[("none", 0, "test 51-100")] == pytest.approx(0.6, abs=1e-4)  # 2 x 0.7 - 0.8
    assert table[("x", 0, "test 51-100")] == pytest.approx(0.7, abs=1e-4)  # 2 x 0.8 - 0.9
    assert table[("none", 0, "validation + test (150)")] == pytest.approx((50 * 0.6 + 100 * 0.7) / 150, abs=1e-4)
    assert table[("none", 1, "test 1-100")] == pytest.approx(0.5, abs=1e-4)
    # x - none on the 150 episodes: seed 0 0.7667 - 0.6667 = 0.1, seed 1 0.5667 - 0.5 = 0.0667; mean 0.0833.
    assert "vs none +0.083" in result.stdout


def test_unknown_setting_is_one_line(tmp_path: Path) -> None:
    result = _run(tmp_path, setting="sampler=ddpm")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "no validation rows at setting 'sampler=ddpm'" in result.stderr


def test_sweep_mode_pools_each_methods_chosen_setting(tmp_path: Path) -> None:
    # none chose setting A, x chose B; rows at the setting a method did not choose must be ignored.
    rows = [
        ("none", 0, "validation", "A", 0.6, 1),
        ("none", 0, "validation", "B", 0.9, 0),
        ("none", 0, "test", "A", 0.75, 1),
        ("x", 0, "validation", "A", 0.1, 0),
        ("x", 0, "validation", "B", 0.8, 1),
        ("x", 0, "test", "B", 0.8, 1),
    ]
    rows += [(m, 1, split, st, v - 0.1, c) for m, _, split, st, v, c in rows]
    path = tmp_path / "sampling_sweep.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "split", "setting", "mean_max_reward", "chosen"])
        w.writerows(rows)
    cmd = [sys.executable, str(SCRIPT), "--sweep", str(path), "--episodes", "50", "100"]
    result = subprocess.run([*cmd, "--out", str(tmp_path / "pooled.csv")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "pooled.csv").open() as f:
        table = {(r["method"], int(r["seed"]), r["block"]): float(r["mean_max_reward"]) for r in csv.DictReader(f)}
    assert table[("none", 0, "validation (50)")] == pytest.approx(0.6, abs=1e-4)
    assert table[("x", 0, "validation (50)")] == pytest.approx(0.8, abs=1e-4)
    assert table[("none", 0, "validation + test (150)")] == pytest.approx((50 * 0.6 + 100 * 0.75) / 150, abs=1e-4)
    assert table[("x", 1, "validation + test (150)")] == pytest.approx((50 * 0.7 + 100 * 0.7) / 150, abs=1e-4)
    # x - none pooled: seed 0 0.8 - 0.7 = 0.1, seed 1 0.7 - 0.6 = 0.1.
    assert "vs none +0.100" in result.stdout

    mixed = subprocess.run([*cmd, "--setting", "A"], capture_output=True, text=True, timeout=120)
    assert mixed.returncode != 0 and mixed.stderr.strip().count("\n") == 0
    assert "--sweep takes --episodes VAL TEST" in mixed.stderr
