"""Pre-flight checks of a task's env against its dataset: every message of docs/tasks.md."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from diffpolicy_immix.data import PolicyDataset, ReplayBuffer
from diffpolicy_immix.preflight import check_train_choice, preflight

ENV = """
import gymnasium as gym
import numpy as np


class Tiny(gym.Env):
    def __init__(self, report=True, obs_dim=3):
        self.observation_space = gym.spaces.Box(-10, 10, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.report = report

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.float32), ({"success": False} if self.report else {})

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, False, {}


gym.register(id="preflightns/Tiny-v0", entry_point=Tiny, max_episode_steps=5)
"""


@pytest.fixture(scope="module")
def env_module(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("pfpkg")
    (root / "dpi_preflight_envs.py").write_text(textwrap.dedent(ENV))
    sys.path.insert(0, str(root))
    yield "dpi_preflight_envs"
    sys.path.remove(str(root))


def store(path: Path, obs_dim: int = 4, action_dim: int = 2, action_scale: float = 0.9) -> Path:
    rng = np.random.default_rng(0)
    with ReplayBuffer.create_writer(path) as w:
        for _ in range(3):
            w.add_episode(
                {
                    "obs": rng.normal(size=(12, obs_dim)).astype(np.float32),
                    "action": (action_scale * rng.uniform(-1, 1, (12, action_dim))).astype(np.float32),
                }
            )
    return path


def task(env_module: str, dataset: Path, **extra) -> dict:
    t = {
        "name": "mine",
        "kind": "policy",
        "env_id": f"{env_module}:preflightns/Tiny-v0",
        "dataset": str(dataset),
        "obs_keys": ["obs:0:3"],
        "action_key": "action",
        "horizon": 8,
        "n_obs_steps": 2,
        "n_action_steps": 4,
    }
    t.update(extra)
    return t


def dataset(t: dict) -> PolicyDataset:
    return PolicyDataset(
        t["dataset"], obs_keys=t["obs_keys"], action_key=t["action_key"], horizon=8, n_obs_steps=2, n_action_steps=4
    )


def test_a_matching_env_and_dataset_pass(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight(t)
        preflight(t, dataset(t))
        preflight(t, t["dataset"])  # a store path works too


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_dataset_without_an_expert(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, tmp_path / "typo.zarr", demos={"episodes": 10, "seed": 0})
    with pytest.raises(FileNotFoundError) as err:
        preflight(t)
    assert one_line(err).startswith(f"dataset {tmp_path / 'typo.zarr'} does not exist (task 'mine'")
    # a built-in task with demos collects its missing dataset: no error
    preflight(dict(t, env_id="immix/ReachAround-v0", obs_keys=["obs"]))


def test_unresolvable_env(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr"), env_id="mine/MyEnv-v0")
    with pytest.raises(ValueError) as err:
        preflight(t)
    assert one_line(err).startswith("task.env_id='mine/MyEnv-v0': namespace 'mine' is not registered; import")


def test_observation_dim_mismatch(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr"), obs_keys=["obs"])
    with pytest.raises(ValueError) as err:
        preflight(t, dataset(t))
    assert one_line(err).startswith(
        "env dpi_preflight_envs:preflightns/Tiny-v0 observation dim 3 != dataset obs_keys ['obs'] dim 4 ("
    )


def test_action_dim_mismatch(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr", action_dim=3))
    with pytest.raises(ValueError) as err:
        preflight(t, dataset(t))
    assert "action dim 2 != dataset action key 'action' dim 3" in one_line(err)


def test_action_range_beyond_the_bounds_warns(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr", action_scale=1.5))
    with pytest.warns(UserWarning, match=r"dataset action 'action' dim 0 range \[-1.\d+, 1.\d+\] exceeds env .* "):
        preflight(t, dataset(t))


def test_unreported_success_key_warns(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr"), env_kwargs={"report": False})
    with pytest.warns(UserWarning, match=r"does not report info\['success'\] at reset or after one step"):
        preflight(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight(dict(t, success={"kind": "none"}))


def test_invalid_success_spec(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr"), success={"kind": "reward_threshold"})
    with pytest.raises(ValueError) as err:
        preflight(t)
    assert one_line(err) == "task.success.threshold is required with task.success.kind='reward_threshold'"


def test_env_that_rejects_its_kwargs(env_module: str, tmp_path: Path) -> None:
    t = task(env_module, store(tmp_path / "d.zarr"), env_kwargs={"colour": "red"})
    with pytest.raises(ValueError) as err:
        preflight(t)
    assert one_line(err).startswith(
        "env dpi_preflight_envs:preflightns/Tiny-v0: building it with env_kwargs {'colour': 'red'} and wrappers [] "
        "raised TypeError"
    )


def test_non_box_spaces(tmp_path: Path) -> None:
    t = {
        "name": "cp",
        "env_id": "CartPole-v1",
        "dataset": str(store(tmp_path / "d.zarr")),
        "obs_keys": ["obs"],
        "success": "none",
    }
    with pytest.raises(ValueError) as err:
        preflight(t, dataset(dict(t, action_key="action")))
    assert "env CartPole-v1 action space Discrete(2) is not a flat Box" in one_line(err)


def test_image_tasks_pass_through() -> None:
    preflight({"kind": "image", "dataset": "/nonexistent"})


def test_train_choice() -> None:
    check_train_choice("mytask", "mytask", ["default", "quick"])  # the implicit per-task choice
    check_train_choice("quick", "mytask", ["default", "quick"])
    with pytest.raises(ValueError, match=r"^train=quikc: no such training config \(options: default, quick\)$"):
        check_train_choice("quikc", "mytask", ["quick", "default"])


def test_camera_tasks_check_the_dict_observation_keys_and_low_dim_width() -> None:
    import gymnasium as gym

    from diffpolicy_immix.preflight import check_spaces

    obs = gym.spaces.Dict(
        {"img": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8), "state": gym.spaces.Box(-1, 1, (6,), np.float32)}
    )
    act = gym.spaces.Box(-1, 1, (2,), np.float32)
    dims = (2, 2, None, None, "ckpt")
    check_spaces("cam", obs, act, ["img", "state:0:2"], "action", dims, image_keys=["img"])
    with pytest.raises(ValueError, match=r"^env cam observation dim 6 != checkpoint obs_keys \['img', 'state'\] dim 2"):
        check_spaces("cam", obs, act, ["img", "state"], "action", dims, image_keys=["img"], side="checkpoint")
    with pytest.raises(ValueError, match=r"^env cam observation has no key 'pos' \(task.obs_keys \['img', 'pos'\]\)"):
        check_spaces("cam", obs, act, ["img", "pos"], "action", dims, image_keys=["img"])
