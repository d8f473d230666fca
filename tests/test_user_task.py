"""A user's own task yaml from --config-dir trains without a matching train/<task>.yaml, and the generic
budget (train/default.yaml) changes nothing for the built-in tasks, which have their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from diffpolicy_immix.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
BUDGETS = sorted(p.stem for p in (CONFIGS / "train").glob("*.yaml") if p.stem != "default")


def composed_train(*overrides: str) -> dict:
    with initialize_config_module(config_module="diffpolicy_immix_configs", version_base=None):
        cfg = compose("dpi_train", overrides=list(overrides))
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.train, resolve=True)


@pytest.mark.parametrize("budget", BUDGETS)
def test_per_task_budgets_are_unchanged_by_the_default(budget: str) -> None:
    alone = yaml.safe_load((CONFIGS / "train" / f"{budget}.yaml").read_text())
    tasks = {p.stem for p in (CONFIGS / "task").glob("*.yaml")}
    overrides = [f"task={budget}"] if budget in tasks else [f"train={budget}"]
    assert TrainConfig.from_dict(composed_train(*overrides)) == TrainConfig.from_dict(alone)


def test_a_task_without_its_own_budget_gets_the_default() -> None:
    default = yaml.safe_load((CONFIGS / "train" / "default.yaml").read_text())
    assert composed_train("task=reach_around", "train=default") == default


def test_user_task_from_config_dir_trains(tmp_path: Path) -> None:
    """dpi-train --config-dir <dir> task=mytask: the user's task yaml alone, on a tiny budget."""
    from diffpolicy_immix.data import collect_demonstrations

    data = tmp_path / "mine.zarr"
    collect_demonstrations("immix/ReachAround-v0", data, episodes=3, seed=0, progress=False)
    (tmp_path / "conf" / "task").mkdir(parents=True)
    task = {
        "name": "mytask",
        "kind": "policy",
        "env_id": "immix/ReachAround-v0",
        "max_episode_steps": 10,
        "success": {"kind": "info_key", "key": "success"},
        "dataset": str(data),
        "obs_keys": ["obs"],
        "action_key": "action",
        "horizon": 16,
        "n_obs_steps": 2,
        "n_action_steps": 8,
        "eval": {"episodes": 1, "n_envs": 1},
    }
    (tmp_path / "conf" / "task" / "mytask.yaml").write_text(yaml.safe_dump(task))
    args = ["--config-dir", str(tmp_path / "conf"), "task=mytask", "train.steps=2", "train.eval_every=2"]
    args += ["train.batch_size=8", "train.checkpoint_every=2", "out_dir=run", "threads=1"]
    proc = subprocess.run(
        [str(BIN / "dpi-train"), *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2 and saved["train"]["lr"] == 1.0e-3  # the default budget, overridden
