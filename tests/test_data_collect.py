"""Demonstration collection with a small fake env + expert, and the real ReachAround task if present."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import diffpolicy_immix
from diffpolicy_immix.data import PolicyDataset, ReplayBuffer, collect_demonstrations, validate_store
from diffpolicy_immix.errors import UserError


class FakeReachEnv(gym.Env):
    """A point moves by the action toward a target drawn from the reset seed; PushT-like info arrays."""

    observation_space = gym.spaces.Box(-2, 2, shape=(4,), dtype=np.float32)
    action_space = gym.spaces.Box(-0.2, 0.2, shape=(2,), dtype=np.float32)

    def __init__(self) -> None:
        self.closed = False

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.target]).astype(np.float32)

    def _info(self) -> dict:
        dist = float(np.linalg.norm(self.pos - self.target))
        return {
            "success": dist < 0.05,
            "score": 1.0 - dist,
            "state": np.concatenate([self.pos, self.target, [dist]]),  # (5,) float64
            "keypoint": np.tile(self.pos, (9, 1)),  # (9, 2)
            "is_success": dist < 0.05,  # a scalar: never stored
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        self.target = self.np_random.uniform(-1, 1, size=2)
        return self._obs(), self._info()

    def step(self, action):
        self.pos = self.pos + np.clip(action, -0.2, 0.2)
        info = self._info()
        return self._obs(), -float(np.linalg.norm(self.pos - self.target)), bool(info["success"]), False, info

    def close(self) -> None:
        self.closed = True


class FakeExpert:
    """Heads for the target, except on episodes whose target lies left of x = -0.5 (it then stalls)."""

    name = "fake-greedy"

    def __init__(self, crash_on_episode: int | None = None) -> None:
        self.episodes = 0
        self.crash_on_episode = crash_on_episode

    def reset(self, env: FakeReachEnv) -> None:
        self.episodes += 1
        if self.crash_on_episode is not None and self.episodes > self.crash_on_episode:
            raise RuntimeError("expert crashed")

    def act(self, env: FakeReachEnv, obs: np.ndarray) -> np.ndarray:
        pos, target = obs[:2], obs[2:]
        if target[0] < -0.5:
            return np.zeros(2, np.float32)
        return np.clip(target - pos, -0.2, 0.2).astype(np.float32)


def _would_succeed(seed: int) -> bool:
    env = FakeReachEnv()
    obs, _ = env.reset(seed=seed)
    return bool(obs[2] >= -0.5)


def test_collect_keeps_successes_and_records_attrs(tmp_path: Path) -> None:
    out = tmp_path / "reach.zarr"
    envs: list[FakeReachEnv] = []

    def env_fn() -> FakeReachEnv:
        envs.append(FakeReachEnv())
        return envs[-1]

    stats = collect_demonstrations(
        "test/FakeReach-v0",
        out,
        episodes=8,
        seed=10,
        max_steps=30,
        env_fn=env_fn,
        expert=FakeExpert(),
        progress=False,
    )
    wanted = [s for s in range(10, 18) if _would_succeed(s)]
    assert 0 < len(wanted) < 8  # the fixture really has both kinds
    assert stats["episodes_attempted"] == 8
    assert stats["episodes_kept"] == stats["episodes_succeeded"] == len(wanted)
    assert stats["success_rate"] == pytest.approx(len(wanted) / 8)
    assert stats["steps_per_s"] > 0 and stats["steps"] <= stats["steps_total"]
    assert envs[0].closed

    summary = validate_store(out)
    assert summary["keys"] == ["action", "keypoint", "obs", "state"]
    buf = ReplayBuffer.open(out, in_memory=True)
    attrs = buf.attrs
    assert attrs["task"] == "test/FakeReach-v0" and attrs["expert"] == "fake-greedy"
    assert attrs["seed"] == 10 and attrs["episode_seeds"] == wanted
    assert attrs["episodes_attempted"] == 8 and attrs["episodes_kept"] == len(wanted)
    assert attrs["obs_keys"] == ["obs"] and attrs["action_key"] == "action"
    assert attrs["info_keys"] == ["state", "keypoint"]
    assert attrs["toolkit_version"] == diffpolicy_immix.__version__
    assert buf["obs"].dtype == np.float32 and buf["state"].dtype == np.float32
    assert buf["keypoint"].shape == (buf.n_steps, 9, 2)
    # row t holds the observation the expert acted on and the info of the same instant
    np.testing.assert_allclose(buf["state"][:, :4], buf["obs"], atol=1e-6)
    ep0 = buf.get_episode(0)
    first_obs, _ = FakeReachEnv().reset(seed=wanted[0])
    np.testing.assert_array_equal(ep0["obs"][0], first_obs)
    np.testing.assert_allclose(ep0["obs"][1, :2], ep0["action"][0], atol=1e-6)  # pos after one step
    assert np.linalg.norm(ep0["obs"][-1, :2] + ep0["action"][-1] - ep0["obs"][-1, 2:]) < 0.05
    ds = PolicyDataset(out, ["obs"], horizon=3, n_obs_steps=2, n_action_steps=2)
    assert ds.obs_dim == 4 and ds.action_dim == 2


def test_collect_keep_failed(tmp_path: Path) -> None:
    stats = collect_demonstrations(
        "test/FakeReach-v0",
        tmp_path / "all.zip",
        episodes=5,
        seed=10,
        max_steps=12,
        keep_failed=True,
        env_fn=FakeReachEnv,
        expert=FakeExpert(),
        progress=False,
    )
    buf = ReplayBuffer.open(tmp_path / "all.zip", in_memory=True)
    assert buf.n_episodes == 5 == stats["episodes_kept"]
    assert buf.attrs["episode_success"] == [_would_succeed(s) for s in range(10, 15)]
    failed = [i for i, ok in enumerate(buf.attrs["episode_success"]) if not ok]
    assert failed and all(buf.episode_lengths[i] == 12 for i in failed)  # ran to max_steps


def test_collect_failures_never_leave_a_store(tmp_path: Path) -> None:
    out = tmp_path / "keep.zarr"
    collect_demonstrations(
        "test/FakeReach-v0",
        out,
        episodes=3,
        seed=10,
        max_steps=30,
        keep_failed=True,
        env_fn=FakeReachEnv,
        expert=FakeExpert(),
        progress=False,
    )
    before = ReplayBuffer.open(out, in_memory=True)
    # an expert that crashes mid-collection: no new store, the old one untouched
    with pytest.raises(RuntimeError, match="expert crashed"):
        collect_demonstrations(
            "test/FakeReach-v0",
            out,
            episodes=6,
            seed=0,
            max_steps=30,
            env_fn=FakeReachEnv,
            expert=FakeExpert(crash_on_episode=2),
            progress=False,
        )
    after = ReplayBuffer.open(out, in_memory=True)
    np.testing.assert_array_equal(after["obs"], before["obs"])
    # nothing succeeded: nothing written
    first_bad = next(s for s in range(200) if not _would_succeed(s) and not _would_succeed(s + 1))
    with pytest.raises(UserError, match=r"0 of 2 episodes succeeded .*nothing written"):
        collect_demonstrations(
            "test/FakeReach-v0",
            tmp_path / "none.zarr",
            episodes=2,
            seed=first_bad,
            max_steps=10,
            env_fn=FakeReachEnv,
            expert=FakeExpert(),
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.zarr"]


def test_collect_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="episodes=0 must be >= 1"):
        collect_demonstrations("x", tmp_path / "a.zarr", episodes=0, env_fn=FakeReachEnv, expert=FakeExpert())
    with pytest.raises(ValueError, match="no step limit"):
        collect_demonstrations("x", tmp_path / "a.zarr", episodes=1, env_fn=FakeReachEnv, expert=FakeExpert())


def test_collect_real_reach_around(tmp_path: Path) -> None:
    envs_pkg = pytest.importorskip("diffpolicy_immix_envs")
    if "immix/ReachAround-v0" not in gym.registry or not hasattr(envs_pkg, "make_expert"):
        pytest.skip("immix/ReachAround-v0 or make_expert is not available yet")
    out = tmp_path / "reach_around.zarr"
    stats = collect_demonstrations("immix/ReachAround-v0", out, episodes=2, seed=0, keep_failed=True, progress=False)
    buf = ReplayBuffer.open(out, in_memory=True)
    assert buf.n_episodes == 2 == stats["episodes_kept"]
    assert buf.attrs["task"] == "immix/ReachAround-v0"
    assert buf["obs"].ndim == 2 and buf["action"].ndim == 2
    assert buf["obs"].dtype == np.float32


def test_collection_removes_leftovers_of_a_killed_collection(tmp_path: Path) -> None:
    import subprocess
    import sys

    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    leftovers = [tmp_path / f"demo.zarr.tmp-{pid}-0", tmp_path / f"demo.zarr.old-{pid}"]
    for path in leftovers:
        (path / "data").mkdir(parents=True)
    other = tmp_path / f"other.zarr.tmp-{pid}-0"  # another store's leftover is not this collection's business
    other.mkdir()
    with pytest.warns(UserWarning, match="removed leftovers of a killed collection"):
        collect_demonstrations(
            "test/FakeReach-v0",
            tmp_path / "demo.zarr",
            2,
            max_steps=20,
            env_fn=FakeReachEnv,
            expert=FakeExpert(),
            progress=False,
            keep_failed=True,
        )
    assert not any(p.exists() for p in leftovers) and other.exists()
    assert validate_store(tmp_path / "demo.zarr")["n_episodes"] >= 1


class RecordingEnv(FakeReachEnv):
    """Remembers every action it executed, across episodes."""

    executed: list[np.ndarray] = []

    def step(self, action):
        self.executed.append(np.asarray(action, dtype=np.float64).copy())
        return super().step(action)


def test_dart_noise_records_clean_actions_and_executes_perturbed_ones(tmp_path: Path) -> None:
    env = RecordingEnv()
    env.executed = []
    out = tmp_path / "dart.zarr"
    collect_demonstrations(
        "fake",
        out,
        episodes=6,
        seed=3,
        max_steps=40,
        env_fn=lambda: env,
        expert=FakeExpert(),
        keep_failed=True,
        dart_noise=0.25,
        progress=False,
    )
    with ReplayBuffer.open(out) as buf:
        obs, actions = buf["obs"][:], buf["action"][:]
        assert buf.attrs["dart_noise"] == 0.25
    clean = np.clip(obs[:, 2:] - obs[:, :2], -0.2, 0.2)  # what the expert asked for at each recorded step
    clean[obs[:, 2] < -0.5] = 0.0  # its stalling episodes
    np.testing.assert_allclose(actions, clean, atol=1e-6)  # the store holds the expert's clean actions
    executed = np.stack(env.executed)
    assert executed.shape == actions.shape
    assert np.all(np.abs(executed) <= 0.2 + 1e-6)  # clipped to the action space
    # noise std = 0.25 * half-range 0.2 = 0.05 where no clipping happened; +-30% covers the sampling spread
    inside = np.all(np.abs(executed) < 0.2 - 1e-6, axis=1)
    assert inside.sum() > 20
    assert 0.035 < (executed - actions)[inside].std() < 0.065


def test_dart_noise_is_reproducible_and_checked(tmp_path: Path) -> None:
    stores = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.zarr"
        collect_demonstrations(
            "fake",
            out,
            episodes=3,
            seed=1,
            max_steps=40,
            env_fn=FakeReachEnv,
            expert=FakeExpert(),
            keep_failed=True,
            dart_noise=0.1,
            progress=False,
        )
        with ReplayBuffer.open(out) as buf:
            stores.append(buf["obs"][:])
    np.testing.assert_array_equal(stores[0], stores[1])


def test_parallel_collection_writes_the_same_store(tmp_path: Path) -> None:
    """Episode i's env seed, expert seed and DART noise depend on i only, so 2 workers write what 1 does
    (hold_steps reaches the workers too)."""
    pytest.importorskip("diffpolicy_immix_envs")
    arrays = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.zarr"
        stats = collect_demonstrations(
            "reach_around",
            out,
            episodes=4,
            seed=7,
            keep_failed=True,
            dart_noise=0.05,
            workers=workers,
            hold_steps=3,
            progress=False,
        )
        assert stats["episodes_attempted"] == 4
        with ReplayBuffer.open(out) as buf:
            arrays.append((buf["obs"][:], buf["action"][:], buf.episode_ends[:], buf.attrs["episode_seeds"]))
    single = collect_demonstrations(
        "reach_around", tmp_path / "plain.zarr", episodes=4, seed=7, keep_failed=True, dart_noise=0.05, progress=False
    )
    assert stats["steps"] > single["steps"]  # the held steps were recorded by the workers
    for a, b in zip(*arrays):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        (0, "workers=0 must be"),
        (1.5, "workers=1.5 must be"),
        (True, "workers=True must be"),
        (2, "built-in env and expert"),
    ],
)
def test_parallel_collection_needs_the_builtin_expert(tmp_path: Path, workers, message: str) -> None:
    with pytest.raises(UserError, match=message):
        collect_demonstrations(
            "fake",
            tmp_path / "x.zarr",
            episodes=1,
            env_fn=FakeReachEnv,
            expert=FakeExpert(),
            max_steps=5,
            workers=workers,
            progress=False,
        )


class FallingOffEnv(FakeReachEnv):
    """Terminates without success (the point "falls off") on its 3rd step after first reaching the target."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.since_success: int | None = None
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if info["success"] or self.since_success is not None:
            self.since_success = 0 if self.since_success is None else self.since_success + 1
        if self.since_success == 3:
            info = {**info, "success": False}
            return obs, reward, True, truncated, info
        return obs, reward, terminated, truncated, info


def _collect_lengths(tmp_path: Path, name: str, env_fn, **kwargs) -> tuple[np.ndarray, dict]:
    out = tmp_path / f"{name}.zarr"
    collect_demonstrations(
        "fake", out, episodes=6, seed=3, env_fn=env_fn, expert=FakeExpert(), progress=False, **kwargs
    )
    with ReplayBuffer.open(out) as buf:
        return buf.episode_lengths.copy(), {**buf.attrs, "obs": buf["obs"][:]}


def test_hold_steps_records_that_many_steps_past_the_first_success(tmp_path: Path) -> None:
    plain, attrs0 = _collect_lengths(tmp_path, "plain", FakeReachEnv, max_steps=40)
    held, attrs = _collect_lengths(tmp_path, "held", FakeReachEnv, max_steps=40, hold_steps=5)
    assert attrs0["hold_steps"] == 0 and attrs["hold_steps"] == 5
    assert len(plain) == len(held) >= 2  # the same successful episodes are kept
    np.testing.assert_array_equal(held, plain + 5)  # success terminates the fake env; 5 more steps each
    # the held steps sit at the target: the expert keeps the task solved
    ends = np.cumsum(held)
    for end in ends:
        last = attrs["obs"][end - 5 : end]
        assert np.all(np.linalg.norm(last[:, :2] - last[:, 2:], axis=1) < 0.05)
    # the step limit still bounds an episode
    capped, _ = _collect_lengths(tmp_path, "capped", FakeReachEnv, max_steps=40, hold_steps=100)
    assert capped.max() <= 40 and np.all(capped > plain)
    # a termination without success ends the hold early: 3 steps after success here, not 5
    fell, _ = _collect_lengths(tmp_path, "fell", FallingOffEnv, max_steps=40, hold_steps=5)
    np.testing.assert_array_equal(fell, plain + 3)


@pytest.mark.parametrize(
    ("option", "bad"),
    [("dart_noise", v) for v in (-0.1, 1.5, "x", True)] + [("hold_steps", v) for v in (-1, 1.5, "x", True)],
)
def test_collection_options_are_checked_before_any_episode(tmp_path: Path, option: str, bad) -> None:
    with pytest.raises(UserError, match=f"{option}={bad!r} must be"):
        collect_demonstrations(
            "fake",
            tmp_path / "bad.zarr",
            episodes=1,
            max_steps=40,
            env_fn=FakeReachEnv,
            expert=FakeExpert(crash_on_episode=0),  # an episode would crash: the check comes first
            progress=False,
            **{option: bad},
        )
    assert not (tmp_path / "bad.zarr").exists()


def test_expert_options_reach_the_built_in_expert_in_every_worker(tmp_path: Path) -> None:
    """expert_options build the task's own expert with those keywords (in worker processes too), are recorded
    in the store, and an option the expert does not take is a one-line error before any episode."""
    pytest.importorskip("diffpolicy_immix_envs")
    stores = []
    for workers, seed in ((1, 0), (2, 0), (1, 5)):
        out = tmp_path / f"w{workers}s{seed}.zarr"
        collect_demonstrations(
            "push_block", out, episodes=2, seed=seed, workers=workers, expert_options={"jitter": False}, progress=False
        )
        with ReplayBuffer.open(out) as buf:
            assert buf.attrs["expert_options"] == {"jitter": False}
            stores.append(buf["action"][:])
    np.testing.assert_array_equal(stores[0], stores[1])
    with pytest.raises(UserError, match=r"expert_options=\{'jiter': False\} rejected by its expert"):
        collect_demonstrations("push_block", tmp_path / "bad.zarr", episodes=1, expert_options={"jiter": False})
    with pytest.raises(UserError, match="pass them to your own expert"):
        collect_demonstrations(
            "fake",
            tmp_path / "bad.zarr",
            episodes=1,
            env_fn=FakeReachEnv,
            expert=FakeExpert(),
            max_steps=5,
            expert_options={"jitter": False},
        )
    assert not (tmp_path / "bad.zarr").exists()


def test_a_missing_store_is_collected_with_the_tasks_demonstration_options(tmp_path: Path) -> None:
    """dpi-train / dpi-compare collect a missing store with task.demos, expert options included."""
    pytest.importorskip("diffpolicy_immix_envs")
    from diffpolicy_immix.app.policy import ensure_demonstrations

    demos = {"episodes": 1, "seed": 0, "hold_steps": 2, "expert": {"jitter": False}}
    task = {"name": "push_block", "env_id": "immix/PushBlock-v0", "dataset": str(tmp_path / "pb.zarr"), "demos": demos}
    path = ensure_demonstrations(task, progress=False)
    with ReplayBuffer.open(path) as buf:
        assert buf.attrs["expert_options"] == {"jitter": False} and buf.attrs["hold_steps"] == 2


class DriftPolicy:
    """Pushes the point by a fixed step, away from where the expert would go; records its resets."""

    name = "drift"

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def reset(self, seed: int) -> None:
        self.seeds.append(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.array([0.1, -0.1], np.float32)


def test_takeover_stores_the_experts_recovery_from_where_the_policy_left(tmp_path: Path) -> None:
    """Each episode: the policy acts for k steps, k uniform in [2, 6] and seeded by the episode's seed (so the
    same in two collections); the stored episode starts at the state the policy left (the obs after k drift
    steps, compared exactly) and holds the expert's actions only; ``include`` puts a store's episodes first."""
    clean = tmp_path / "clean.zarr"
    collect_demonstrations("fake", clean, episodes=3, seed=0, max_steps=40, env_fn=FakeReachEnv,
                           expert=FakeExpert(), keep_failed=True, progress=False)  # fmt: skip
    stores = []
    for name in ("a", "b"):
        policy = DriftPolicy()
        out = tmp_path / f"{name}.zarr"
        stats = collect_demonstrations("fake", out, episodes=6, seed=100, max_steps=40, env_fn=FakeReachEnv,
                                       expert=FakeExpert(), keep_failed=True, progress=False, policy=policy,
                                       policy_steps=(2, 6), include=clean)  # fmt: skip
        assert policy.seeds == list(range(100, 106))
        assert (
            stats["episodes_included"] == 3 and stats["episodes_kept"] == 6 and stats["episodes_ended_by_policy"] == 0
        )
        stores.append(ReplayBuffer.open(out, in_memory=True))
    buf, other = stores
    np.testing.assert_array_equal(buf["obs"][:], other["obs"][:])
    assert buf.n_episodes == 9
    assert buf.attrs["episode_seeds"] == [0, 1, 2, *range(100, 106)]
    assert buf.attrs["takeover"] == {"policy": "drift", "steps": [2, 6]}
    with ReplayBuffer.open(clean, in_memory=True) as base:
        for i in range(3):
            np.testing.assert_array_equal(buf.get_episode(i)["obs"], base.get_episode(i)["obs"])
    drifts = set()
    for i, seed in enumerate(range(100, 106)):
        episode = buf.get_episode(3 + i)
        env = FakeReachEnv()
        obs, _ = env.reset(seed=seed)
        steps = 0
        while not np.array_equal(obs, episode["obs"][0]) and steps < 7:
            obs = env.step(np.array([0.1, -0.1], np.float32))[0]
            steps += 1
        assert 2 <= steps <= 6, f"episode {seed}: its first stored obs is not 2-6 drift steps from the reset"
        drifts.add(steps)
        target, pos = episode["obs"][:, 2:], episode["obs"][:, :2]
        expert = np.where(target[:, :1] < -0.5, 0.0, np.clip(target - pos, -0.2, 0.2))
        np.testing.assert_allclose(episode["action"], expert, atol=1e-6)  # the expert's actions only
    assert len(drifts) > 1  # the takeover step varies between episodes


def test_takeover_options_are_checked_before_any_episode(tmp_path: Path) -> None:
    base = dict(episodes=1, max_steps=40, env_fn=FakeReachEnv, expert=FakeExpert(crash_on_episode=0), progress=False)
    for steps in ((3, 2), (-1, 2), (1,), (1.5, 2)):
        with pytest.raises(UserError, match="policy_steps=.* is invalid"):
            collect_demonstrations("fake", tmp_path / "bad.zarr", policy=DriftPolicy(), policy_steps=steps, **base)
    with pytest.raises(UserError, match="include=.*missing.zarr does not exist"):
        collect_demonstrations("fake", tmp_path / "bad.zarr", include=tmp_path / "missing.zarr", **base)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(UserError, match="include=.*empty.zarr: not a readable store"):
        collect_demonstrations("fake", tmp_path / "bad.zarr", include=tmp_path / "empty.zarr", **base)
    assert not (tmp_path / "bad.zarr").exists()


def test_episodes_the_policy_finishes_store_nothing(tmp_path: Path) -> None:
    """A policy that solves an episode before the takeover leaves no expert part: the episode is counted,
    not stored (here every reachable target is reached within the 40 policy steps)."""

    class Greedy(DriftPolicy):
        def act(self, obs: np.ndarray) -> np.ndarray:
            return np.clip(obs[2:] - obs[:2], -0.2, 0.2).astype(np.float32)

    clean = tmp_path / "clean.zarr"
    collect_demonstrations("fake", clean, episodes=2, seed=0, max_steps=40, env_fn=FakeReachEnv,
                           expert=FakeExpert(), keep_failed=True, progress=False)  # fmt: skip
    stats = collect_demonstrations("fake", tmp_path / "t.zarr", episodes=8, seed=10, max_steps=40,
                                   env_fn=FakeReachEnv, expert=FakeExpert(), progress=False, policy=Greedy(),
                                   policy_steps=(40, 40), include=clean)  # fmt: skip
    assert stats["episodes_ended_by_policy"] == 8 and stats["episodes_kept"] == 0
    with ReplayBuffer.open(tmp_path / "t.zarr") as buf:
        assert buf.n_episodes == 2
