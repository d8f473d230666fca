"""The application layer (runs wired from a configuration), the input errors and the atomic-write helper."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from diffpolicy_immix.app import PolicyEvalConfig, check_env, load_model, run_training
from diffpolicy_immix.data import collect_demonstrations
from diffpolicy_immix.errors import MissingExtraError, UserError
from diffpolicy_immix.experiments.runner import compose_run_config
from diffpolicy_immix.training import atomic_save, load_checkpoint
from diffpolicy_immix.utils.io import atomic_write, find_stale_temps


def test_the_trainer_package_imports_no_model_data_or_environment_code():
    code = (
        "import sys, diffpolicy_immix.training\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['diffpolicy_immix', 'policy'], "
        "['diffpolicy_immix', 'imagegen'], ['diffpolicy_immix', 'data'], ['diffpolicy_immix', 'evaluation'], "
        "['diffpolicy_immix', 'app']) or m.startswith('diffpolicy_immix_envs')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_policy_eval_settings_mid_and_final_episode_counts():
    ev = PolicyEvalConfig.from_task({"eval": {"episodes": 50}})
    assert (ev.episodes_at(final=False), ev.episodes_at(final=True)) == (20, 50)
    assert PolicyEvalConfig.from_task({"eval": {"episodes": 50, "episodes_mid": None}}).episodes_at(False) == 50
    assert PolicyEvalConfig.from_task({"eval": {"episodes": 5}}).episodes_at(False) == 5  # capped
    assert PolicyEvalConfig().video_size == 384
    with pytest.raises(UserError, match=r"task\.eval: unknown key 'episode'"):
        PolicyEvalConfig.from_task({"eval": {"episode": 5}})
    with pytest.raises(UserError, match=r"task\.eval\.vector_mode='threads' is invalid"):
        PolicyEvalConfig(vector_mode="threads")


class NeedsAnExtra(gym.Env):
    def __init__(self, **kwargs):
        raise ImportError("test/NeedsExtra-v0 needs some-package: pip install 'diffpolicy-immix[maze]'")


def test_a_missing_optional_dependency_is_an_input_error_naming_the_extra(tmp_path):
    if "test/NeedsExtra-v0" not in gym.registry:
        gym.register("test/NeedsExtra-v0", entry_point=NeedsAnExtra, max_episode_steps=5)
    with pytest.raises(MissingExtraError, match=r"task\.env_id=test/NeedsExtra-v0: .*diffpolicy-immix\[maze\]"):
        check_env({"env_id": "test/NeedsExtra-v0"})
    with pytest.raises(MissingExtraError, match=r"diffpolicy-immix\[maze\]"):
        collect_demonstrations("test/NeedsExtra-v0", tmp_path / "x.zarr", 1, env_fn=NeedsAnExtra, expert=object())
    assert not (tmp_path / "x.zarr").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 3-step ReachAround policy run (no rollouts) trained in this process through app.run_training."""
    root = tmp_path_factory.mktemp("app")
    collect_demonstrations("reach_around", root / "ra.zarr", 4, seed=0, progress=False)
    cfg = compose_run_config(
        [
            "task=reach_around",
            f"task.dataset={root / 'ra.zarr'}",
            "task.eval.episodes=null",
            "train=quick",
            "train.steps=3",
            "train.batch_size=8",
            "train.device=cpu",
            f"out_dir={root / 'run'}",
        ]
    )
    final = run_training(cfg)
    assert final["step"] == 3 and final["train_wall_s"] <= final["wall_time"]
    return root / "run" / "checkpoints" / "latest.pt"


def test_load_model_uses_ema_weights_and_falls_back_to_the_raw_ones_with_a_warning(trained, tmp_path):
    state = load_checkpoint(trained)
    model, cfg = load_model(trained)  # EMA weights by default
    assert cfg["task"]["name"] == "reach_around"
    assert all(torch.equal(v, state["ema"]["model"][k]) for k, v in model.state_dict().items())
    raw, _ = load_model(trained, use_ema=False)
    assert all(torch.equal(v, state["model"][k]) for k, v in raw.state_dict().items())
    state["ema"] = None
    atomic_save(state, tmp_path / "no_ema.pt")
    with pytest.warns(UserWarning, match="has no EMA weights; using the raw model"):
        fallback, _ = load_model(tmp_path / "no_ema.pt", use_ema=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in fallback.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asking for the raw weights is not worth a warning
        load_model(tmp_path / "no_ema.pt", use_ema=False)


def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_write(target) as f:
        f.write("first")
    with pytest.raises(RuntimeError, match="crash"), atomic_write(target) as f:
        f.write("partial")
        raise RuntimeError("crash")
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".b.pt.tmp-{alive.pid}-00ff.pt").write_text("being written")
        assert find_stale_temps(tmp_path) == []  # its writer still runs
    finally:
        alive.kill()
        alive.wait()
    assert [p.name for p in find_stale_temps(tmp_path)] == [f".b.pt.tmp-{alive.pid}-00ff.pt"]


class StillPolicy:
    """Holds the robot where it is (a valid ReachAround action): enough to render a few frames."""

    def reset(self) -> None:
        pass

    def select_action(self, obs, generator=None):
        return obs[:, :2]


def test_rollout_videos_are_rendered_at_the_video_size_not_the_observation_size(tmp_path):
    import imageio.v3 as iio

    from diffpolicy_immix.evaluation import rollout_episodes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (episode,) = rollout_episodes(
            StillPolicy(),
            "immix/ReachAround-v0",
            n_episodes=1,
            n_envs=1,
            max_steps=3,
            video_dir=tmp_path,
            n_videos=1,
            video_size=128,
            progress=False,
        )
    if not episode.video_path:
        pytest.skip(f"rendering unavailable here: {[str(w.message) for w in caught]}")
    frames = iio.imread(episode.video_path)
    assert frames.shape == (4, 128, 128, 3)  # the reset frame and three steps


def test_an_interrupted_image_run_resumes_bit_exactly(tmp_path, monkeypatch):
    """An image run with label dropout (cfg_dropout 0.5), stopped after its step-2 checkpoint and resumed,
    ends with the uninterrupted run's weights: the label-dropout stream continues from the checkpoint."""
    import diffpolicy_immix.app.run as app_run
    from diffpolicy_immix.training import Trainer

    class Stopped(Exception):
        pass

    class StopAtStep3(Trainer):
        def log_metrics(self, lr):
            row = super().log_metrics(lr)
            if self.step == 3:
                raise Stopped
            return row

    def config(out: str) -> dict:
        return compose_run_config(
            [
                "task=image_digits",
                "task.eval.n_samples=0",
                "++task.model_overrides.base_channels=8",
                "++task.model_overrides.cfg_dropout=0.5",
                "train=quick",
                "train.steps=5",
                "train.batch_size=16",
                "train.checkpoint_every=2",
                "train.log_every=1",
                "train.device=cpu",
                f"out_dir={tmp_path / out}",
            ]
        )

    run_training(config("ref"))
    with monkeypatch.context() as patch:
        patch.setattr(app_run, "Trainer", StopAtStep3)
        with pytest.raises(Stopped):
            run_training(config("run"))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 2
    run_training(dict(config("run"), resume=True))
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "latest.pt")
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert all(torch.equal(v, got["model"][k]) for k, v in ref["model"].items())
    assert all(torch.equal(v, got["ema"]["model"][k]) for k, v in ref["ema"]["model"].items())
    assert int(got["model"]["label_dropout_draws"]) == 5


def test_task_normalizer_selects_z_scored_actions(tmp_path):
    """``task.normalizer={action: gaussian}`` fits the action key by z-score (normalized training actions
    with mean 0 and std 1 within 1e-3) and leaves the observations at min/max (within [-1, 1]); z-scored
    actions under the default +-1 clamp of the predicted chunk are refused in one line before any data
    is read."""
    from diffpolicy_immix.app import build_run
    from diffpolicy_immix.data import ReplayBuffer

    store = tmp_path / "ra.zarr"
    collect_demonstrations("reach_around", store, 4, seed=0, progress=False)
    base = ["task=reach_around", f"task.dataset={store}", "task.eval.episodes=null", f"out_dir={tmp_path / 'r'}"]
    cfg = compose_run_config([*base, "task.normalizer={action: gaussian}", "objective.clip_sample_range=5"])
    norm = build_run(cfg).model.normalizer
    with ReplayBuffer.open(store, in_memory=True) as buf:
        action, obs = torch.as_tensor(buf["action"][:]), torch.as_tensor(buf["obs"][:])
    z = norm.normalize("action", action)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-3) and torch.allclose(
        z.std(0, unbiased=False), torch.ones(2), atol=1e-3
    )
    o = norm.normalize("obs", obs)
    assert float(o.min()) >= -1 - 1e-5 and float(o.max()) <= 1 + 1e-5
    with pytest.raises(UserError, match=r"objective.clip_sample_range=1 would cut every chunk"):
        build_run(compose_run_config([*base, "task.dataset=missing.zarr", "task.normalizer=gaussian"]))
    with pytest.raises(UserError, match=r"task.normalizer.action='minmax' is invalid"):
        build_run(compose_run_config([*base, "task.normalizer={action: minmax}"]))


@pytest.mark.parametrize(
    "override,message",
    [("assign.scale=0", "none option scale=0 is invalid"), ("assign=knn assign.k=0", "knn option k=0 is invalid")],
)
def test_a_bad_assigner_option_stops_before_demonstrations_are_collected(tmp_path, override, message):
    """dpi-train on a task whose demonstrations are missing: a bad assigner option is a one-line input
    error raised before the store is collected (nothing is written)."""
    store = tmp_path / "never.zarr"
    cfg = compose_run_config(
        ["task=reach_around", f"task.dataset={store}", f"out_dir={tmp_path / 'r'}", *override.split()]
    )
    with pytest.raises(UserError, match=message) as info:
        run_training(cfg)
    assert "\n" not in str(info.value)
    assert not store.exists() and not (tmp_path / "r").exists()
