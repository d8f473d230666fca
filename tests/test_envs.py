"""Tests of the simulated tasks (``diffpolicy_immix_envs``): spaces, seeding, scores, experts, rendering."""

from __future__ import annotations

import os

import diffpolicy_immix_envs as E
import gymnasium as gym
import numpy as np
import pytest
from diffpolicy_immix_envs import geometry as G
from gymnasium.utils.env_checker import check_env

OWN_TASKS = ["reach_around", "push_block"]
ALL_TASKS = [*OWN_TASKS, "point_maze", "pusht"]
OPTIONAL = {"point_maze": "gymnasium_robotics", "pusht": "gym_pusht"}


def _need(task: str) -> None:
    if task in OPTIONAL:
        pytest.importorskip(OPTIONAL[task])


def _run_expert(task: str, seed: int, expert_seed: int = 0, max_steps: int | None = None, **options) -> dict:
    env = E.make_env(task)
    expert = E.make_expert(task, seed=expert_seed, **options)
    obs, info = env.reset(seed=seed)
    expert.reset(env)
    best = info["score"]
    steps = 0
    while True:
        action = expert.act(env, obs)
        assert action.dtype == np.float32 and action.shape == env.action_space.shape
        assert env.action_space.contains(action)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        best = max(best, reward)
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    env.close()
    return {"info": info, "best": best, "steps": steps, "expert": expert}


# --- registration and names --------------------------------------------------------------------------
def test_ids_registered_and_idempotent():
    assert set(E.TASK_IDS) == {
        "reach_around",
        "push_block",
        "point_maze",
        "pusht",
        "reach_around_image",
        "push_block_image",
        "pusht_image",
        "robosuite_lift",
    }
    E.register_envs()  # a second registration must not raise or duplicate
    for env_id in E.TASK_IDS.values():
        assert env_id.startswith("immix/")
        spec = gym.spec(env_id)
        assert spec.max_episode_steps is not None and spec.max_episode_steps > 0
    assert E.resolve_task("reach_around") == E.resolve_task("immix/ReachAround-v0") == "immix/ReachAround-v0"


def test_bad_task_name_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="reach_arund"):
        E.make_env("reach_arund")
    with pytest.raises(ValueError, match=r"immix/PushBlok-v0.*immix/PushBlock-v0"):
        E.make_expert("immix/PushBlok-v0")


def test_bad_render_arguments():
    from diffpolicy_immix_envs.reach_around import ReachAroundEnv

    with pytest.raises(ValueError, match="render_mode='human'"):
        ReachAroundEnv(render_mode="human")
    with pytest.raises(ValueError, match="width=0"):
        E.make_env("push_block", width=0)


# --- gymnasium contract ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning", "ignore:.*symmetric and normalized.*:UserWarning")
@pytest.mark.parametrize("task", ALL_TASKS)
def test_check_env(task):
    _need(task)
    env = E.make_env(task)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.dtype == np.float32 and env.action_space.dtype == np.float32
    env.close()


@pytest.mark.parametrize("task", ALL_TASKS)
def test_reset_is_deterministic_and_seeds_differ(task):
    _need(task)
    env = E.make_env(task)
    first, _ = env.reset(seed=123)
    again, _ = env.reset(seed=123)
    other, _ = env.reset(seed=124)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # the same seed and actions give the same trajectory
    actions = [env.action_space.sample() for _ in range(5)]
    runs = []
    for _ in range(2):
        env.reset(seed=7)
        runs.append(np.stack([env.step(a)[0] for a in actions]))
    np.testing.assert_array_equal(runs[0], runs[1])
    env.close()


@pytest.mark.parametrize("task", ALL_TASKS)
def test_info_reward_and_spaces(task):
    _need(task)
    env = E.make_env(task)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert isinstance(info["success"], bool) and 0.0 <= info["score"] <= 1.0
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert isinstance(info["success"], bool) and 0.0 <= info["score"] <= 1.0
        assert reward == pytest.approx(info["score"]) and terminated == info["success"]
    env.close()


# --- task specifics ----------------------------------------------------------------------------------
def test_reach_around_goal_pose_is_success():
    env = E.make_env("reach_around")
    obs, info = env.reset(seed=0, options={"start": (0.0, 0.3), "goal": (0.0, 0.35)})
    assert obs[4:6] == pytest.approx([0.0, 0.35])
    obs, reward, terminated, _, info = env.step(np.array([0.0, 0.35], dtype=np.float32))
    assert info["success"] and terminated and reward == 1.0
    # straight up from below is blocked by the obstacle: the robot stops under it
    env.reset(seed=0, options={"start": (0.0, -0.35), "goal": (0.0, 0.35)})
    for _ in range(20):
        obs, *_ = env.step(np.array([0.0, 0.35], dtype=np.float32))
    assert obs[1] < -0.08
    env.close()


def test_push_block_score_is_footprint_overlap():
    env = E.make_env("push_block")
    far = np.array([0.2, 0.2, 0.0])
    _, info = env.reset(seed=0, options={"block_pose": far, "pusher_pos": (-0.2, -0.2)})
    assert info["score"] == 0.0 and not info["success"]
    # shifted by 0.03 m along x (block half-length 0.06): half of the footprint overlaps
    _, info = env.reset(seed=0, options={"block_pose": (0.03, 0.0, 0.0), "pusher_pos": (-0.2, -0.2)})
    assert info["score"] == pytest.approx(0.75, abs=1e-9)
    # a half turn leaves the footprint unchanged: full overlap and success
    _, info = env.reset(seed=0, options={"block_pose": (0.0, 0.0, np.pi), "pusher_pos": (-0.2, -0.2)})
    assert info["score"] == pytest.approx(1.0) and info["success"]
    env.close()


def test_point_maze_observation_and_pairs():
    pytest.importorskip("gymnasium_robotics")
    from diffpolicy_immix_envs.point_maze import START_GOAL_CELLS

    env = E.make_env("point_maze")
    pairs = set()
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        u = env.unwrapped
        np.testing.assert_allclose(obs[4:6], u.goal, rtol=0, atol=1e-6)
        pairs.add((tuple(info["start_cell"]), tuple(info["goal_cell"])))
        assert u.cell_of(obs[:2]) == tuple(info["start_cell"])
    assert pairs <= set(START_GOAL_CELLS) and len(pairs) >= 4
    with pytest.raises(ValueError, match="goal_cell"):
        env.reset(seed=0, options={"goal_cell": (0, 0)})
    env.close()


def test_pusht_keypoints_match_derivation_and_block_pose():
    pytest.importorskip("gym_pusht")
    from diffpolicy_immix_envs.pusht import BLOCK_KEYPOINTS_LOCAL, block_keypoints, derive_block_keypoints

    np.testing.assert_allclose(derive_block_keypoints(seed=0, n=9), BLOCK_KEYPOINTS_LOCAL, atol=1e-5)
    env = E.make_env("pusht")
    obs, info = env.reset(seed=3)
    assert obs.shape == (20,) and info["keypoint"].shape == (9, 2) and info["state"].shape == (5,)
    np.testing.assert_allclose(obs[:18], info["keypoint"].reshape(-1), atol=1e-3)
    np.testing.assert_allclose(obs[18:], info["state"][:2], atol=1e-3)
    # the pose convention matches gym-pusht's own vertex placement
    pusht = env.unwrapped.pusht
    local = np.concatenate([np.array([list(v) for v in s.get_vertices()]) for s in pusht._block_shapes])
    pose = np.array([*pusht.block.position, pusht.block.angle])
    np.testing.assert_allclose(block_keypoints(pose, local), pusht.get_keypoints(pusht._block_shapes), atol=1e-6)
    env.close()


# --- experts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_reach_around_expert_succeeds(seed):
    assert _run_expert("reach_around", seed)["info"]["success"]


def test_reach_around_expert_is_bimodal():
    env = E.make_env("reach_around")
    expert = E.make_expert("reach_around", seed=0)
    routes = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        expert.reset(env)
        for _ in range(60):
            obs, _, terminated, truncated, info = env.step(expert.act(env, obs))
            if terminated or truncated:
                break
        assert info["route"] == (1 if expert.mode == "right" else -1)
        routes.append(info["route"])
    assert set(routes) == {-1, 1}


@pytest.mark.parametrize("seed", range(3))
def test_push_block_expert_succeeds(seed):
    assert _run_expert("push_block", seed)["info"]["success"]


def _first_actions(task: str, expert_seed: int, steps: int, **options) -> np.ndarray:
    env = E.make_env(task)
    obs, _ = env.reset(seed=11)
    expert = E.make_expert(task, seed=expert_seed, **options)
    expert.reset(env)
    actions = []
    for _ in range(steps):
        actions.append(expert.act(env, obs))
        obs, *_ = env.step(actions[-1])
    return np.array(actions)


def test_push_block_expert_without_jitter_is_a_function_of_the_state():
    """jitter=False plans over a fixed grid of candidate pushes: experts of any seed act alike from the same
    state, while the default jittered candidates make them differ."""
    fixed = [_first_actions("push_block", s, 12, jitter=False) for s in (0, 1, 2)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    np.testing.assert_array_equal(fixed[0], fixed[2])
    jittered = [_first_actions("push_block", s, 12) for s in (0, 1)]
    assert np.abs(jittered[0] - jittered[1]).max() > 1e-3


@pytest.mark.parametrize("seed", range(2))
def test_push_block_expert_without_jitter_succeeds(seed):
    assert _run_expert("push_block", seed, jitter=False)["info"]["success"]


@pytest.mark.parametrize("seed", range(3))
def test_point_maze_expert_succeeds(seed):
    pytest.importorskip("gymnasium_robotics")
    assert _run_expert("point_maze", seed)["info"]["success"]


def test_point_maze_expert_takes_both_routes():
    pytest.importorskip("gymnasium_robotics")
    env = E.make_env("point_maze")
    expert = E.make_expert("point_maze", seed=0)
    routes = set()
    for _ in range(8):  # the same start/goal pair, different expert draws
        env.reset(seed=0, options={"start_cell": (1, 1), "goal_cell": (6, 3)})
        expert.reset(env)
        routes.add(tuple(expert.route))
    assert len(routes) >= 2 and all(len(r) == len(next(iter(routes))) for r in routes)


def test_pusht_expert_short_episode():
    pytest.importorskip("gym_pusht")
    out = _run_expert("pusht", seed=1, max_steps=120)
    assert out["info"]["success"], f"coverage {out['info']['coverage']:.3f} after {out['steps']} steps"


@pytest.mark.slow
def test_pusht_expert_several_seeds():
    pytest.importorskip("gym_pusht")
    results = [_run_expert("pusht", seed)["best"] for seed in range(5)]
    assert np.mean(results) > 0.9


# --- rendering ---------------------------------------------------------------------------------------
def _gl_or_skip() -> None:
    import mujoco

    try:
        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
        mujoco.Renderer(model, 8, 8).close()
    except Exception as err:  # noqa: BLE001 - any failure here means no usable OpenGL
        pytest.skip(f"no OpenGL platform library for MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {err}")


@pytest.mark.parametrize("task", ALL_TASKS)
def test_render_rgb_array(task):
    _need(task)
    _gl_or_skip()
    env = E.make_env(task, render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 0  # not a blank image
    env.close()


def test_render_none_mode_returns_none():
    env = E.make_env("reach_around")
    env.reset(seed=0)
    with pytest.warns(UserWarning):
        assert env.unwrapped.render() is None
    env.close()


# --- geometry ----------------------------------------------------------------------------------------
def test_convex_overlap_area():
    square = G.box_polygon(1.0, 1.0)  # area 4
    assert G.convex_overlap_area(square, square) == pytest.approx(4.0)
    assert G.convex_overlap_area(square, square + [1.0, 0.0]) == pytest.approx(2.0)
    assert G.convex_overlap_area(square, square + [3.0, 0.0]) == 0.0
    diamond = G.to_world(square, np.array([0.0, 0.0, np.pi / 4]))
    # a square and the same square turned by 45 degrees share a regular octagon: 8 (sqrt 2 - 1) * 1^2
    assert G.convex_overlap_area(square, diamond) == pytest.approx(8 * (np.sqrt(2) - 1))


def test_path_around_convex_avoids_the_polygon():
    square = G.box_polygon(1.0, 1.0)
    path = G.path_around_convex(np.array([-2.0, 0.0]), np.array([2.0, 0.0]), square)
    pts = np.array([[-2.0, 0.0], *path])
    assert len(path) == 3  # two corners, then the goal
    for a, b in zip(pts[:-1], pts[1:]):
        assert not G.segment_crosses_convex(a, b, square)
    assert np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1)) == pytest.approx(2 + 2 * np.sqrt(2))
