"""The user-facing commands, run as a user runs them (subprocesses of the installed console scripts), on
tiny budgets: collect -> inspect -> train -> evaluate for policies, train -> sample for images, and the
one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffpolicy_immix.training import load_checkpoint, load_weights

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
    assert [r["step"] for r in evals] == ["6"] and float(evals[0]["eval_episodes"]) == 2  # the final: all episodes
    assert float(evals[0]["train_wall_s"]) + float(evals[0]["eval_s"]) <= float(evals[0]["wall_time"])
    metrics = rows(out / "metrics.csv")
    assert float(metrics[-1]["distance_reduction_pct"]) > 0  # knn noise is closer than random pairing

    # The weights-only top-k file and latest.pt hold the same EMA weights, and dpi-eval on either repeats
    # the training's final evaluation exactly (same test seeds, same sampling generator).
    (scored,) = (out / "checkpoints").glob("step=000006-*.safetensors")
    weights, meta = load_weights(scored)
    ema = load_checkpoint(out / "checkpoints" / "latest.pt")["ema"]["model"]
    assert meta["weights"] == "ema" and all(torch.equal(weights[k], ema[k]) for k in ema)
    for ckpt in (out / "checkpoints" / "latest.pt", scored):
        run("dpi-eval", f"checkpoint='{ckpt}'", "episodes=2", "n_envs=2", cwd=tmp_path)
        result = json.loads((out / "eval" / ckpt.stem / "metrics.json").read_text())
        assert result["mean_max_reward"] == float(evals[0]["mean_max_reward"]), ckpt.name
        assert result["success_rate"] == float(evals[0]["success_rate"]), ckpt.name
    seeds = [int(r["seed"]) for r in rows(out / "eval" / "latest" / "episodes.csv")]
    assert seeds == [100000, 100001]
    raw = run("dpi-eval", f"checkpoint='{scored}'", "ema=false", cwd=tmp_path, ok=False)
    assert raw.returncode == 2 and "holds only the EMA weights" in raw.stderr
    # another sampler / number of sampling steps / spacing for this evaluation; a value the objective lacks is refused
    run(
        "dpi-eval",
        f"checkpoint='{scored}'",
        "episodes=2",
        "n_envs=2",
        "sampler=ddpm",
        "steps=3",
        "spacing=trailing",
        "candidates=3",
        "out=ddpm3",
        cwd=tmp_path,
    )
    assert json.loads((tmp_path / "ddpm3" / "metrics.json").read_text())["n_episodes"] == 2
    bad = run("dpi-eval", f"checkpoint='{scored}'", "sampler=euler", cwd=tmp_path, ok=False)
    assert bad.returncode == 2 and "sampler='euler' is invalid" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("dpi-eval", f"checkpoint='{scored}'", "candidates=0", cwd=tmp_path, ok=False)
    assert (
        bad.returncode == 2
        and "candidates=0 must be a positive integer" in bad.stderr
        and "Traceback" not in bad.stderr
    )
    bad = run("dpi-eval", f"checkpoint='{scored}'", "spacing=uniform", cwd=tmp_path, ok=False)
    assert (
        bad.returncode == 2 and "timestep_spacing='uniform' is invalid" in bad.stderr and "Traceback" not in bad.stderr
    )

    # a longer budget resumes from the step-6 checkpoint instead of starting over
    run("dpi-train", *common[:3], "train.steps=9", *common[4:], "resume=true", cwd=tmp_path)
    steps = [int(r["step"]) for r in rows(out / "metrics.csv")]
    assert steps == [2, 4, 6, 8, 9]  # rows continue after step 6; the final step is always logged
    # resuming the finished run again adds nothing; another assigner setting is refused, naming the key
    before = (out / "eval.csv").read_text()
    run("dpi-train", *common[:3], "train.steps=9", *common[4:], "resume=true", cwd=tmp_path)
    assert (out / "eval.csv").read_text() == before
    changed = run(
        "dpi-train",
        *common[:3],
        "train.steps=9",
        *common[4:11],
        "assign.k=3",
        *common[12:],
        "resume=true",
        cwd=tmp_path,
        ok=False,
    )
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "error: resume:" in changed.stderr and "assign.k: 2 -> 3" in changed.stderr
    assert (out / "eval.csv").read_text() == before and "k: 2" in (out / "config.yaml").read_text()


KILL_RUN = [
    "task=reach_around",
    "train=quick",
    "train.steps=12",
    "train.eval_every=6",
    "train.checkpoint_every=4",
    "train.log_every=1",
    "task.eval.episodes=2",
    "++task.eval.episodes_mid=1",
    "task.eval.n_envs=2",
    "assign=knn",
    "assign.k=2",
    "threads=1",
]


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_run_bit_for_bit(demos: Path, tmp_path: Path) -> None:
    """DiffusionPolicy + knn through dpi-train: a run killed with SIGKILL after its step-4 checkpoint and
    resumed writes the same metrics rows (losses, lr, diagnostics) and evaluations, and ends with the same
    weights, as an uninterrupted run."""
    common = [f"task.dataset={demos}", *KILL_RUN]
    ref = subprocess.Popen(
        [str(BIN / "dpi-train"), *common, "out_dir=ref"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = subprocess.Popen(
        [str(BIN / "dpi-train"), *common, "out_dir=run"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if metrics.is_file() and len(rows(metrics)) >= 6:  # past the step-4 checkpoint, before the end
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] in (4, 8)
    run("dpi-train", *common, "out_dir=run", "resume=true", cwd=tmp_path)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]

    ref_rows, run_rows = rows(tmp_path / "ref" / "metrics.csv"), rows(tmp_path / "run" / "metrics.csv")
    timing = {"wall_time", "train_wall_s", "samples_per_s", "eval_s"}
    assert [r["step"] for r in run_rows] == [str(s) for s in range(1, 13)]
    assert [{k: v for k, v in r.items() if k not in timing} for r in run_rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in ref_rows
    ]
    ref_eval, run_eval = rows(tmp_path / "ref" / "eval.csv"), rows(tmp_path / "run" / "eval.csv")
    assert [{k: v for k, v in r.items() if k not in timing} for r in run_eval] == [
        {k: v for k, v in r.items() if k not in timing} for r in ref_eval
    ]
    assert [float(r["eval_episodes"]) for r in run_eval] == [1.0, 2.0]  # mid-training: episodes_mid; final: all
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    for part in ("model", "ema"):
        state_a = a[part] if part == "model" else a[part]["model"]
        state_b = b[part] if part == "model" else b[part]["model"]
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), part


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
        ("dpi-train", ["policy=unet_cpu", "policy.down_dims=[64,128,256,512,1024]"], "horizon=16 must be divisible"),
        ("dpi-eval", ["checkpoint=/nonexistent/latest.pt"], "checkpoint=/nonexistent/latest.pt does not exist"),
        ("dpi-sample", ["checkpoint=/nonexistent/x.pt"], "does not exist"),
        ("dpi-eval", ["checkpoint=garbage.pt"], "garbage.pt: refused by safe (weights_only) loading"),
        ("dpi-eval", ["checkpoint=garbage.safetensors"], "garbage.safetensors: not a readable safetensors file"),
        ("dpi-train", ["resume=/nonexistent/latest.pt"], "resume=/nonexistent/latest.pt is not a file"),
        ("dpi-train", ["++task.eval.episodes_mid=0"], "task.eval.episodes_mid=0 is invalid"),
        ("dpi-train", ["++task.eval.video_size=8"], "task.eval.video_size=8 is invalid"),
        ("dpi-train", ["++task.action_origin=[0,5]"], "action_origin=[0, 5] must select action_dim=2 dims"),
        ("dpi-train", ["++task.action_origin=3"], "task.action_origin=3 is invalid"),
        ("dpi-train", ["policy.candidates=0"], "candidates=0 must be a positive integer"),
        ("dpi-train", ["task.dataset=missing.zarr", "task.env_id=null"], "task.env_id is missing"),
        ("dpi-train", ["task=image_folder"], "task.root is required: set task.root=<value>"),
        ("dpi-train", ["task=image_folder", "task.root=garbage.pt"], "task.root=garbage.pt is not a folder"),
        ("dpi-train", ["task=image_folder", "task.root=nowhere"], "task.root=nowhere does not exist"),
        ("dpi-collect", ["task=image_digits"], "task=image_digits (kind 'image') has no scripted expert"),
        ("dpi-collect", ["task=reach_around", "takeover=nope.pt"], "takeover=nope.pt does not exist"),
        ("dpi-collect", ["task=reach_around", "takeover=garbage.pt", "takeover_steps=[5,1]"], "takeover_steps=[5, 1]"),
        ("dpi-collect", ["task=reach_around", "include=nope.zarr"], "include=nope.zarr does not exist"),
        ("dpi-data", ["validate", "corrupt.zarr"], "corrupt.zarr: data/action: unreadable data"),
        ("dpi-train", ["task.dataset=corrupt.zarr"], "corrupt.zarr: data/action: unreadable data"),
    ],
)
def test_bad_input_is_a_one_line_error(demos: Path, tmp_path: Path, cmd: str, args: list[str], message: str) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04not a checkpoint")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a weights file")
    corrupt = tmp_path / "corrupt.zarr"  # a damaged compressed chunk
    subprocess.run(["cp", "-r", str(demos), str(corrupt)], check=True)
    (corrupt / "data" / "action" / "c" / "0" / "0").write_bytes(b"garbage")
    extra = []
    if cmd == "dpi-train":  # policy runs on the small demonstration store; other tasks as configured
        extra = ["out_dir=never"] + ([] if any(a.startswith("task=") for a in args) else [f"task.dataset={demos}"])
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
    """The README's main command end to end (about 5-7 minutes on 2 cores)."""
    proc = run("dpi-quickstart", cwd=tmp_path, timeout=1800)
    assert "final success_rate" in proc.stdout and "knn-k2" in proc.stdout
    report = tmp_path / "runs" / "compare" / "quickstart" / "report.md"
    assert report.is_file() and (report.parent / "learning_curves_step.png").is_file()
