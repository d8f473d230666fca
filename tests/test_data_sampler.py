"""Sequence sampler against a brute-force reference, episode splits, the normalizer, PolicyDataset."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffpolicy_immix.data import (
    DatasetError,
    LinearNormalizer,
    PolicyDataset,
    ReplayBuffer,
    SequenceSampler,
    parse_obs_key,
    split_episodes,
)


def _reference_windows(
    arrays: dict[str, np.ndarray], ends: np.ndarray, horizon: int, pad_before: int, pad_after: int
) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Per-sample reference: every window of every episode, padded by hand with edge frames."""
    out = []
    start = 0
    for end in ends:
        length = end - start
        for t0 in range(-pad_before, length - horizon + pad_after + 1):
            window, mask = {k: [] for k in arrays}, []
            for j in range(horizon):
                t = t0 + j
                mask.append(t < 0 or t >= length)
                t = min(max(t, 0), length - 1)
                for k, a in arrays.items():
                    window[k].append(a[start + t])
            out.append(({k: np.stack(v) for k, v in window.items()}, np.array(mask)))
        start = end
    return out


@pytest.mark.parametrize(
    ("horizon", "pad_before", "pad_after"), [(16, 1, 7), (4, 1, 2), (5, 0, 0), (3, 2, 2), (1, 0, 0)]
)
def test_windows_match_brute_force(horizon: int, pad_before: int, pad_after: int) -> None:
    rng = np.random.default_rng(0)
    lengths = np.array([1, 2, 9, 16, 17, 40, 3])
    ends = np.cumsum(lengths)
    arrays = {
        "obs": rng.normal(size=(ends[-1], 3)).astype(np.float32),
        "img": rng.integers(0, 255, size=(ends[-1], 2, 2, 3), dtype=np.uint8),
    }
    short = horizon - pad_before - pad_after > 1  # then the 1-step episode yields no window
    with pytest.warns(UserWarning, match="yield no window") if short else contextlib.nullcontext():
        sampler = SequenceSampler(arrays, ends, horizon, pad_before, pad_after)
    ref = _reference_windows(arrays, ends, horizon, pad_before, pad_after)
    assert len(sampler) == len(ref)
    got, mask = sampler.sample(np.arange(len(sampler)))
    for i, (want, want_mask) in enumerate(ref):
        for k in arrays:
            np.testing.assert_array_equal(got[k][i], want[k], err_msg=f"window {i} key {k}")
        np.testing.assert_array_equal(mask[i], want_mask, err_msg=f"window {i} mask")
    assert got["obs"].shape == (len(ref), horizon, 3) and got["img"].dtype == np.uint8
    if pad_before:  # windows at episode starts are padded at the front, at ends at the back
        assert mask[:, 0].any()
    if pad_after:
        assert mask[:, -1].any()
    # random order and negative indices give the same windows
    idx = rng.permutation(len(sampler))[:50]
    part, part_mask = sampler.sample(idx - len(sampler))
    np.testing.assert_array_equal(part["obs"], got["obs"][idx])
    np.testing.assert_array_equal(part_mask, mask[idx])


def test_sampler_episode_mask_and_bounds() -> None:
    ends = np.array([5, 10, 15])
    arrays = {"x": np.arange(15)[:, None]}
    sampler = SequenceSampler(arrays, ends, 4, 1, 2, episode_mask=np.array([False, True, False]))
    got, _ = sampler.sample(np.arange(len(sampler)))
    assert set(np.unique(got["x"])) == set(range(5, 10))
    assert (sampler.window_episode == 1).all()
    with pytest.raises(IndexError, match="window index 99 out of range"):
        sampler.sample([0, 99])
    with pytest.raises(ValueError, match="pad_after=4 must be in"):
        SequenceSampler(arrays, ends, 4, 0, 4)
    with pytest.raises(ValueError, match="has length 15, episode_ends"):
        SequenceSampler(arrays, np.array([5, 16]), 4)


def test_split_is_disjoint_deterministic_and_capped() -> None:
    train, val = split_episodes(50, val_ratio=0.2, seed=3)
    assert not (train & val).any() and (train | val).all()
    assert val.sum() == 10
    train2, val2 = split_episodes(50, val_ratio=0.2, seed=3)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(train, train2)
    _, val_other = split_episodes(50, val_ratio=0.2, seed=4)
    assert not np.array_equal(val, val_other)
    capped, val_c = split_episodes(50, val_ratio=0.2, seed=3, max_train_episodes=7)
    assert capped.sum() == 7 and not (capped & val_c).any()
    np.testing.assert_array_equal(val_c, val)  # the cap never moves episodes into validation
    assert split_episodes(1, val_ratio=0.5)[1].sum() == 0  # at least one training episode
    assert split_episodes(10, val_ratio=0.0)[1].sum() == 0
    with pytest.raises(ValueError, match="val_ratio=1.0"):
        split_episodes(10, val_ratio=1.0)


# --------------------------------------------------------------------------------------------------
# normalizer


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_normalizer_round_trip(mode: str) -> None:
    rng = np.random.default_rng(1)
    obs = rng.normal(3.0, 5.0, size=(200, 6)).astype(np.float32)
    obs[:, 4] = 7.25  # constant dim
    obs[:, 5] = 2.0 + rng.uniform(0, 1e-6, size=200)  # near-constant dim (range < eps)
    act = torch.from_numpy(rng.uniform(-30, 10, size=(20, 16, 2)).astype(np.float32))  # (N, T, D)
    norm = LinearNormalizer().fit({"obs": obs, "action": act}, mode=mode)
    assert norm.keys() == ["obs", "action"] and "obs" in norm and "img" not in norm
    x = norm.normalize("obs", torch.from_numpy(obs))
    assert isinstance(x, torch.Tensor)
    if mode == "limits":
        lo, hi = x[:, :4].min(0).values, x[:, :4].max(0).values
        torch.testing.assert_close(lo, torch.full((4,), -1.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(hi, torch.full((4,), 1.0), atol=1e-5, rtol=0)
        a = norm.normalize("action", act)
        assert a.shape == (20, 16, 2)
        assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    else:
        torch.testing.assert_close(x[:, :4].mean(0), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(x[:, :4].std(0, correction=0), torch.ones(4), atol=1e-4, rtol=0)
    # near-constant dims are centred, not blown up
    assert x[:, 4:].abs().max() < 1e-5
    back = norm.unnormalize("obs", x)
    torch.testing.assert_close(back, torch.from_numpy(obs), atol=1e-4, rtol=1e-6)
    # numpy in, numpy out
    xn = norm.normalize("obs", obs)
    assert isinstance(xn, np.ndarray) and xn.dtype == np.float32
    np.testing.assert_allclose(xn, x.numpy(), atol=1e-6)


def test_normalizer_state_dict_into_fresh_module() -> None:
    rng = np.random.default_rng(2)
    data = {"obs": rng.normal(size=(50, 4)), "action": rng.normal(size=(50, 2))}
    norm = LinearNormalizer().fit(data)
    fresh = LinearNormalizer()
    assert len(fresh) == 0
    fresh.load_state_dict(norm.state_dict())
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh.normalize("obs", x), norm.normalize("obs", x))

    class Policy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(2, 2)
            self.normalizer = LinearNormalizer()

    saved = Policy()
    saved.normalizer.fit(data, mode="gaussian")
    loaded = Policy()
    loaded.load_state_dict(saved.state_dict())  # strict: keys appear when loading
    assert "normalizer.params.action.scale" in saved.state_dict()
    torch.testing.assert_close(
        loaded.normalizer.unnormalize("action", x[..., :2]), saved.normalizer.unnormalize("action", x[..., :2])
    )
    with pytest.raises(KeyError, match="no key 'img'"):
        loaded.normalizer.normalize("img", x)
    with pytest.raises(ValueError, match=r"expects last dim 2, got shape \(3, 5, 4\)"):
        loaded.normalizer.normalize("action", x)


# --------------------------------------------------------------------------------------------------
# PolicyDataset on a format-3 store


def _store(tmp_path: Path, lengths: list[int]) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path / "ds.zarr"
    with ReplayBuffer.create_writer(path, {"task": "t"}) as w:
        for n in lengths:
            w.add_episode(
                {
                    "state": rng.normal(size=(n, 5)).astype(np.float32),
                    "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
                    "action": rng.normal(size=(n, 2)).astype(np.float32),
                }
            )
    return path


def test_parse_obs_key() -> None:
    assert parse_obs_key("state") == ("state", slice(None))
    assert parse_obs_key("state:0:2") == ("state", slice(0, 2))
    assert parse_obs_key("state::3") == ("state", slice(None, 3))
    for bad in ("state:1", "state:a:b", ":0:1", ""):
        with pytest.raises(ValueError, match="obs key spec"):
            parse_obs_key(bad)


def test_dataset_items_batches_and_split(tmp_path: Path) -> None:
    lengths = [30, 18, 25, 40, 22, 31, 19, 27, 33, 24]
    path = _store(tmp_path, lengths)
    ds = PolicyDataset(
        path,
        ["keypoint", "state:0:2"],
        horizon=16,
        n_obs_steps=2,
        n_action_steps=8,
        val_ratio=0.3,
        seed=1,
        return_pad_mask=True,
    )
    val = ds.get_validation_dataset()
    assert ds.n_episodes == 7 and val.n_episodes == 3
    assert not (ds.train_mask & ds.val_mask).any()
    train_eps = set(ds.sampler.window_episode.tolist())
    val_eps = set(val.sampler.window_episode.tolist())
    assert train_eps.isdisjoint(val_eps) and len(train_eps | val_eps) == 10
    again = PolicyDataset(path, ["keypoint", "state:0:2"], val_ratio=0.3, seed=1)
    np.testing.assert_array_equal(again.val_mask, ds.val_mask)

    idx = np.array([0, 3, len(ds) - 1, 11])
    batch = ds.get_batch(idx)
    assert batch["pad_mask"].shape == (4, 16) and batch["pad_mask"].dtype == torch.bool
    for j, i in enumerate(idx):
        item = ds[int(i)]
        for k in ("obs", "action", "pad_mask"):
            torch.testing.assert_close(item[k], batch[k][j], rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    first = next(iter(loader))
    torch.testing.assert_close(first["obs"], ds.get_batch(np.arange(8))["obs"])
    n_batches = sum(1 for _ in ds.iter_batches(32, generator=0))
    assert n_batches == len(ds) // 32

    # the normalizer is fitted on every step of the training episodes only
    norm = ds.get_normalizer()
    buf = ReplayBuffer.open(path, in_memory=True)
    steps = np.repeat(ds.train_mask, buf.episode_lengths)
    want_max = torch.from_numpy(buf["action"][steps].max(0))
    torch.testing.assert_close(norm.get_stats("action")["input_max"], want_max)
    want_min = torch.from_numpy(buf["state"][steps, :2].min(0))
    torch.testing.assert_close(norm.get_stats("obs")["input_min"][18:], want_min)
    assert norm.get_stats("obs")["scale"].shape == (20,)


@pytest.mark.parametrize("in_memory", [True, False])
def test_relative_action_normalizer(tmp_path: Path, in_memory: bool) -> None:
    """With ``action_origin`` the action limits are those of every window's actions minus the origin
    dims of its current observation (row To - 1), computed here window by window."""
    path = _store(tmp_path, [30, 18, 25, 40, 22])
    ds = PolicyDataset(path, ["keypoint", "state:0:2"], horizon=8, n_obs_steps=3, n_action_steps=4, in_memory=in_memory)
    rel = ds.relative_actions((18, 20), chunk=7)  # a chunk size that does not divide the windows
    assert rel.shape == (len(ds) * 8, 2)
    want = np.concatenate([(ds[i]["action"] - ds[i]["obs"][2, 18:20]).numpy() for i in range(len(ds))])
    np.testing.assert_allclose(rel, want, rtol=0, atol=1e-6)
    norm = ds.get_normalizer(action_origin=(18, 20))
    torch.testing.assert_close(norm.get_stats("action")["input_max"], torch.from_numpy(want.max(0)))
    torch.testing.assert_close(norm.get_stats("obs")["scale"], ds.get_normalizer().get_stats("obs")["scale"])
    with pytest.raises(ValueError, match=r"action_origin=\[17, 20\] must select action_dim=2 dims"):
        ds.relative_actions((17, 20))
    with pytest.raises(ValueError, match=r"obs_dim=20"):
        ds.relative_actions((19, 21))


def test_dataset_errors(tmp_path: Path) -> None:
    path = _store(tmp_path, [20, 20])
    want = r"ds\.zarr: data/pos: obs key not found \(available keys: action, keypoint, state\)"
    with pytest.raises(DatasetError, match=want):
        PolicyDataset(path, ["keypoint", "pos"])
    with pytest.raises(DatasetError, match=r"data/act: action key not found \(available keys:"):
        PolicyDataset(path, ["state"], action_key="act")
    with pytest.raises(ValueError, match="selects no dims of data/state"):
        PolicyDataset(path, ["state:5:9"])
    with pytest.raises(ValueError, match="exceeds horizon=8"):
        PolicyDataset(path, ["state"], horizon=8, n_obs_steps=2, n_action_steps=8)
    buf = ReplayBuffer.open(path, in_memory=True)
    ds = PolicyDataset(buf, ["state"], horizon=4, n_obs_steps=1, n_action_steps=1)
    assert len(ds) == 2 * (20 - 4 + 1)
    with pytest.raises(IndexError):
        ds[len(ds)]
