"""Evaluator: seeded vectorized rollouts, metrics, crash handling and videos."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffpolicy_immix.data import LinearNormalizer
from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.evaluation import (
    EpisodeResult,
    evaluate_policy,
    rollout_episodes,
    summarize_episodes,
    write_video,
)
from diffpolicy_immix.policy import DiffusionPolicy, PolicyConfig

TINY_ID = "immixtest/Tiny-v0"
TINY_MAX_STEPS = 10
STEP = 0.25  # the agent moves STEP * clip(action, -1, 1) per step


class TinyEnv(gym.Env):
    """1-D reach: the goal lies at +1 when ``seed % 3 == 0`` and at -1 otherwise.

    obs = [x, goal]; reward = score = 0.5 + 0.5 * clip(x * goal, -1, 1); success (terminates) when
    x * goal >= 1. A policy that always pushes +1 succeeds in 4 steps with max reward 1 exactly on the
    seeds divisible by 3, and otherwise fails after 10 steps with max reward 0.5 - 0.5 * STEP.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        render_mode: str | None = None,
        crash_step_seeds: tuple[int, ...] = (),
        crash_reset_seeds: tuple[int, ...] = (),
        render_raises: bool = False,
    ) -> None:
        self.observation_space = gym.spaces.Box(-5.0, 5.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.render_mode = render_mode
        self.crash_step_seeds = tuple(crash_step_seeds)
        self.crash_reset_seeds = tuple(crash_reset_seeds)
        self.render_raises = render_raises
        self.seed_ = None
        self.x = 0.0
        self.goal = -1.0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.x, self.goal], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed in self.crash_reset_seeds:
            raise RuntimeError(f"reset boom on seed {seed}")
        self.seed_ = seed
        self.x, self.t = 0.0, 0
        self.goal = 1.0 if seed is not None and seed % 3 == 0 else -1.0
        return self._obs(), {"success": False, "score": 0.5}

    def step(self, action):
        self.t += 1
        if self.seed_ in self.crash_step_seeds and self.t == 2:
            raise RuntimeError(f"step boom on seed {self.seed_}")
        self.x += STEP * float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        score = 0.5 + 0.5 * float(np.clip(self.x * self.goal, -1.0, 1.0))
        success = self.x * self.goal >= 1.0 - 1e-9
        return self._obs(), score, success, False, {"success": success, "score": score}

    def render(self):
        if self.render_raises:
            raise RuntimeError("no display")
        frame = np.zeros((24, 40, 3), dtype=np.uint8)
        col = int(np.clip((self.x + 1.0) / 2.0 * 39, 0, 39))
        frame[:, col] = 255
        return frame


gym.register(TINY_ID, entry_point=TinyEnv, max_episode_steps=TINY_MAX_STEPS, disable_env_checker=True)


class PushRight:
    """A scripted policy: always action +1; counts resets and calls."""

    def __init__(self) -> None:
        self.n_resets = 0
        self.n_calls = 0
        self.batch_sizes: list[int] = []

    def reset(self) -> None:
        self.n_resets += 1

    def select_action(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        assert obs.dtype == torch.float32 and obs.ndim == 2 and obs.shape[1] == 2
        self.n_calls += 1
        self.batch_sizes.append(obs.shape[0])
        return torch.ones(obs.shape[0], 1)


def _expected(seeds: list[int]) -> dict[str, float]:
    succ = [s % 3 == 0 for s in seeds]
    fail_max = 0.5 - 0.5 * STEP  # x = -STEP after the first step
    return {
        "success_rate": float(np.mean(succ)),
        "mean_max_reward": float(np.mean([1.0 if s else fail_max for s in succ])),
        "mean_episode_length": float(np.mean([4 if s else TINY_MAX_STEPS for s in succ])),
        "n_episodes": float(len(seeds)),
        "n_crashed": 0.0,
    }


def test_metrics_exact_on_known_seeds():
    policy = PushRight()
    metrics = evaluate_policy(policy, TINY_ID, n_episodes=7, n_envs=3, progress=False)
    seeds = [100000 + i for i in range(7)]  # 100000 % 3 == 1 -> successes at i = 2, 5
    assert metrics == pytest.approx(_expected(seeds))
    assert metrics["success_rate"] == pytest.approx(2 / 7)
    # 7 episodes in chunks of 3: the policy is reset once per chunk and sees batches of n_envs
    assert policy.n_resets == 3
    assert set(policy.batch_sizes) == {3}


def test_episodes_use_seed_offset_plus_index():
    episodes = rollout_episodes(PushRight(), TINY_ID, n_episodes=5, n_envs=2, seed_offset=30, progress=False)
    assert [e.index for e in episodes] == list(range(5))
    assert [e.seed for e in episodes] == [30 + i for i in range(5)]
    # success depends on the seed the env actually received: 30, 33 succeed
    assert [e.success for e in episodes] == [True, False, False, True, False]
    assert [e.length for e in episodes] == [4, 10, 10, 4, 10]
    assert summarize_episodes(episodes)["n_episodes"] == 5.0


def test_max_steps_caps_episodes():
    episodes = rollout_episodes(PushRight(), TINY_ID, n_episodes=3, n_envs=3, max_steps=3, progress=False)
    assert [e.length for e in episodes] == [3, 3, 3]
    assert not any(e.success for e in episodes)


def test_crash_counts_as_failure_and_evaluation_continues():
    crash_step, crash_reset = 100002, 100004  # 100002 would otherwise succeed
    with pytest.warns(RuntimeWarning) as record:
        episodes = rollout_episodes(
            PushRight(),
            TINY_ID,
            n_episodes=9,
            n_envs=2,
            env_kwargs={"crash_step_seeds": (crash_step,), "crash_reset_seeds": (crash_reset,)},
            progress=False,
        )
    messages = [str(w.message) for w in record if "crashed" in str(w.message)]
    assert len(messages) == 2
    assert any(str(crash_step) in m and "step boom" in m for m in messages)
    assert any(str(crash_reset) in m and "reset boom" in m for m in messages)
    assert len(episodes) == 9
    by_seed = {e.seed: e for e in episodes}
    assert by_seed[crash_step].crashed and not by_seed[crash_step].success
    assert by_seed[crash_step].length == 2 and by_seed[crash_step].max_reward == 0.0
    assert by_seed[crash_reset].crashed and by_seed[crash_reset].length == 0
    # the crashed environments were rebuilt: later episodes in the same slots behave normally
    others = [e for e in episodes if not e.crashed]
    assert [e.success for e in others] == [e.seed % 3 == 0 for e in others]
    assert by_seed[100008].success  # slot of the reset crash (episodes 4, 6, 8 share slot 0)
    metrics = summarize_episodes(episodes)
    assert metrics["n_crashed"] == 2.0
    assert metrics["success_rate"] == pytest.approx(sum(e.seed % 3 == 0 for e in others) / 9)


def test_sync_and_async_agree():
    kwargs = dict(n_episodes=5, n_envs=2, progress=False)
    sync = evaluate_policy(PushRight(), TINY_ID, vector_mode="sync", **kwargs)
    asyn = evaluate_policy(PushRight(), TINY_ID, vector_mode="async", **kwargs)
    assert sync == asyn
    assert sync == pytest.approx(_expected([100000 + i for i in range(5)]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="vector_mode='threads'"):
        evaluate_policy(PushRight(), TINY_ID, vector_mode="threads", progress=False)
    with pytest.raises(ValueError, match="async_context='fork'"):
        evaluate_policy(PushRight(), TINY_ID, vector_mode="async", async_context="fork", progress=False)
    with pytest.raises(ValueError, match="n_videos=2 needs a video_dir"):
        evaluate_policy(PushRight(), TINY_ID, n_videos=2, progress=False)


def test_videos_written_for_first_episodes(tmp_path: Path):
    episodes = rollout_episodes(
        PushRight(), TINY_ID, n_episodes=4, n_envs=3, video_dir=tmp_path, n_videos=2, progress=False
    )
    paths = [Path(e.video_path) for e in episodes if e.video_path]
    assert len(paths) == 2
    assert {p.name.split("_")[0] for p in paths} == {"episode0000", "episode0001"}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(p.name for p in paths)  # no temporary files left behind
    import imageio.v2 as imageio
    import imageio_ffmpeg

    for e in episodes[:2]:
        if e.video_path.endswith(".mp4"):
            n_frames, _ = imageio_ffmpeg.count_frames_and_secs(e.video_path)
        else:
            n_frames = len(imageio.mimread(e.video_path))
        assert n_frames == e.length + 1  # the reset frame and one per step


def test_rendering_failure_warns_instead_of_crashing(tmp_path: Path):
    with pytest.warns(RuntimeWarning, match="rendering unavailable"):
        metrics = evaluate_policy(
            PushRight(),
            TINY_ID,
            n_episodes=3,
            n_envs=3,
            env_kwargs={"render_raises": True},
            video_dir=tmp_path,
            n_videos=1,
            progress=False,
        )
    assert metrics == pytest.approx(_expected([100000, 100001, 100002]))
    assert list(tmp_path.iterdir()) == []


def test_write_video_atomic_and_gif(tmp_path: Path):
    frames = [np.full((7, 9, 3), i * 20, dtype=np.uint8) for i in range(5)]  # odd sizes are padded
    mp4 = write_video(tmp_path / "a.mp4", frames, fps=5)
    gif = write_video(tmp_path / "b.gif", frames, fps=5)
    assert mp4.suffix in (".mp4", ".gif") and mp4.exists() and gif.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mp4.name, gif.name])
    with pytest.raises(ValueError, match="frames is empty"):
        write_video(tmp_path / "c.mp4", [], fps=5)


def test_diffusion_policy_runs_in_evaluator():
    """An (untrained) DiffusionPolicy plugs into the evaluator and is restored to train mode."""
    policy = _tiny_diffusion_policy(obs_dim=2, action_dim=1)
    policy.train()
    metrics = evaluate_policy(
        policy, TINY_ID, n_episodes=2, n_envs=2, generator=torch.Generator().manual_seed(0), progress=False
    )
    assert policy.training
    assert metrics["n_episodes"] == 2.0 and metrics["n_crashed"] == 0.0
    assert 1.0 <= metrics["mean_episode_length"] <= TINY_MAX_STEPS
    # the same generator gives the same rollouts; rollouts run with one torch thread, restored afterwards
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = evaluate_policy(
            policy, TINY_ID, n_episodes=2, n_envs=2, generator=torch.Generator().manual_seed(0), progress=False
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert again == metrics
    with pytest.raises(ValueError, match="threads=0"):
        evaluate_policy(policy, TINY_ID, n_episodes=1, n_envs=1, threads=0, progress=False)


def test_reach_around_env_if_registered(tmp_path: Path):
    try:
        import diffpolicy_immix_envs  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"diffpolicy_immix_envs is not importable: {exc}")
    if "immix/ReachAround-v0" not in gym.registry:
        pytest.skip("immix/ReachAround-v0 is not registered")
    env = gym.make("immix/ReachAround-v0")
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    env.close()
    policy = _tiny_diffusion_policy(obs_dim=obs_dim, action_dim=action_dim)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        episodes = rollout_episodes(
            policy,
            "immix/ReachAround-v0",
            n_episodes=2,
            n_envs=2,
            max_steps=16,
            video_dir=tmp_path,
            n_videos=1,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
    assert [e.seed for e in episodes] == [100000, 100001]
    assert all(isinstance(e, EpisodeResult) and 1 <= e.length <= 16 and not e.crashed for e in episodes)
    assert all(0.0 <= e.max_reward <= 1.0 for e in episodes)
    unavailable = [str(w.message) for w in caught if "rendering unavailable" in str(w.message)]
    if unavailable:
        pytest.skip(f"MuJoCo rendering is unavailable here: {unavailable[0]}")
    assert episodes[0].video_path and Path(episodes[0].video_path).stat().st_size > 0
    assert not episodes[1].video_path


def _tiny_diffusion_policy(obs_dim: int, action_dim: int):
    """A small untrained DiffusionPolicy (normalizer fitted to [-1, 1] data)."""
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit(
        {
            "obs": rng.uniform(-1, 1, (64, obs_dim)).astype(np.float32),
            "action": rng.uniform(-1, 1, (64, action_dim)).astype(np.float32),
        },
        mode="limits",
    )
    cfg = PolicyConfig(horizon=8, n_obs_steps=2, n_action_steps=4, down_dims=(16, 32), diffusion_step_embed_dim=16)
    objective = DiffusionObjective(ObjectiveConfig(kind="ddpm", num_inference_steps=3))
    return DiffusionPolicy(cfg, obs_dim, action_dim, normalizer, objective)
