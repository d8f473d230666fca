"""Tests of the comparison harness: statistics on synthetic curves with known answers, spec validation,
planning, a sweep with a synthetic run function (parallel, with a failing run), and a real tiny sweep that
is killed and resumed, then reported."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffpolicy_immix.experiments import (
    ExperimentSpec,
    MethodCurves,
    compare,
    compare_main,
    experiment_names,
    load_experiment,
    summarize,
)
from diffpolicy_immix.experiments.aggregate import (
    best_and_last_k,
    bootstrap_band,
    compute_threshold,
    ratio_ci,
    restricted_mean_ci,
    time_to_threshold,
)
from diffpolicy_immix.experiments.records import FINAL_FILE
from diffpolicy_immix.experiments.report import compact_table, fmt_time
from diffpolicy_immix.experiments.runner import RunPlan, compose_run_config, execute_run, plan_runs, run_sweep

# ------------------------------------------------------------------------------ synthetic curves

STEPS = np.arange(50, 4001, 50, dtype=float)  # 80 evaluations


def sigmoid_curve(steps: np.ndarray, mid: float, width: float, top: float = 0.9) -> np.ndarray:
    return top / (1.0 + np.exp(-(steps - mid) / width))


def vanilla_curves(n_seeds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(S, E) success-like curves with seed-dependent midpoints, and (S,) seconds per step."""
    mids = 1000.0 + 150.0 * np.arange(n_seeds)
    widths = 120.0 + 20.0 * np.arange(n_seeds)
    values = np.stack([sigmoid_curve(STEPS, m, w) for m, w in zip(mids, widths)])
    sec_per_step = 0.01 * (1.0 + 0.1 * np.arange(n_seeds))
    return values, sec_per_step


def curves(label: str, values: np.ndarray, sec_per_step: np.ndarray, steps: np.ndarray = STEPS) -> MethodCurves:
    seeds = np.arange(values.shape[0])
    return MethodCurves(label, seeds, steps, values, sec_per_step[:, None] * steps[None, :])


def compressed(values_fn, factor: float, n_seeds: int = 5) -> np.ndarray:
    """The vanilla curves with steps compressed by ``factor`` (method value at t = vanilla value at factor t)."""
    mids = 1000.0 + 150.0 * np.arange(n_seeds)
    widths = 120.0 + 20.0 * np.arange(n_seeds)
    return np.stack([values_fn(STEPS * factor, m, w) for m, w in zip(mids, widths)])


# ------------------------------------------------------------------------------ aggregation math


def test_threshold_definitions_for_both_directions():
    base = np.array([[0.0, 0.5, 0.8], [0.2, 0.6, 0.6]])  # final mean 0.7, first mean 0.1
    assert compute_threshold(base, 0.9, True, "ratio") == pytest.approx(0.63)
    assert compute_threshold(base, 0.5, True, "progress") == pytest.approx(0.1 + 0.5 * 0.6)
    fd = np.array([[40.0, 10.0, 5.0], [60.0, 12.0, 7.0]])  # final mean 6, first 50
    assert compute_threshold(fd, 0.9, False, "ratio") == pytest.approx(6.0 / 0.9)
    assert compute_threshold(fd, 0.75, False, "progress") == pytest.approx(50.0 - 0.75 * 44.0)
    # absolute: the level itself (a competence threshold), whatever the baseline reached
    assert compute_threshold(base, 0.95, True, "absolute") == 0.95
    assert compute_threshold(fd, 12.5, False, "absolute") == 12.5
    with pytest.raises(ValueError, match="threshold_mode='fixed'"):
        compute_threshold(base, 0.9, True, "fixed")
    # first crossing: >= for higher-is-better, <= for lower-is-better; inf when never
    assert time_to_threshold(np.array([10, 20, 30]), np.array([0.1, 0.7, 0.9]), 0.7, True) == 20
    assert time_to_threshold(np.array([10, 20, 30]), np.array([9.0, 8.0, 6.5]), 6.6, False) == 30
    assert time_to_threshold(np.array([10, 20, 30]), np.array([0.1, 0.2, np.nan]), 0.5, True) == math.inf


def test_speedup_of_curves_compressed_twofold_in_steps_is_two():
    van, sps = vanilla_curves()
    fast = compressed(sigmoid_curve, 2.0)
    s = summarize(
        {"none": curves("none", van, sps), "fast": curves("fast", fast, sps)},
        "none",
        higher_is_better=True,
        metric="success_rate",
        n_boot=1000,
        seed=3,
    )
    m = s.methods["fast"]
    # every seed reaches the target in half the steps (eval grid of 50: within one evaluation)
    ratio_per_seed = s.methods["none"].steps_to / m.steps_to
    assert np.all(np.abs(ratio_per_seed - 2.0) <= 0.15), ratio_per_seed
    assert m.speedup_steps.value == pytest.approx(2.0, abs=0.05)
    assert m.speedup_steps.covers(2.0) and m.speedup_steps.lo > 1.5
    # wall time per step is the same for both methods (per seed), so the wall-time speed-up is ~2 too
    assert m.speedup_wall.value == pytest.approx(2.0, abs=0.05) and m.speedup_wall.covers(2.0)
    assert m.steps_est.n_censored == 0 and m.speedup_steps.bound == ""
    assert m.gain == "faster" and "as fast as none" in m.verdict
    # the band is the mean over seeds, bracketed by the bootstrap interval
    mean, lo, hi = s.methods["none"].band
    np.testing.assert_allclose(mean, van.mean(axis=0))
    assert np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12)


def test_noisy_compressed_curves_still_give_about_two():
    rng = np.random.default_rng(7)
    van, sps = vanilla_curves(8)
    mids = 1000.0 + 150.0 * np.arange(8)
    widths = 120.0 + 20.0 * np.arange(8)
    fast = np.stack([sigmoid_curve(STEPS * 2, mm, w) for mm, w in zip(mids, widths)])
    noisy_v = van + rng.normal(0, 0.01, van.shape)
    noisy_f = fast + rng.normal(0, 0.01, fast.shape)
    s = summarize(
        {"none": curves("none", noisy_v, sps), "fast": curves("fast", noisy_f, sps)},
        "none",
        higher_is_better=True,
        n_boot=1000,
    )
    sp = s.methods["fast"].speedup_steps
    assert sp.covers(2.0) and 1.6 < sp.value < 2.4  # tolerance: noise sd 0.01 moves crossings by ~1 eval


def test_method_that_never_reaches_the_threshold_is_censored_and_slower():
    van, sps = vanilla_curves()
    flat = np.full_like(van, 0.1)
    s = summarize(
        {"none": curves("none", van, sps), "flat": curves("flat", flat, sps)},
        "none",
        higher_is_better=True,
        metric="success_rate",
    )
    m = s.methods["flat"]
    assert np.all(np.isinf(m.steps_to))
    assert m.steps_est.n_censored == 5 and m.steps_est.value == STEPS[-1] and m.steps_est.bound == "lower"
    # ratio of restricted means: an upper bound of the true speed-up, which is below 1
    assert m.speedup_steps.bound == "upper" and m.speedup_steps.hi < 1.0
    assert m.gain == "slower" and "SLOWER" in m.verdict and "no seed reached the threshold" in m.verdict
    assert fmt_time(m.steps_est, STEPS[-1]) == "not reached (> 4000)"
    table = compact_table(_spec(metric="success_rate", methods=[{"label": "none"}, {"label": "flat"}]), s)
    flat_row = next(line for line in table.splitlines() if line.startswith("flat"))
    assert "not reached (> 4000)" in flat_row and "<= " in flat_row and "slower" in flat_row


def test_partly_censored_seeds_enter_at_their_budget():
    est = restricted_mean_ci(np.array([100.0, np.inf, 300.0]), np.array([500.0, 500.0, 500.0]), n_boot=500)
    assert est.value == pytest.approx(300.0) and est.n_censored == 1 and est.bound == "lower"
    assert est.lo >= 100.0 and est.hi <= 500.0


def test_lower_is_better_metric_speedup_and_table():
    mids = 800.0 + 100.0 * np.arange(4)

    def fd(steps, mid):
        return 2.0 + 40.0 * np.exp(-steps / mid)

    van = np.stack([fd(STEPS, m) for m in mids])
    fast = np.stack([fd(STEPS * 2.0, m) for m in mids])
    sps = np.full(4, 0.02)
    s = summarize(
        {"none": curves("none", van, sps), "knn-k8": curves("knn-k8", fast, sps)},
        "none",
        higher_is_better=False,
        metric="fd",
        n_boot=1000,
    )
    assert s.threshold == pytest.approx(van[:, -1].mean() / 0.9)
    m = s.methods["knn-k8"]
    assert m.speedup_steps.value == pytest.approx(2.0, abs=0.1) and m.speedup_steps.covers(2.0)
    # "best" of a lower-is-better metric is the minimum
    assert s.methods["none"].table["fd"]["best_mean"] == pytest.approx(van.min(axis=1).mean())
    # the faster method also ends lower (better): the difference is negative and counted as better/faster
    assert m.delta_last_k.value < 0 and m.gain == "faster"


def test_bootstrap_is_deterministic_given_its_seed():
    x = np.random.default_rng(0).normal(size=(6, 4))
    a = bootstrap_band(x, n_boot=500, seed=11)
    b = bootstrap_band(x, n_boot=500, seed=11)
    c = bootstrap_band(x, n_boot=500, seed=12)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])
    # one seed: no spread, the interval collapses on the value
    m, lo, hi = bootstrap_band(x[:1], n_boot=100)
    np.testing.assert_array_equal(m, lo) and np.testing.assert_array_equal(m, hi)
    # whole summaries are reproducible too
    van, sps = vanilla_curves()
    fast = compressed(sigmoid_curve, 1.5)
    kw = dict(higher_is_better=True, n_boot=300, seed=5)
    s1 = summarize({"none": curves("none", van, sps), "f": curves("f", fast, sps)}, "none", **kw)
    s2 = summarize({"none": curves("none", van, sps), "f": curves("f", fast, sps)}, "none", **kw)
    assert s1.methods["f"].speedup_steps == s2.methods["f"].speedup_steps


def test_paired_ratio_of_exactly_proportional_times():
    den = np.array([100.0, 250.0, 400.0])
    est = ratio_ci(2 * den, den, paired=True, n_boot=500)
    assert est.value == pytest.approx(2.0) and est.lo == pytest.approx(2.0) and est.hi == pytest.approx(2.0)
    unpaired = ratio_ci(2 * den, den, paired=False, n_boot=500)
    assert unpaired.lo < 2.0 < unpaired.hi  # independent resampling mixes seeds: a wide interval


def test_diffusion_policy_table_on_hand_made_curves():
    seed0 = np.array([0.0, 0.2, 0.9, 0.5, 0.6, 0.7])
    seed1 = np.array([0.1, 0.3, 0.4, 0.8, 0.6, 0.4])
    best, last = best_and_last_k(np.stack([seed0, seed1]), k=3, higher_is_better=True)
    np.testing.assert_allclose(best, [0.9, 0.8])
    np.testing.assert_allclose(last, [0.6, 0.6])
    best_low, _ = best_and_last_k(np.stack([seed0, seed1]), k=3, higher_is_better=False)
    np.testing.assert_allclose(best_low, [0.0, 0.1])
    steps = np.arange(1, 7) * 100.0
    c = MethodCurves("none", [0, 1], steps, np.stack([seed0, seed1]), np.ones((2, 6)))
    s = summarize({"none": c}, "none", higher_is_better=True, last_k=3, metric="m")
    t = s.methods["none"].table["m"]
    assert t["best_mean"] == pytest.approx(0.85) and t["best_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert t["last_mean"] == pytest.approx(0.6) and t["last_std"] == pytest.approx(0.0)


def test_a_baseline_that_meets_the_threshold_at_once_is_flagged():
    flat = np.full((3, 5), 0.9)
    c = MethodCurves("none", [0, 1, 2], np.arange(1, 6) * 10.0, flat, np.ones((3, 5)))
    s = summarize({"none": c}, "none", higher_is_better=True)
    assert any("first evaluation" in n for n in s.notes)


# ------------------------------------------------------------------------------ specs


def _spec(**kw):
    base = dict(name="t", task="reach_around", methods=[{"label": "none"}, {"label": "knn-k2"}])
    base.update(kw)
    return ExperimentSpec(**base)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seeds", 0, "experiment.seeds=0"),
        ("seeds", [1, 1], "experiment.seeds=[1, 1]"),
        ("threshold", 1.5, "experiment.threshold=1.5"),
        ("threshold_mode", "fixed", "experiment.threshold_mode='fixed'"),
        ("threshold", float("nan"), "experiment.threshold=nan"),
        ("baseline", "vanilla", "experiment.baseline='vanilla'"),
        ("parallel", 0, "experiment.parallel=0"),
        ("threads", 0, "experiment.threads=0"),
        ("progress", "loud", "experiment.progress='loud'"),
        ("base", ["train.steps"], "override 'train.steps'"),
        ("methods", [{"label": "none"}, {"label": "none"}], "label 'none' appears twice"),
        ("methods", [{"label": "a/b"}], "methods.label='a/b'"),
        ("methods", [], "experiment.methods is empty"),
        ("higher_is_better", "yes", "experiment.higher_is_better='yes'"),
        ("table_metrics", ["fd"], "experiment.table_metrics"),
        ("ci", 95, "experiment.ci=95"),
    ],
)
def test_spec_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError) as err:
        _spec(**{field: value})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_absolute_threshold_is_a_level_not_a_fraction():
    assert _spec(threshold=12.5, threshold_mode="absolute").threshold == 12.5
    with pytest.raises(ValueError, match="fraction in"):
        _spec(threshold=12.5, threshold_mode="ratio")


def test_packaged_experiments_load_and_overrides_apply():
    names = experiment_names()
    for required in ("smoke", "quickstart", "reach_around", "push_block", "point_maze", "pusht", "digits"):
        assert required in names
        spec = load_experiment(required)
        assert spec.baseline in spec.labels
    assert len(load_experiment("reach_around").seeds) >= 3
    quick = load_experiment("quickstart")
    assert quick.labels == ["none", "knn-k2"] and quick.seeds == (0,)
    digits = load_experiment("digits")
    assert digits.task == "image_digits" and digits.metric == "fd" and not digits.higher_is_better
    assert digits.labels == ["none", "lsa", "knn-k8"]
    spec = load_experiment(
        None,
        ["experiment=smoke", "seeds=5", "extra=[train.steps=500]", "threshold=0.8", "out_root=/tmp/x", "run=false"],
    )
    assert spec.seeds == (0, 1, 2, 3, 4) and spec.extra == ("train.steps=500",) and spec.threshold == 0.8
    assert str(spec.output_root) == "/tmp/x" and spec.run is False
    with pytest.raises(ValueError, match="argument 'sedes' is unknown"):
        load_experiment("smoke", ["sedes=3"])
    with pytest.raises(ValueError, match="experiment='nope' is unknown"):
        load_experiment("nope")


def test_every_packaged_experiment_composes(tmp_path):
    for name in experiment_names():
        plans = plan_runs(load_experiment(name, ["seeds=1", f"out_root={tmp_path / name}"]))
        spec = load_experiment(name)
        assert [p.label for p in plans] == spec.labels
        assert all(p.config["task"]["name"] == spec.task for p in plans)
        # a task's recipe may select an assigner (pusht: knn_k2); a method called "none" must still get plain noise
        assert all(p.config["assign"]["name"] == "none" for p in plans if p.label == "none"), name


def test_a_task_recipe_selects_its_assigner_and_the_command_line_wins():
    recipe = compose_run_config(["task=pusht"])["assign"]
    assert (recipe["name"], recipe["k"], recipe["keep_norm"]) == ("knn", 2, False)
    assert compose_run_config(["task=pusht", "assign=none"])["assign"] == {"name": "none", "scale": 1.0}
    assert compose_run_config(["task=pusht", "assign=knn"])["assign"]["k"] == 4  # the knn preset's own k
    assert compose_run_config(["task=pusht", "assign.k=8"])["assign"]["k"] == 8
    for task in ("reach_around", "point_maze", "push_block"):
        assert compose_run_config([f"task={task}"])["assign"] == {"name": "none", "scale": 1.0}


def test_plan_runs_differ_only_by_method_and_refuse_a_changed_run(tmp_path):
    budget = "extra=[train.steps=3000, train.eval_every=250]"  # pinned: independent of the packaged budget
    spec = load_experiment("reach_around", [f"out_root={tmp_path}", "seeds=2", budget])
    plans = plan_runs(spec)
    assert [(p.label, p.seed) for p in plans[:5]] == [
        ("none", 0),
        ("lsa", 0),
        ("knn-k2", 0),
        ("knn-k8", 0),
        ("none", 1),
    ]
    assert plans[2].run_dir == str(tmp_path / "knn-k2" / "seed0")
    by = {(p.label, p.seed): p.config for p in plans}
    for (_label, seed), cfg in by.items():
        ref = by[("none", seed)]
        assert cfg["train"] == ref["train"] and cfg["task"] == ref["task"] and cfg["policy"] == ref["policy"]
        assert cfg["objective"] == ref["objective"] and cfg["seed"] == seed
    assert by[("knn-k2", 0)]["assign"]["k"] == 2 and by[("knn-k8", 0)]["assign"]["k"] == 8
    assert by[("none", 0)]["train"]["steps"] == 3000 and by[("none", 0)]["train"]["eval_every"] == 250
    # a folder holding a run made with another budget is refused, naming the folder and the difference
    folder = tmp_path / "none" / "seed0"
    folder.mkdir(parents=True)
    changed = json.loads(json.dumps(by[("none", 0)]))
    changed["train"]["steps"] = 10
    (folder / FINAL_FILE).write_text(json.dumps({"config": changed}))
    with pytest.raises(ValueError, match=r"another configuration \(train.steps: 10 -> 3000\)"):
        plan_runs(spec)
    with pytest.raises(ValueError, match="method 'none'"):
        plan_runs(load_experiment("smoke", [f"out_root={tmp_path}/b", "extra=[train.lr_schedule=linear]"]))


# ------------------------------------------------------------------------------ a synthetic sweep


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def fake_run(cfg: dict) -> dict:
    """Writes the files a training run writes, with a curve that rises twice as fast for ``fast``."""
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    label, seed = cfg["assign"]["name"], int(cfg["seed"])
    if label == "broken" and seed == 1:
        raise RuntimeError("synthetic failure")
    factor = 2.0 if label == "fast" else 1.0
    steps = np.arange(100, 1001, 100)
    values = sigmoid_curve(steps * factor, 400.0 + 50.0 * seed, 60.0)
    _write_csv(
        out / "eval.csv",
        [{"step": int(s), "epoch": 0, "wall_time": 0.01 * s, "success_rate": float(v)} for s, v in zip(steps, values)],
    )
    _write_csv(
        out / "metrics.csv",
        [
            {
                "step": int(s),
                "loss": 1.0 / (1 + s / 100),
                "samples_per_s": 1000.0,
                "distance_reduction_pct": 5.0 if label == "fast" else 0.0,
            }
            for s in range(50, 1001, 50)
        ],
    )
    return {"step": 1000, "success_rate": float(values[-1]), "resume": bool(cfg["resume"])}


def fake_compose(overrides: list[str]) -> dict:
    values = dict(o.split("=", 1) for o in overrides)
    return {
        "task": {"name": values["task"], "kind": "policy", "dataset": "missing.zarr", "horizon": 16},
        "assign": {"name": values["assign"]},
        "train": {"steps": 1000, "eval_every": 100},
        "seed": int(values["seed"]),
        "out_dir": values["out_dir"],
    }


def test_synthetic_sweep_in_parallel_reports_failures_and_aggregates(tmp_path):
    spec = ExperimentSpec(
        name="synthetic",
        task="toy",
        seeds=3,
        parallel=2,
        threads=1,
        progress="quiet",
        out_root=str(tmp_path),
        methods=[
            {"label": "none", "overrides": ["assign=none"]},
            {"label": "fast", "overrides": ["assign=fast"]},
            {"label": "broken", "overrides": ["assign=broken"]},
        ],
        n_boot=500,
    )
    plans = plan_runs(spec, compose=fake_compose)
    result = run_sweep(spec, plans, run_fn=fake_run)
    failed = result.failures
    assert [(o.label, o.seed) for o in failed] == [("broken", 1)]
    assert "synthetic failure" in failed[0].error and (tmp_path / "broken" / "seed1" / "error.txt").is_file()
    assert result.count("finished") == 8
    # aggregate-only: nothing is trained again, the failure is listed as a missing run
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed*/final.json")}
    spec.run = False
    res = compare(spec, echo=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed*/final.json")} == before
    fast = res.summary.methods["fast"]
    assert fast.speedup_steps.value == pytest.approx(2.0, abs=0.3) and fast.speedup_steps.covers(2.0)
    assert res.summary.methods["broken"].n_seeds == 2
    assert res.summary.methods["fast"].diagnostics["distance_reduction_pct"] == pytest.approx(5.0)
    report = res.report.read_text()
    assert "broken/seed1" in report and "Not finished" in report
    assert "No gain over none" in report  # "broken" is the same curve as none
    for png in ("learning_curves_step.png", "learning_curves_wall.png", "loss.png"):
        assert (tmp_path / png).stat().st_size > 1000
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["methods"]["fast"]["gain"] == "faster"


def test_execute_run_resumes_from_a_checkpoint_and_skips_finished(tmp_path):
    cfg = fake_compose(["task=toy", "assign=none", "seed=0", f"out_dir={tmp_path / 'r'}"])
    plan = RunPlan("none", 0, str(tmp_path / "r"), cfg)
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "latest.pt").write_bytes(b"x")
    out = execute_run(plan, threads=1, run_fn=fake_run)
    assert out.status == "finished" and out.metrics["resume"] is True
    assert json.loads((tmp_path / "r" / FINAL_FILE).read_text())["resumed"] is True
    assert execute_run(plan, threads=1, run_fn=fake_run).status == "skipped"


# ------------------------------------------------------------------------------ a real tiny sweep


def test_smoke_sweep_killed_resumed_and_reported(tmp_path, monkeypatch):
    """`smoke` (2 methods x 2 seeds, 10 steps): kill the sweep after its first run, start it again."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "diffpolicy_immix.experiments", "experiment=smoke", f"out_root={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "none" / "seed0" / FINAL_FILE
    deadline = time.monotonic() + 120
    try:
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert first.exists(), "the first run did not finish"
    mtime = first.stat().st_mtime_ns
    finished_before = sorted(out.glob("*/seed*/final.json"))
    assert len(finished_before) < 4, "the sweep finished before it was killed"

    monkeypatch.chdir(tmp_path)  # the smoke dataset path is relative to the working directory
    compare_main(["experiment=smoke", f"out_root={out}"])
    finals = sorted(out.glob("*/seed*/final.json"))
    assert len(finals) == 4
    assert first.stat().st_mtime_ns == mtime  # the finished run was skipped, not retrained
    for png in ("learning_curves_step.png", "learning_curves_wall.png", "loss.png"):
        assert (out / png).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "16 x 2 = 32" in report and "knn (k=2)" in report and "## Verdict" in report
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["none"]["n_seeds"] == 2 and results["methods"]["knn-k2"]["n_seeds"] == 2

    # aggregate-only: re-reads the runs, trains nothing, writes the report again
    (out / "report.md").unlink()
    stamps = [p.stat().st_mtime_ns for p in finals]
    compare_main(["experiment=smoke", f"out_root={out}", "run=false"])
    assert (out / "report.md").is_file() and [p.stat().st_mtime_ns for p in finals] == stamps
