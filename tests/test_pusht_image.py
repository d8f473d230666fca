"""PushT seen by a camera (``immix/PushTImage-v0``): gym-pusht's 96x96 image beside Diffusion Policy's 5-d state,
rendering in both observation modes, and the collector storing its images for the task config to read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("gym_pusht")

import diffpolicy_immix_envs as E  # noqa: E402
import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from diffpolicy_immix.data import PolicyDataset, ReplayBuffer, collect_demonstrations  # noqa: E402

TASK_YAML = Path(__file__).resolve().parents[1] / "configs" / "task" / "pusht_image.yaml"


def _agent_pixel(img: np.ndarray) -> np.ndarray:
    """Centroid (x, y) in pixels of the blue agent disc in an RGB image (H, W, 3), shape (2,)."""
    rgb = img.astype(int)
    blue = rgb[..., 2] - np.maximum(rgb[..., 0], rgb[..., 1]) > 60  # (H, W); the T is grey, the goal green
    rows, cols = np.nonzero(blue)
    assert len(rows) > 0, "no agent in the image"
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized.*:UserWarning")
def test_pusht_image_passes_the_gymnasium_env_checker():
    env = E.make_env("pusht_image")
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.max_episode_steps == gym.spec(E.TASK_IDS["pusht"]).max_episode_steps == 300
    env.close()


def test_pusht_image_observes_the_image_and_diffusion_policys_state():
    env, state_env = E.make_env("pusht_image"), E.make_env("pusht")
    obs, _ = env.reset(seed=3)
    state, info = state_env.reset(seed=3)
    assert set(obs) == {"img", "state"} and env.observation_space.contains(obs)
    assert obs["img"].dtype == np.uint8 and obs["img"].shape == (96, 96, 3)
    # [agent_x, agent_y, block_x, block_y, angle]: the state task's info["state"], agent = its obs[18:20]
    np.testing.assert_array_equal(obs["state"], info["state"])
    np.testing.assert_array_equal(obs["state"][:2], state[18:20])
    np.testing.assert_array_equal(env.reset(seed=3)[0]["img"], obs["img"])  # the image is seeded too
    first = obs["img"]
    # the agent moves up by 120 px (22.5 image px); the image follows it, and the state equals the state task's
    target = np.clip(state[18:20] + [0.0, -120.0], 40.0, 472.0).astype(np.float32)
    for _ in range(8):
        obs, *_ = env.step(target)
        state, _, _, _, info = state_env.step(target)
        np.testing.assert_array_equal(obs["state"], info["state"])
        agent = obs["state"][:2]
        np.testing.assert_allclose(_agent_pixel(obs["img"]), agent * 96 / 512, atol=1.0)  # image x, y = px * 96/512
    assert np.linalg.norm(_agent_pixel(obs["img"]) - _agent_pixel(first)) > 10
    assert np.abs(obs["img"].astype(int) - first.astype(int)).sum() > 0
    env.close()
    state_env.close()


@pytest.mark.parametrize("obs_mode", ["state", "pixels_state"])
def test_render_frames_are_sized_apart_from_the_observed_image(obs_mode):
    from diffpolicy_immix_envs.pusht import PushTKeypointEnv

    env = PushTKeypointEnv(render_mode="rgb_array", width=160, height=120, obs_mode=obs_mode, image_size=32)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([256.0, 256.0], dtype=np.float32))
    frame = env.render()
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8 and frame.std() > 0
    if obs_mode == "pixels_state":
        assert obs["img"].shape == (32, 32, 3) and env.observation_space.contains(obs)
    else:
        assert obs.shape == (20,) and obs.dtype == np.float32
    env.close()


def test_bad_obs_mode_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="obs_mode='pixels'"):
        E.make_env("pusht", obs_mode="pixels")
    with pytest.raises(ValueError, match="width=0"):
        E.make_env("pusht_image", image_size=0)


def test_collection_stores_images_the_task_config_reads(tmp_path):
    kwargs = {"episodes": 2, "max_steps": 10, "keep_failed": True, "progress": False}
    collect_demonstrations("pusht_image", tmp_path / "pi.zarr", **kwargs)
    collect_demonstrations("pusht", tmp_path / "p.zarr", **kwargs)
    images, states = ReplayBuffer.open(tmp_path / "pi.zarr"), ReplayBuffer.open(tmp_path / "p.zarr")
    assert sorted(images.keys()) == ["action", "img", "keypoint", "state"]
    assert images["img"].dtype == np.uint8 and images["img"].shape == (20, 96, 96, 3)
    assert images.attrs["image_keys"] == ["img"] and images.attrs["obs_keys"] == ["img", "state"]
    # the expert acts as in the state task; "state" is Diffusion Policy's 5-d state, stored there as info
    np.testing.assert_array_equal(images["state"][:], states["state"][:])
    np.testing.assert_array_equal(images["action"][:], states["action"][:])
    np.testing.assert_array_equal(images["keypoint"][:], states["keypoint"][:])
    # the task's obs_keys: the camera and the agent position, the first two entries of the state
    task = yaml.safe_load(TASK_YAML.read_text())
    assert task["env_id"] == E.TASK_IDS["pusht_image"] and task["image_keys"] == ["img"]
    ds = PolicyDataset(
        tmp_path / "pi.zarr",
        obs_keys=task["obs_keys"],
        image_keys=task["image_keys"],
        horizon=task["horizon"],
        n_obs_steps=task["n_obs_steps"],
        n_action_steps=task["n_action_steps"],
    )
    assert ds.obs_dim == 2 and ds.image_shapes == {"img": (3, 96, 96)}
    idx = np.arange(len(ds))
    rows, _ = ds.sampler.window_rows(idx)
    batch = ds.get_batch(idx)
    np.testing.assert_array_equal(batch["obs"].numpy(), images["state"][:][rows][..., 0:2])  # agent x, y
