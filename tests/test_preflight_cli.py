"""The pre-flight checks and dpi-eval's task overrides through the real commands: a user's env (registered by
their own module) and a tiny dataset written with the replay buffer writer; every bad input stops with a
one-line error (exit 2) before anything is trained or collected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffpolicy_immix.data import ReplayBuffer

BIN = Path(sys.executable).parent
ENV_ID = "dpi_cli_envs:clins/Tiny-v0"

ENV_MODULE = """
import gymnasium as gym
import numpy as np


class Tiny(gym.Env):
    # obs (obs_dim,), action (act_dim,) in [-1, 1]; never terminates; reports info["success"]
    def __init__(self, obs_dim=3, act_dim=2):
        self.observation_space = gym.spaces.Box(-10, 10, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (act_dim,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.normal(size=self.observation_space.shape).astype(np.float32), {"success": False}

    def step(self, action):
        obs = self.np_random.normal(size=self.observation_space.shape).astype(np.float32)
        return obs, -float(np.abs(action).sum()), False, False, {"success": False}


gym.register(id="clins/Tiny-v0", entry_point=Tiny, max_episode_steps=6)
"""


def write_store(path: Path, obs_dim: int = 3, action_dim: int = 2) -> Path:
    rng = np.random.default_rng(0)
    with ReplayBuffer.create_writer(path) as w:
        for _ in range(4):
            w.add_episode(
                {
                    "obs": rng.normal(size=(16, obs_dim)).astype(np.float32),
                    "action": rng.uniform(-0.9, 0.9, (16, action_dim)).astype(np.float32),
                }
            )
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """A user's folder: the env module, a matching store, a store with 3-dim actions, and conf/task/mine.yaml."""
    root = tmp_path_factory.mktemp("user")
    (root / "dpi_cli_envs.py").write_text(textwrap.dedent(ENV_MODULE))
    write_store(root / "good.zarr")
    write_store(root / "act3.zarr", action_dim=3)
    (root / "conf" / "task").mkdir(parents=True)
    task = {
        "name": "mine",
        "kind": "policy",
        "env_id": ENV_ID,
        "dataset": str(root / "good.zarr"),
        "obs_keys": ["obs"],
        "action_key": "action",
        "horizon": 8,
        "n_obs_steps": 2,
        "n_action_steps": 4,
        "eval": {"episodes": 1, "n_envs": 1},
    }
    (root / "conf" / "task" / "mine.yaml").write_text(yaml.safe_dump(task))
    return root


def run(cmd: str, *args: str, cwd: Path, user: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{user}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / cmd), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


TRAIN = ["task=mine", "policy=mlp", "train=quick", "train.steps=2", "train.batch_size=8", "threads=1"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (  # the env's action dim differs from the dataset's
            ["task.dataset={user}/act3.zarr"],
            f"env {ENV_ID} action dim 2 != dataset action key 'action' dim 3 ({{user}}/act3.zarr)",
        ),
        (  # the env's observation dim (through env_kwargs) differs from the dataset's obs_keys slice
            ["++task.env_kwargs.obs_dim=5"],
            f"env {ENV_ID} observation dim 5 != dataset obs_keys ['obs'] dim 3 ({{user}}/good.zarr)",
        ),
        (  # an id whose namespace nobody registers
            ["task.env_id=mine/MyEnv-v0"],
            "task.env_id='mine/MyEnv-v0': namespace 'mine' is not registered; import the package that registers it",
        ),
        (  # a module:id whose module does not exist
            ["task.env_id=no_such_pkg:MyEnv-v0"],
            "task.env_id: cannot import module 'no_such_pkg' for env 'no_such_pkg:MyEnv-v0'",
        ),
        (  # a dataset typo on a task without a built-in expert: nothing is collected
            ["task.dataset={user}/goood.zarr"],
            "dataset {user}/goood.zarr does not exist (task 'mine': no built-in expert collects demonstrations "
            f"for env '{ENV_ID}')",
        ),
        (  # a success spec without its threshold
            ["++task.success.kind=reward_threshold"],
            "task.success.threshold is required with task.success.kind='reward_threshold'",
        ),
        (  # a mistyped training budget (the train group is optional, so Hydra alone would ignore it)
            ["train=quikc"],
            "train=quikc: no such training config (options: default, ",
        ),
    ],
)
def test_train_preflight_errors(user: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    args = [a.format(user=user) for a in args]
    base = [a for a in TRAIN if not (a.startswith("train=") and any(b.startswith("train=") for b in args))]
    proc = run("dpi-train", "--config-dir", str(user / "conf"), *base, *args, "out_dir=never", cwd=tmp_path, user=user)
    line = one_line_error(proc)
    assert expected.format(user=user) in line, line
    assert not (tmp_path / "never").exists()  # nothing was trained or written
    assert not (user / "goood.zarr").exists()  # nor collected


def test_builtin_task_dataset_typo_with_a_user_env_is_not_collected(user: Path, tmp_path: Path) -> None:
    """A built-in task pointed at the user's env: its demos section no longer applies (no expert for that env)."""
    proc = run(
        "dpi-train", "task=reach_around", f"task.env_id={ENV_ID}", "task.dataset=typo.zarr", "out_dir=never",
        cwd=tmp_path, user=user,
    )  # fmt: skip
    assert "error: dataset typo.zarr does not exist (task 'reach_around': no built-in expert" in one_line_error(proc)
    assert not (tmp_path / "typo.zarr").exists() and not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def checkpoint(user: Path, tmp_path_factory) -> Path:
    """The user's task trained 2 steps through dpi-train (pre-flight passes on the matching pair)."""
    root = tmp_path_factory.mktemp("ckpt")
    proc = run("dpi-train", "--config-dir", str(user / "conf"), *TRAIN, "out_dir=run", cwd=root, user=user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run" / "checkpoints" / "latest.pt"


def test_eval_overrides_reach_the_rollouts(user: Path, checkpoint: Path, tmp_path: Path) -> None:
    """dpi-eval task.max_episode_steps / task.success / task.n_action_steps / episodes on top of the checkpoint."""
    args = [f"checkpoint={checkpoint}", "episodes=3", "n_envs=1", f"out={tmp_path / 'ev'}"]
    args += [
        "task.max_episode_steps=5",
        "task.n_action_steps=2",
        "task.success={kind: reward_threshold, threshold: -9}",
    ]
    proc = run("dpi-eval", *args, cwd=tmp_path, user=user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_episodes"] == 3 and metrics["mean_episode_length"] == 5  # the overridden episode length
    assert metrics["success_rate"] == 1.0  # every step's reward (>= -2) passes the overridden threshold


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["task.n_action_steps=8"],
            "task.n_action_steps=8 is too large for {ckpt}: n_obs_steps + n_action_steps - 1 = 2 + 8 - 1 = 9 must be "
            "<= its horizon=8",
        ),
        (
            ["++task.env_kwargs.act_dim=3"],
            f"env {ENV_ID} action dim 3 != checkpoint action key 'action' dim 2 ({{ckpt}})",
        ),
        (["task.env_id=CartPole-v1"], "env CartPole-v1 action space Discrete(2) is not a flat Box"),
        (["task.env_id=mine/MyEnv-v0"], "task.env_id='mine/MyEnv-v0': namespace 'mine' is not registered"),
        (["task.success=sometimes"], "task.success.kind='sometimes' must be one of info_key, reward_threshold"),
    ],
)
def test_eval_override_errors(user: Path, checkpoint: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    proc = run("dpi-eval", f"checkpoint={checkpoint}", f"out={tmp_path / 'ev'}", *args, cwd=tmp_path, user=user)
    assert expected.format(ckpt=checkpoint) in one_line_error(proc)
    assert not (tmp_path / "ev").exists()  # refused before any rollout


@pytest.mark.parametrize("n_action_steps, per_episode", [(None, 2), (1, 6), (2, 3), (6, 1), (7, 1)])
def test_eval_n_action_steps_sets_how_many_actions_each_chunk_executes(
    user: Path, checkpoint: Path, tmp_path: Path, monkeypatch, n_action_steps: int | None, per_episode: int
) -> None:
    """dpi-eval's code path in-process: with 6-step episodes the policy predicts ceil(6 / Ta) chunks per
    episode, each of shape (B, Ta, Da) (the checkpoint's own Ta is 4)."""
    from hydra import compose, initialize_config_module

    from diffpolicy_immix import cli
    from diffpolicy_immix.policy import DiffusionPolicy

    monkeypatch.syspath_prepend(str(user))
    chunks: list[tuple[int, ...]] = []
    original = DiffusionPolicy.predict_action

    def counted(self, obs_dict, generator=None, previous=None):
        out = original(self, obs_dict, generator=generator, previous=previous)
        chunks.append(tuple(out["action"].shape))
        return out

    monkeypatch.setattr(DiffusionPolicy, "predict_action", counted)
    overrides = [f"checkpoint={checkpoint}", "episodes=2", "n_envs=1", f"out={tmp_path / 'ev'}"]
    if n_action_steps is not None:
        overrides.append(f"task.n_action_steps={n_action_steps}")
    with initialize_config_module(config_module="diffpolicy_immix_configs", version_base=None):
        cfg = compose("dpi_eval", overrides=overrides)
    cli._evaluate(cfg)
    ta = 4 if n_action_steps is None else n_action_steps
    assert chunks == [(1, ta, 2)] * (2 * per_episode)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["mean_episode_length"] == 6
