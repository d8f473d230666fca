"""robosuite Lift (``immix/RobosuiteLift-v0``): the one-line error where robosuite cannot run, and, in the
environment made by scripts/setup_robosuite.sh, the env contract, the scripted expert and a tiny
collect -> train -> evaluate run through the commands."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import diffpolicy_immix_envs as E
import gymnasium as gym
import numpy as np
import pytest
import yaml
from diffpolicy_immix_envs.robosuite_tasks import OBS_DIMS, SETUP_SCRIPT, import_robosuite

from diffpolicy_immix.errors import MissingExtraError
from diffpolicy_immix.evaluation import EnvSpec
from diffpolicy_immix.preflight import open_env

TASK_YAML = Path(__file__).resolve().parents[1] / "configs" / "task" / "robosuite_lift.yaml"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}


def _robosuite_runs() -> bool:
    try:
        import_robosuite()
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def robosuite():
    """Skip unless robosuite is installed and runs here (its own environment: scripts/setup_robosuite.sh)."""
    module = pytest.importorskip("robosuite")
    try:
        import_robosuite()
    except ImportError as err:
        pytest.skip(str(err))
    return module


def run(cmd: str, *args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / cmd), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{cmd} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# --- without robosuite (any environment) -------------------------------------------------------------
def test_missing_robosuite_is_a_one_line_error_naming_the_setup_script(monkeypatch):
    monkeypatch.setitem(sys.modules, "robosuite", None)  # as if not installed: `import robosuite` fails
    with pytest.raises(ImportError) as caught:
        E.make_env("robosuite_lift")
    message = str(caught.value)
    assert "\n" not in message and SETUP_SCRIPT in message and "robosuite 1.5.2" in message
    # the toolkit's pre-flight check turns it into its one-line missing-extra error
    with pytest.raises(MissingExtraError, match="scripts/setup_robosuite.sh") as caught:
        open_env(EnvSpec(env_id="immix/RobosuiteLift-v0"))
    assert "\n" not in str(caught.value)


def test_module_and_registration_do_not_import_robosuite():
    assert "robosuite_lift" in E.TASK_IDS and gym.spec("immix/RobosuiteLift-v0").max_episode_steps == 100
    code = "import diffpolicy_immix_envs as E, sys; E.make_expert('robosuite_lift'); print('robosuite' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.skipif(_robosuite_runs(), reason="robosuite runs in this environment")
def test_collect_without_robosuite_stops_with_one_line(tmp_path):
    proc = run("dpi-collect", "task=robosuite_lift", "episodes=1", cwd=tmp_path, ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and SETUP_SCRIPT in lines[0], proc.stderr
    assert not (tmp_path / "datasets").exists()


# --- with robosuite ----------------------------------------------------------------------------------
def test_spaces_keys_and_info(robosuite):
    env = E.make_env("robosuite_lift")
    assert list(env.observation_space.spaces) == list(OBS_DIMS)
    for key, n in OBS_DIMS.items():
        space = env.observation_space[key]
        assert space.shape == (n,) and space.dtype == np.float32
    assert env.action_space.shape == (7,) and env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    assert env.metadata["render_fps"] == 20
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["success"] is False and 0.0 <= info["score"] < 1.0
    # object = cube_pos, cube_quat, cube_pos - eef_pos: the last three follow from the others
    np.testing.assert_allclose(obs["object"][7:10], obs["object"][:3] - obs["robot0_eef_pos"], atol=1e-6)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and reward == info["score"]
        assert isinstance(info["success"], bool) and 0.0 <= info["score"] <= 1.0
    env.close()


@pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")
def test_check_env(robosuite):
    from gymnasium.utils.env_checker import check_env

    env = E.make_env("robosuite_lift")
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_task_obs_keys_match_the_flattened_observation(robosuite):
    """The task's eval wrapper (FlattenObservation) gives the vector the dataset's obs_keys concatenate."""
    task = yaml.safe_load(TASK_YAML.read_text())
    assert task["obs_keys"] == list(OBS_DIMS)
    assert task["wrappers"] == ["gymnasium.wrappers:FlattenObservation"]
    env = gym.wrappers.FlattenObservation(E.make_env("robosuite_lift"))
    flat, _ = env.reset(seed=3)
    obs, _ = E.make_env("robosuite_lift").reset(seed=3)
    np.testing.assert_array_equal(flat, np.concatenate([obs[k] for k in task["obs_keys"]]))
    assert flat.dtype == np.float32 and flat.shape == (sum(OBS_DIMS.values()),)
    env.close()


def test_reset_is_deterministic_by_seed(robosuite):
    env = E.make_env("robosuite_lift")
    first, _ = env.reset(seed=11)
    other, _ = env.reset(seed=12)
    again, _ = env.reset(seed=11)
    for key in OBS_DIMS:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.allclose(first["object"][:3], other["object"][:3])
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(4, 7)).astype(np.float32)
    runs = []
    for _ in range(2):
        env.reset(seed=5)
        runs.append(np.stack([env.step(a)[0]["robot0_eef_pos"] for a in actions]))
    np.testing.assert_array_equal(runs[0], runs[1])
    # a second env instance starts from the same state for the same seed
    fresh = E.make_env("robosuite_lift")
    np.testing.assert_array_equal(fresh.reset(seed=11)[0]["object"], first["object"])
    fresh.close()
    env.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_lifts_the_cube(robosuite, seed):
    env = E.make_env("robosuite_lift")
    expert = E.make_expert("robosuite_lift")
    obs, info = env.reset(seed=seed)
    expert.reset(env)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        action = expert.act(env, obs)
        assert action.dtype == np.float32 and env.action_space.contains(action)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
    assert terminated and info["success"] and reward == 1.0
    assert steps <= 60  # about 38 steps on average
    env.close()


def test_render_agentview(robosuite):
    env = E.make_env("robosuite_lift", render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    try:
        frame = env.render()
    except Exception as err:  # noqa: BLE001 - no usable OpenGL here
        pytest.skip(f"no offscreen rendering with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {err}")
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
    env.close()


def test_collect_train_evaluate_smoke(robosuite, tmp_path):
    run("dpi-collect", "task=robosuite_lift", "episodes=6", "out=lift.zarr", cwd=tmp_path)
    from diffpolicy_immix.data import ReplayBuffer

    with ReplayBuffer.open(tmp_path / "lift.zarr") as buf:
        assert sorted(buf.keys()) == sorted(["action", *OBS_DIMS])
        for key, n in OBS_DIMS.items():
            assert buf[key].shape == (buf.n_steps, n) and buf[key].dtype == np.float32
        assert buf.n_episodes == 6 and buf.attrs["obs_keys"] == list(OBS_DIMS)
    run(
        "dpi-train",
        "task=robosuite_lift",
        "task.dataset=lift.zarr",
        "train.steps=20",
        "train.batch_size=32",
        "train.eval_every=20",
        "train.checkpoint_every=20",
        "task.eval.episodes=2",
        "task.eval.n_envs=2",
        "out_dir=run",
        "threads=1",
        cwd=tmp_path,
    )
    (final,) = rows(tmp_path / "run" / "eval.csv")
    assert final["step"] == "20" and float(final["eval_episodes"]) == 2
    assert 0.0 <= float(final["success_rate"]) <= 1.0 and float(final["mean_episode_length"]) > 0
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    run("dpi-eval", f"checkpoint={ckpt}", "episodes=2", "n_envs=2", cwd=tmp_path)
    result = json.loads((tmp_path / "run" / "eval" / "latest" / "metrics.json").read_text())
    assert result["success_rate"] == float(final["success_rate"])  # the same test seeds and sampling


@pytest.mark.skipif(importlib.util.find_spec("robosuite") is None, reason="robosuite is not installed")
def test_robosuite_environment_keeps_the_toolkit_importable():
    """The mujoco 3.3 environment still imports the toolkit's own parts."""
    import diffpolicy_immix.app  # noqa: F401
    import diffpolicy_immix.experiments  # noqa: F401
    import diffpolicy_immix.imagegen  # noqa: F401
    import diffpolicy_immix.policy  # noqa: F401

    env = E.make_env("reach_around")  # own MJCF task on this mujoco
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6,)
    env.close()
