"""The user-facing commands, run as a user runs them (subprocesses of the installed console scripts), on
tiny budgets: collect -> inspect -> train -> evaluate for policies, train -> sample for images, and the
one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}


def run(cmd: str, *args: str, cwd: Path, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / cmd), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{cmd} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """Eight ReachAround expert episodes collected through dpi-collect."""
    root = tmp_path_factory.mktemp("demos")
    proc = run("dpi-collect", "task=reach_around", "episodes=8", "seed=3", "out=ra.zarr", cwd=root)
    assert "expert success 8/8" in proc.stdout
    return root / "ra.zarr"


def test_data_info_and_validate(demos: Path, tmp_path: Path) -> None:
    info = run("dpi-data", "info", str(demos), cwd=tmp_path).stdout
    assert "episodes    8" in info and "task: 'immix/ReachAround-v0'" in info and "obs " in info
    assert "valid (8 episodes" in run("dpi-data", "validate", str(demos), cwd=tmp_path).stdout
    bad = run("dpi-data", "validate", str(tmp_path / "missing.zarr"), cwd=tmp_path, ok=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "missing.zarr" in bad.stderr


def test_train_evaluate_policy_and_resume(demos: Path, tmp_path: Path) -> None:
    common = [
        "task=reach_around",
        f"task.dataset={demos}",
        "train=quick",
        "train.steps=6",
        "train.eval_every=6",
        "train.checkpoint_every=3",
        "train.log_every=2",
        "train.diag_every=2",
        "task.eval.episodes=2",
        "task.eval.n_envs=2",
        "assign=knn",
        "assign.k=2",
        "out_dir=run",
        "threads=1",
    ]
    run("dpi-train", *common, cwd=tmp_path)
    out = tmp_path / "run"
    assert (out / "checkpoints" / "latest.pt").is_file() and (out / "config.yaml").is_file()
    evals = rows(out / "eval.csv")
    assert [r["step"] for r in evals] == ["6"] and 0.0 <= float(evals[0]["success_rate"]) <= 1.0
    metrics = rows(out / "metrics.csv")
    assert float(metrics[-1]["distance_reduction_pct"]) > 0  # knn noise is closer than random pairing

    run("dpi-eval", f"checkpoint={out / 'checkpoints' / 'latest.pt'}", "episodes=3", "n_envs=3", cwd=tmp_path)
    result = json.loads((out / "eval" / "latest" / "metrics.json").read_text())
    assert result["n_episodes"] == 3 and 0.0 <= result["success_rate"] <= 1.0
    seeds = [int(r["seed"]) for r in rows(out / "eval" / "latest" / "episodes.csv")]
    assert seeds == [100000, 100001, 100002]

    # a longer budget resumes from the step-6 checkpoint instead of starting over
    run("dpi-train", *common[:3], "train.steps=9", *common[4:], "resume=true", cwd=tmp_path)
    steps = [int(r["step"]) for r in rows(out / "metrics.csv")]
    assert steps == [2, 4, 6, 8, 9]  # rows continue after step 6; the final step is always logged


def test_train_and_sample_image_model(tmp_path: Path) -> None:
    run(
        "dpi-train",
        "task=image_digits",
        "train=quick",
        "train.steps=4",
        "train.batch_size=16",
        "task.eval.n_samples=0",
        "assign=lsa",
        "objective=flow_matching",
        "objective.num_inference_steps=3",
        "out_dir=img",
        "threads=1",
        cwd=tmp_path,
    )
    ckpt = tmp_path / "img" / "checkpoints" / "latest.pt"
    proc = run("dpi-sample", f"checkpoint={ckpt}", "n=20", "num_steps=3", cwd=tmp_path)
    assert "fd=" in proc.stdout and "class_accuracy=" in proc.stdout
    grid = tmp_path / "img" / "samples" / "latest-n20.png"
    assert grid.is_file() and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = run("dpi-eval", f"checkpoint={ckpt}", cwd=tmp_path, ok=False)
    assert wrong.returncode == 2 and "image model; use dpi-sample" in wrong.stderr


@pytest.mark.parametrize(
    "cmd,args,message",
    [
        ("dpi-train", ["train.steps=-5"], "steps"),
        ("dpi-train", ["assign=knn", "assign.k=0"], "k=0"),
        ("dpi-train", ["objective.prediction_type=velocity"], "prediction_type='velocity'"),
        ("dpi-train", ["policy.down_dims=[64,128,256,512,1024]"], "horizon=16 must be divisible"),
        ("dpi-eval", ["checkpoint=/nonexistent/latest.pt"], "checkpoint=/nonexistent/latest.pt does not exist"),
        ("dpi-sample", ["checkpoint=/nonexistent/x.pt"], "does not exist"),
    ],
)
def test_bad_input_is_a_one_line_error(demos: Path, tmp_path: Path, cmd: str, args: list[str], message: str) -> None:
    extra = [f"task.dataset={demos}", "out_dir=never"] if cmd == "dpi-train" else []
    proc = run(cmd, *extra, *args, cwd=tmp_path, ok=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "never" / "checkpoints").exists()  # nothing was trained or written


def test_demo_prints_every_method(tmp_path: Path) -> None:
    out = run("dpi-demo", "--batch", "64", cwd=tmp_path).stdout
    for label in ("none", "lsa", "knn k=2", "knn k=16", "sinkhorn"):
        assert f"\n{label} " in out
    none_row = next(line for line in out.splitlines() if line.startswith("none "))
    lsa_row = next(line for line in out.splitlines() if line.startswith("lsa "))
    assert float(lsa_row.split()[1]) > float(none_row.split()[1]) + 5  # assignment reduces distance


@pytest.mark.slow
def test_train_under_torchrun_ddp(demos: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) through the same command; lsa assigns over the global batch."""
    proc = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            str(BIN / "dpi-train"),
            f"task.dataset={demos}",
            "train=quick",
            "train.steps=4",
            "train.eval_every=4",
            "task.eval.episodes=2",
            "task.eval.n_envs=2",
            "assign=lsa",
            "out_dir=ddp",
            "threads=1",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished ") == 1  # rank 0 reports
    assert [r["step"] for r in rows(tmp_path / "ddp" / "eval.csv")] == ["4"]


@pytest.mark.slow
def test_quickstart_main_job(tmp_path: Path) -> None:
    """The README's main command end to end (about 7-10 minutes on 2 cores)."""
    proc = run("dpi-quickstart", cwd=tmp_path, timeout=1800)
    assert "final success_rate" in proc.stdout and "knn-k2" in proc.stdout
    report = tmp_path / "runs" / "compare" / "quickstart" / "report.md"
    assert report.is_file() and (report.parent / "learning_curves_step.png").is_file()
