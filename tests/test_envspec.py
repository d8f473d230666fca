"""Task environments from config: ids in every form gymnasium accepts, kwargs, wrappers, the success
spec, the episode length, and evaluation through them."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffpolicy_immix.evaluation import EnvSpec, SuccessSpec, evaluate_policy, success_from_step
from diffpolicy_immix.evaluation import rollout as rollout_mod
from diffpolicy_immix.evaluation.envspec import make_env, resolve

TINY = '''
import gymnasium as gym
import numpy as np


class Tiny(gym.Env):
    """obs (3,), action (2,) in [-1, 1]; reward = -|a - target|; success when the reward >= -0.1."""

    def __init__(self, target=0.5, report=True):
        self.observation_space = gym.spaces.Box(-10, 10, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.target, self.report = float(target), report

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), ({"is_success": False} if self.report else {})

    def step(self, action):
        reward = -float(np.abs(np.asarray(action) - self.target).max())
        info = {"is_success": reward >= -0.1} if self.report else {}
        return np.full(3, reward, np.float32), reward, reward >= -0.1, False, info


class Scale(gym.ActionWrapper):
    def __init__(self, env, factor=1.0):
        super().__init__(env)
        self.factor = factor

    def action(self, action):
        return np.asarray(action) * self.factor


gym.register(id="tinyns/Tiny-v0", entry_point=Tiny, max_episode_steps=5)
'''


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory) -> str:
    """A module on sys.path that registers ``tinyns/Tiny-v0`` when imported."""
    root = tmp_path_factory.mktemp("tinypkg")
    (root / "dpi_tiny_envs.py").write_text(textwrap.dedent(TINY))
    sys.path.insert(0, str(root))
    yield "dpi_tiny_envs"
    sys.path.remove(str(root))


class ConstantPolicy:
    """Always the same action (n_envs, 2)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def reset(self) -> None:
        pass

    def select_action(self, obs, generator=None):
        return torch.full((obs.shape[0], 2), self.value)


def test_module_colon_id_imports_the_module_first(tiny_module: str) -> None:
    spec = EnvSpec.from_task({"env_id": f"{tiny_module}:tinyns/Tiny-v0"})
    assert resolve(spec).id == "tinyns/Tiny-v0" and resolve(spec).max_episode_steps == 5
    env = make_env(spec)()
    assert env.observation_space.shape == (3,)
    env.close()


def test_env_module_option_and_overrides(tiny_module: str) -> None:
    task = {
        "env_id": "tinyns/Tiny-v0",
        "env_module": tiny_module,
        "env_kwargs": {"target": 0.25},
        "wrappers": [{"target": f"{tiny_module}:Scale", "kwargs": {"factor": 0.5}}, "gymnasium.wrappers:ClipAction"],
        "max_episode_steps": 3,
    }
    spec = EnvSpec.from_task(task)
    assert spec.env_module == (tiny_module,) and resolve(spec).max_episode_steps == 3
    env = make_env(spec)()
    assert isinstance(env, gym.wrappers.ClipAction)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.array([0.5, 0.5], np.float32))  # scaled to 0.25 = the target
    assert reward == pytest.approx(0.0)
    env.close()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"env_id": "nosuchns/Env-v0"}, "task.env_id='nosuchns/Env-v0': namespace 'nosuchns' is not registered"),
        ({"env_id": "no_such_module_xyz:Env-v0"}, "task.env_id: cannot import module 'no_such_module_xyz'"),
        ({"env_id": "NoSuchEnvAtAll-v0"}, "task.env_id='NoSuchEnvAtAll-v0': Environment `NoSuchEnvAtAll` doesn't"),
        ({"env_id": "Pendulum-v1", "env_module": "no_such_module_xyz"}, "task.env_module: cannot import module"),
    ],
)
def test_unresolvable_ids_are_one_line_errors(task: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        resolve(EnvSpec.from_task(task))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({}, "has no env_id"),
        ({"env_id": "Pendulum-v1", "success": {"kind": "maybe"}}, "task.success.kind='maybe' must be one of"),
        ({"env_id": "Pendulum-v1", "success": {"kind": "reward_threshold"}}, "task.success.threshold is required"),
        ({"env_id": "Pendulum-v1", "success": {"kind": "info_key", "key": ""}}, "task.success.key='' must be"),
        ({"env_id": "Pendulum-v1", "success": {"knd": "none"}}, "task.success: unknown field 'knd'"),
        ({"env_id": "Pendulum-v1", "wrappers": ["gymnasium.wrappers.ClipAction"]}, "must be an import path"),
        ({"env_id": "Pendulum-v1", "wrappers": "x:Y"}, "task.wrappers='x:Y' must be a list"),
        ({"env_id": "Pendulum-v1", "env_kwargs": [1]}, "task.env_kwargs=[1] must be a mapping"),
        ({"env_id": "Pendulum-v1", "max_episode_steps": 0}, "task.max_episode_steps=0 must be a positive integer"),
    ],
)
def test_invalid_fields_name_the_field(task: dict, message: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        EnvSpec.from_task(task)
    assert message in str(err.value)


def test_missing_wrapper_class_is_named(tiny_module: str) -> None:
    spec = EnvSpec.from_task({"env_id": f"{tiny_module}:tinyns/Tiny-v0", "wrappers": [f"{tiny_module}:Nope"]})
    with pytest.raises(ValueError, match="module 'dpi_tiny_envs' has no attribute 'Nope'"):
        make_env(spec)()


def test_success_from_step_per_kind() -> None:
    assert EnvSpec("X-v0").success == SuccessSpec("info_key", "success")  # the toolkit tasks' info["success"]
    assert success_from_step(SuccessSpec(), 0.0, False, {"success": True})
    assert not success_from_step(SuccessSpec(), 0.0, True, {})
    assert success_from_step(SuccessSpec("info_key", "is_success"), 0.0, False, {"is_success": np.True_})
    s = SuccessSpec.from_config({"threshold": -0.1})
    assert s.kind == "reward_threshold"
    assert success_from_step(s, -0.05, False, {}) and not success_from_step(s, -0.2, False, {})
    assert success_from_step(SuccessSpec.from_config("terminated"), 0.0, True, {})
    assert not success_from_step(SuccessSpec.from_config({"kind": "terminated"}), 0.0, False, {"success": True})
    assert not success_from_step(SuccessSpec("none"), 1.0, True, {"success": True})


@pytest.mark.parametrize(
    ("success", "value", "rate"),
    [
        ({"kind": "info_key", "key": "is_success"}, 0.5, 1.0),
        ({"kind": "info_key", "key": "is_success"}, -0.5, 0.0),
        ({"kind": "reward_threshold", "threshold": -0.2}, 0.4, 1.0),
        ({"kind": "terminated"}, 0.5, 1.0),
        ({"kind": "none"}, 0.5, 0.0),
    ],
)
def test_evaluation_reads_the_success_spec(tiny_module: str, success: dict, value: float, rate: float) -> None:
    spec = EnvSpec.from_task({"env_id": f"{tiny_module}:tinyns/Tiny-v0", "success": success})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate_policy(ConstantPolicy(value), spec, n_episodes=3, n_envs=2, progress=False)
    assert m["success_rate"] == rate and m["n_crashed"] == 0


def test_unreported_info_key_warns_once(tiny_module: str, monkeypatch) -> None:
    monkeypatch.setattr(rollout_mod, "_WARNED_UNREPORTED", set())
    spec = EnvSpec.from_task({"env_id": f"{tiny_module}:tinyns/Tiny-v0", "env_kwargs": {"report": False}})
    with pytest.warns(RuntimeWarning, match=r"never reported info\['success'\]"):
        m = evaluate_policy(ConstantPolicy(0.5), spec, n_episodes=2, n_envs=2, progress=False)
    assert m["success_rate"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_policy(ConstantPolicy(0.5), spec, n_episodes=2, n_envs=2, progress=False)


def test_string_ids_keep_working(tiny_module: str) -> None:
    m = evaluate_policy(
        ConstantPolicy(0.0), "immix/ReachAround-v0", n_episodes=1, n_envs=1, max_steps=3, progress=False
    )
    assert m["mean_episode_length"] == 3.0


def test_async_workers_build_the_spec(tiny_module: str, tmp_path: Path) -> None:
    spec = EnvSpec.from_task(
        {"env_id": f"{tiny_module}:tinyns/Tiny-v0", "success": {"kind": "info_key", "key": "is_success"}}
    )
    m = evaluate_policy(ConstantPolicy(0.5), spec, n_episodes=2, n_envs=2, vector_mode="async", progress=False)
    assert m["success_rate"] == 1.0
