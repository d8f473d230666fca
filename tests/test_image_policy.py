"""Image observations end to end: Diffusion Policy's image layout (zarr format 2) read lazily by chunk,
the camera variants of the MuJoCo tasks, dpi-collect writing images, and a dpi-train + dpi-eval smoke run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from diffpolicy_immix.data import ChunkedRows, PolicyDataset, ReplayBuffer
from diffpolicy_immix.training.batching import BatchStream

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}


def _write_dp_image_store(path: Path, lengths: list[int], chunk: int = 5) -> dict[str, np.ndarray]:
    """A store laid out like Diffusion Policy's pusht_cchi_v7_replay.zarr, written with zarr format 2."""
    rng = np.random.default_rng(0)
    t = sum(lengths)
    data = {
        "img": rng.integers(0, 256, size=(t, 16, 16, 3), dtype=np.uint8),
        "state": rng.normal(size=(t, 5)).astype(np.float32),
        "action": rng.normal(size=(t, 2)).astype(np.float32),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    group = root.create_group("data")
    for key, arr in data.items():
        group.create_array(key, shape=arr.shape, chunks=(chunk, *arr.shape[1:]), dtype=arr.dtype)[...] = arr
    ends = np.cumsum(lengths).astype(np.int64)
    root.create_group("meta").create_array("episode_ends", shape=ends.shape, dtype=ends.dtype)[...] = ends
    return data


def test_diffusion_policy_image_layout_in_zarr_format_2_reads_lazily_by_chunk(tmp_path):
    store = tmp_path / "pusht_image_v2.zarr"
    data = _write_dp_image_store(store, [12, 9, 15])
    assert (store / ".zgroup").is_file()  # format 2 on disk
    ds = PolicyDataset(store, obs_keys=["img", "state:0:2"], horizon=8, n_obs_steps=2, n_action_steps=4)
    assert ds.image_keys == ["img"] and ds.image_shapes == {"img": (3, 16, 16)} and ds.obs_dim == 2
    idx = np.arange(len(ds))
    batch = ds.get_batch(idx)
    assert batch["img"].dtype == torch.uint8 and batch["img"].shape == (len(ds), 2, 3, 16, 16)
    rows, _ = ds.sampler.window_rows(idx)
    expected = np.transpose(data["img"][rows[:, :2]], (0, 1, 4, 2, 3))  # (B, To, C, H, W)
    assert np.array_equal(batch["img"].numpy(), expected)
    assert np.allclose(batch["obs"].numpy(), data["state"][rows][..., :2])
    assert "obs" in ds.get_normalizer().keys()  # the low-dim part only; images are never fitted
    # same windows from the in-memory path and from a lazy read of the low-dim keys
    lazy = PolicyDataset(store, obs_keys=["img", "state:0:2"], horizon=8, n_action_steps=4, in_memory=False)
    for key in ("img", "obs", "action"):
        assert torch.equal(lazy.get_batch(idx[:7])[key], ds.get_batch(idx[:7])[key])
    # an image named as an obs key must be declared when the caller declares cameras
    with pytest.raises(ValueError, match=r"obs key 'img' \(data/img, uint8 \(36, 16, 16, 3\)\) is a camera image"):
        PolicyDataset(store, obs_keys=["img", "state:0:2"], horizon=8, n_action_steps=4, image_keys=[])


def test_chunk_cache_reads_whole_chunks_and_stays_within_its_bound(tmp_path):
    store = tmp_path / "s.zarr"
    data = _write_dp_image_store(store, [40], chunk=4)
    arr = ReplayBuffer.open(store)["img"]
    one_chunk = 4 * 16 * 16 * 3
    rows = ChunkedRows(arr, max_bytes=3 * one_chunk)
    idx = np.array([[0, 1, 2], [39, 5, 0]])
    assert np.array_equal(rows.take(idx), data["img"][idx])
    assert rows.stats()["misses"] == 3  # chunks 0, 1 and 9
    rng = np.random.default_rng(0)
    for _ in range(20):
        got = rng.integers(0, 40, size=(6, 2))
        assert np.array_equal(rows.take(got), data["img"][got])
        assert rows.cached_bytes <= 3 * one_chunk
    assert rows.stats()["hits"] > 0


def test_batches_are_determined_by_seed_and_step(tmp_path):
    store = tmp_path / "s.zarr"
    _write_dp_image_store(store, [12, 9, 15])
    ds = PolicyDataset(store, obs_keys=["img", "state:0:2"], horizon=8, n_action_steps=4, image_cache_mb=0.001)
    a = [b for _, b in zip(range(5), (b for _, b in BatchStream(ds, 4, seed=3).iterate(0)))]
    resumed = [b for _, b in zip(range(2), (b for _, b in BatchStream(ds, 4, seed=3).iterate(3)))]
    for x, y in zip(a[3:], resumed):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_camera_task_observes_a_dict_and_the_collector_stores_images(tmp_path):
    import diffpolicy_immix_envs as E
    import gymnasium as gym

    from diffpolicy_immix.data import collect_demonstrations

    env = gym.make("immix/ReachAroundImage-v0")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"img", "state"} and obs["img"].shape == (96, 96, 3) and obs["img"].dtype == np.uint8
    assert env.observation_space.contains(obs)
    state_env = E.make_env("reach_around")
    assert np.allclose(state_env.reset(seed=0)[0], obs["state"])  # the same state vector
    env.close()
    state_env.close()
    summary = collect_demonstrations("reach_around_image", tmp_path / "ri.zarr", episodes=2, progress=False)
    assert summary["episodes_kept"] == 2
    buf = ReplayBuffer.open(tmp_path / "ri.zarr")
    assert sorted(buf.keys()) == ["action", "img", "state"]
    assert buf["img"].dtype == np.uint8 and buf["img"].chunks == (8, 96, 96, 3)
    assert buf.attrs["image_keys"] == ["img"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dpi_train_and_dpi_eval_smoke_on_reach_around_image(tmp_path):
    def run(cmd: str, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / cmd), *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    run("dpi-collect", "task=reach_around_image", "episodes=3", "seed=0", "out=ri.zarr")
    run(
        "dpi-train",
        "task=reach_around_image",
        "task.dataset=ri.zarr",
        "train=quick",
        "train.steps=3",
        "train.batch_size=8",
        "train.eval_every=3",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "train.diag_every=1",
        "task.eval.episodes=2",
        "task.eval.n_envs=2",
        "+task.eval.max_steps=20",
        "policy=unet_image",
        "policy.down_dims=[16,32,64]",
        "policy.vision.crop_size=76",
        "out_dir=run",
        "threads=1",
    )
    with open(tmp_path / "run" / "eval.csv") as f:
        evals = list(csv.DictReader(f))
    assert [r["step"] for r in evals] == ["3"] and float(evals[0]["eval_episodes"]) == 2
    out = run("dpi-eval", "checkpoint=run/checkpoints/latest.pt", "episodes=2", "n_envs=2")
    assert "success" in out.stdout

    # a policy that sees the camera only (no low-dim keys) is rebuilt from its checkpoint and evaluated
    run(
        "dpi-train",
        "task=reach_around_image",
        "task.dataset=ri.zarr",
        "task.obs_keys=[img]",
        "train=quick",
        "train.steps=2",
        "train.batch_size=4",
        "train.eval_every=2",
        "task.eval.episodes=2",
        "task.eval.n_envs=2",
        "+task.eval.max_steps=10",
        "policy=mlp",
        "out_dir=cam_only",
        "threads=1",
    )
    out = run("dpi-eval", "checkpoint=cam_only/checkpoints/latest.pt", "episodes=2", "n_envs=2", "max_steps=10")
    assert "success" in out.stdout
