"""Tests of the sampling sweep of ``dpi-compare``: the grid and its labels, refused keys, the choice per
method on validation results only, resuming from stored results, the image reference halves, and a tiny
real sweep added to finished runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffpolicy_immix.app import apply_sampling, check_sampling, load_model
from diffpolicy_immix.experiments import ExperimentSpec, SamplingSweepSpec, load_experiment
from diffpolicy_immix.experiments.aggregate import best_setting
from diffpolicy_immix.experiments.compare import compare, compare_cli
from diffpolicy_immix.experiments.records import FINAL_FILE, load_run
from diffpolicy_immix.experiments.runner import plan_runs, run_sweep
from diffpolicy_immix.experiments.spec import setting_slug
from diffpolicy_immix.experiments.sweep import (
    check_sampling_sweep,
    collect_sweep,
    reference_halves,
    result_path,
    run_sampling_sweep,
)

# ------------------------------------------------------------------------------ the grid


def test_grid_is_the_cartesian_product_in_file_order_with_readable_slugs():
    sweep = SamplingSweepSpec({"objective.num_inference_steps": [5, 10, 20], "sampler": ["ddim", "ddpm"]})
    assert list(sweep.grid) == ["objective.num_inference_steps", "objective.sampler"]  # short name -> key
    assert sweep.points == [
        {"objective.num_inference_steps": s, "objective.sampler": k} for s in (5, 10, 20) for k in ("ddim", "ddpm")
    ]
    slugs = [setting_slug(p) for p in sweep.points]
    assert slugs[:3] == ["steps=5,sampler=ddim", "steps=5,sampler=ddpm", "steps=10,sampler=ddim"]
    assert len(set(slugs)) == 6
    guidance = SamplingSweepSpec({"guidance_scale": [1.0, 1.5, 3]})
    assert [setting_slug(p) for p in guidance.points] == ["guidance_scale=1", "guidance_scale=1.5", "guidance_scale=3"]
    assert guidance.validation.seed_offset == 200000 and guidance.test.seed_offset is None
    point = guidance.points[1]
    assert result_path("r", "validation", point) == Path("r/sweep/val_guidance_scale=1.5.json")
    assert result_path("r", "test", point) == Path("r/sweep/test_guidance_scale=1.5.json")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"grid": {"train.lr": [1e-3]}}, "'train.lr' is not a sampling setting"),
        ({"grid": {"policy.mlp.width": [256]}}, "'policy.mlp.width' is not a sampling setting"),
        ({"grid": {"steps": [5, 5]}}, "values must be distinct"),
        ({"grid": {"guidance_scale": [1.0, 1]}}, "values must be distinct"),
        ({"grid": {"steps": [5], "objective.num_inference_steps": [10]}}, "a second time"),
        ({"grid": {}}, "sampling_sweep.grid"),
        ({"grid": {"steps": [5]}, "validation": {"episodes": 0}}, "validation.episodes=0"),
        ({"grid": {"steps": [5]}, "validation": {"rollouts": 3}}, "unknown key 'rollouts'"),
        ({"grid": {"steps": [5]}, "test": {"seed_offset": 5}}, "test.seed_offset cannot be set"),
        ({"grid": {"steps": [5]}, "extra": 1}, "unknown key 'extra'"),
        ({"validation": {"episodes": 3}}, "has no grid"),
    ],
)
def test_a_bad_block_is_refused_in_one_line_naming_the_key(block, message):
    with pytest.raises(ValueError) as err:
        ExperimentSpec(name="x", task="reach_around", methods=["none"], sampling_sweep=block)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_non_sampling_key_stops_dpi_compare_before_any_training(tmp_path, capsys):
    out = tmp_path / "out"
    code = compare_cli(["experiment=smoke", f"out_root={out}", "sampling_sweep={grid: {train.batch_size: [8, 16]}}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "'train.batch_size'" in err and "\n" not in err
    assert not out.exists()


def test_settings_a_run_cannot_sample_with_are_refused_before_training(tmp_path):
    def check(*overrides: str) -> None:
        spec = load_experiment("smoke", [f"out_root={tmp_path}", "seeds=1", *overrides])
        check_sampling_sweep(spec, plan_runs(spec))

    check("sampling_sweep={grid: {steps: [2, 5], sampler: [ddim, ddpm]}}")  # a valid grid passes
    with pytest.raises(ValueError, match=r"method 'none', sampling setting sampler=euler: .*sampler='euler'"):
        check("sampling_sweep={grid: {sampler: [ddim, euler]}}")
    with pytest.raises(ValueError, match="guidance_scale applies to image tasks"):
        check("sampling_sweep={grid: {guidance_scale: [1.0, 2.0]}}")
    with pytest.raises(ValueError, match=r"seeds 100001..100002 overlap the test seeds 100000..100001"):
        check("sampling_sweep={grid: {steps: [2]}, validation: {seed_offset: 100001}}")
    with pytest.raises(ValueError, match=r"overlap the demonstration seeds 0..9"):
        check("sampling_sweep={grid: {steps: [2]}, validation: {seed_offset: 5}}")
    assert not any(tmp_path.iterdir())


def test_apply_sampling_changes_only_sampling_keys():
    cfg = {"task": {"name": "t", "kind": "image", "eval": None}, "objective": {"kind": "ddpm", "sampler": "ddim"}}
    out = apply_sampling(cfg, {"steps": 7, "guidance_scale": 1.5})
    assert out["objective"] == {"kind": "ddpm", "sampler": "ddim", "num_inference_steps": 7}
    assert out["task"]["eval"] == {"guidance_scale": 1.5} and cfg["task"]["eval"] is None  # a copy
    check_sampling(out)
    with pytest.raises(ValueError, match="'train.steps' is not a sampling setting"):
        apply_sampling(cfg, {"train.steps": 3})
    with pytest.raises(ValueError, match="guidance_scale=-1"):
        check_sampling(apply_sampling(cfg, {"guidance_scale": -1}))


# ------------------------------------------------------------------------------ the choice


def test_best_setting_respects_direction_ties_and_missing_seeds():
    values = np.array([[0.5, 0.7], [0.8, 0.4], [0.9, math.nan], [0.6, 0.6]])  # (P=4, S=2)
    assert best_setting(values, higher_is_better=True) == 1  # 0.6 ties 0.6: the first; row 2 lacks a seed
    assert best_setting(values, higher_is_better=False) == 0
    assert best_setting(np.full((2, 3), math.nan), True) is None
    assert best_setting(np.zeros((3, 0)), True) is None


# validation success rate per (method, setting); a seed adds 0.01 x seed. "a" is best at steps=5 on
# validation, "b" at steps=10; the planted test files favour the other settings, which must not matter.
VALIDATION = {
    ("a", "steps=5"): 0.80,
    ("a", "steps=10"): 0.70,
    ("b", "steps=5"): 0.50,
    ("b", "steps=10"): 0.75,
}
TEST = {"a": 0.60, "b": 0.90}
CALLS: list[tuple[str, int, str, str]] = []


def fake_evaluate(job):
    CALLS.append((job.label, job.seed, job.split, job.slug))
    base = VALIDATION[(job.label, job.slug)] if job.split == "validation" else TEST[job.label]
    return {"success_rate": base + 0.01 * job.seed, "mean_max_reward": 0.5}


def fake_runs(root: Path, labels: tuple[str, ...] = ("a", "b"), seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Finished run folders: final.json with a policy configuration and a final checkpoint."""
    for label in labels:
        for seed in seeds:
            folder = root / label / f"seed{seed}"
            (folder / "checkpoints").mkdir(parents=True)
            (folder / "checkpoints" / "latest.pt").write_bytes(b"")
            cfg = {
                "task": {"name": "toy", "kind": "policy", "eval": {"episodes": 6}, "demos": {"episodes": 10}},
                "train": {"steps": 100},
                "objective": {"kind": "ddpm"},
                "seed": seed,
            }
            (folder / FINAL_FILE).write_text(json.dumps({"label": label, "seed": seed, "config": cfg}))


def sweep_spec(root: Path, **kw) -> ExperimentSpec:
    values = dict(
        name="toy",
        task="toy",
        methods=["a", "b"],
        baseline="a",
        seeds=3,
        out_root=str(root),
        progress="quiet",
        n_boot=200,
        sampling_sweep={"grid": {"steps": [5, 10]}, "validation": {"episodes": 4}, "test": {"episodes": 6}},
    )
    values.update(kw)
    return ExperimentSpec(**values)


def plant(root: Path, label: str, seed: int, split: str, steps: int, value: float, protocol: dict) -> None:
    setting = {"objective.num_inference_steps": steps}
    path = result_path(root / label / f"seed{seed}", split, setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"value": value, "protocol": {**protocol, "setting": setting}}))


def test_each_method_gets_its_own_setting_chosen_on_validation_only(tmp_path):
    fake_runs(tmp_path)
    spec = sweep_spec(tmp_path)
    test_protocol = {"split": "test", "train_steps": 100, "episodes": 6, "seed_offset": 100000}
    for seed in (0, 1, 2):  # excellent test results at the settings validation does not choose
        plant(tmp_path, "a", seed, "test", 10, 0.99, test_protocol)
        plant(tmp_path, "b", seed, "test", 5, 0.99, test_protocol)
    CALLS.clear()
    outcomes = run_sampling_sweep(spec, evaluate_fn=fake_evaluate)
    validation = [c for c in CALLS if c[2] == "validation"]
    assert sorted(validation) == sorted(
        (m, s, "validation", f"steps={k}") for m in "ab" for s in (0, 1, 2) for k in (5, 10)
    )
    assert sorted(c for c in CALLS if c[2] == "test") == sorted(
        [("a", s, "test", "steps=5") for s in (0, 1, 2)] + [("b", s, "test", "steps=10") for s in (0, 1, 2)]
    )
    assert all(o.status == "finished" for o in outcomes) and len(outcomes) == 18
    stored = json.loads((tmp_path / "a" / "seed1" / "sweep" / "val_steps=5.json").read_text())
    assert stored["value"] == pytest.approx(0.81) and stored["protocol"]["seed_offset"] == 200000
    assert stored["protocol"]["episodes"] == 4

    records = {m: [load_run(tmp_path, m, s) for s in (0, 1, 2)] for m in "ab"}
    summary = collect_sweep(spec, records)
    assert summary.chosen("a") == "steps=5" and summary.chosen("b") == "steps=10"
    a, b = summary.methods["a"], summary.methods["b"]
    np.testing.assert_allclose(a.validation_means(), [0.81, 0.71])
    np.testing.assert_allclose(b.test, [0.90, 0.91, 0.92])  # the test files at the chosen setting only
    assert a.test_estimate.value == pytest.approx(0.61) and a.test_estimate.lo <= 0.61 <= a.test_estimate.hi
    assert b.delta.value == pytest.approx(0.30) and b.delta.lo > 0 and "better" in b.verdict

    # lower is better: the same validation figures choose the other settings
    low = collect_sweep(sweep_spec(tmp_path, higher_is_better=False), records)
    assert low.chosen("a") == "steps=10" and low.chosen("b") == "steps=5"


def test_resume_reuses_stored_results_and_redoes_stale_ones(tmp_path):
    fake_runs(tmp_path, seeds=(0, 1))
    spec = sweep_spec(tmp_path, seeds=2)
    CALLS.clear()
    run_sampling_sweep(spec, evaluate_fn=fake_evaluate)
    assert len(CALLS) == 2 * 2 * 2 + 2 * 2
    CALLS.clear()
    outcomes = run_sampling_sweep(spec, evaluate_fn=fake_evaluate)
    assert CALLS == [] and {o.status for o in outcomes} == {"skipped"}
    # a missing file, a truncated one (an interrupted writer) and a file made with another protocol
    sweep_dir = tmp_path / "b" / "seed1" / "sweep"
    (sweep_dir / "val_steps=5.json").unlink()
    (tmp_path / "a" / "seed0" / "sweep" / "val_steps=10.json").write_text('{"value": 0.7, "prot')
    stale = json.loads((sweep_dir / "test_steps=10.json").read_text())
    stale["protocol"]["episodes"] = 3
    (sweep_dir / "test_steps=10.json").write_text(json.dumps(stale))
    run_sampling_sweep(spec, evaluate_fn=fake_evaluate)
    assert sorted(CALLS) == [
        ("a", 0, "validation", "steps=10"),
        ("b", 1, "test", "steps=10"),
        ("b", 1, "validation", "steps=5"),
    ]
    # more validation episodes: every validation result is stale; the choice (and so the test) stays
    CALLS.clear()
    longer = {"grid": {"steps": [5, 10]}, "validation": {"episodes": 8}, "test": {"episodes": 6}}
    run_sampling_sweep(sweep_spec(tmp_path, seeds=2, sampling_sweep=longer), evaluate_fn=fake_evaluate)
    assert len(CALLS) == 8 and all(c[2] == "validation" for c in CALLS)


def test_reference_halves_are_disjoint_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), [36, 37, 35, 36, 36, 37, 36, 35, 34, 37])  # 359, as the digits test split
    val, test = reference_halves(labels)
    assert np.intersect1d(val, test).size == 0 and np.union1d(val, test).tolist() == list(range(labels.size))
    for c in range(10):
        n = int((labels == c).sum())
        assert int((labels[val] == c).sum()) == n // 2 and int((labels[test] == c).sum()) == n - n // 2
    again = reference_halves(labels)
    assert np.array_equal(val, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(val, reference_halves(labels, seed=1)[0])


# ------------------------------------------------------------------------------ a real tiny sweep


def test_sweep_added_to_finished_smoke_runs_only_evaluates(tmp_path, monkeypatch):
    """`smoke` with one seed is trained, then re-run with a 2-point grid: nothing is retrained, each run is
    evaluated at both points (validation) and at its method's choice (test); a third call does nothing."""
    monkeypatch.chdir(tmp_path)  # the smoke dataset path is relative to the working directory
    out = tmp_path / "out"
    base = ["experiment=smoke", f"out_root={out}", "seeds=1"]  # progress=bars: runs train in this process
    plain = load_experiment(None, base)
    assert run_sweep(plain, plan_runs(plain)).count("finished") == 2
    finals = sorted(out.glob("*/seed0/final.json"))
    stamps = [p.stat().st_mtime_ns for p in finals]
    assert len(finals) == 2 and not list(out.glob("*/seed0/sweep"))

    block = "sampling_sweep={grid: {steps: [2, 5]}, validation: {episodes: 2}, test: {episodes: 2}}"
    result = compare(load_experiment(None, [*base, block]), echo=False)
    assert [p.stat().st_mtime_ns for p in finals] == stamps  # only the sweep ran
    assert not result.sweep_failures and result.sweep is not None
    for label in ("none", "knn-k2"):
        files = sorted(p.name for p in (out / label / "seed0" / "sweep").iterdir())
        chosen = result.sweep.chosen(label)
        assert files == sorted(["val_steps=2.json", "val_steps=5.json", f"test_{chosen}.json"])
    report = (out / "report.md").read_text()
    assert "## Sampling settings chosen on the validation split" in report
    assert "## Time to threshold (fixed sampling setting)" in report and "sampler ddim, 10 steps" in report
    data = json.loads((out / "results.json").read_text())["sampling_sweep"]
    assert set(data["methods"]["knn-k2"]["validation"]) == {"steps=2", "steps=5"}
    assert data["methods"]["none"]["test"]["estimate"]["n"] == 1
    rows = (out / "sampling_sweep.csv").read_text().strip().splitlines()
    assert rows[0] == "method,seed,split,setting,objective.num_inference_steps,mean_max_reward,chosen"
    assert len(rows) == 1 + 2 * (2 + 1)

    sweep_files = sorted(out.glob("*/seed0/sweep/*.json"))
    sweep_stamps = [p.stat().st_mtime_ns for p in sweep_files]
    again = run_sampling_sweep(load_experiment(None, [*base, block]))
    assert len(again) == 6 and {o.status for o in again} == {"skipped"}
    assert [p.stat().st_mtime_ns for p in sweep_files] == sweep_stamps

    # the setting reaches the rebuilt model
    model, cfg = load_model(
        out / "none" / "seed0" / "checkpoints" / "latest.pt", sampling={"sampler": "ddpm", "steps": 3}
    )
    assert model.objective.cfg.sampler == "ddpm" and model.objective.cfg.num_inference_steps == 3
    assert cfg["objective"]["sampler"] == "ddpm"
