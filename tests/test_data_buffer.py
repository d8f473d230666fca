"""Replay buffer: write/read round trips, zarr format 2 (Diffusion Policy's PushT layout), validation
of malformed stores, and atomic writing."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import zarr

import diffpolicy_immix
from diffpolicy_immix.data import (
    DatasetError,
    PolicyDataset,
    ReplayBuffer,
    describe_store,
    validate_store,
)


def _episodes(lengths: list[int], seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "obs": rng.normal(size=(n, 5)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "img": rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8),
            "done": np.arange(n) == n - 1,
        }
        for n in lengths
    ]


def _write(path: Path, episodes: list[dict[str, np.ndarray]], **kwargs) -> Path:
    with ReplayBuffer.create_writer(path, {"task": "test/Task-v0", "seeds": [1, 2, 3]}, **kwargs) as w:
        for ep in episodes:
            w.add_episode(ep)
    return path


def _raw_store(path: Path, data: dict[str, np.ndarray], ends: np.ndarray | None, zarr_format: int = 3) -> Path:
    """A store written directly with zarr (bypassing the writer's checks)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group = root.create_group("data")
    for k, v in data.items():
        group.create_array(k, data=v)
    if ends is not None:
        root.create_group("meta").create_array("episode_ends", data=ends)
    return path


def _pusht_store(path: Path, lengths: list[int], seed: int = 0) -> Path:
    """Diffusion Policy's PushT replay layout, written by zarr format 2 with Blosc like the original."""
    rng = np.random.default_rng(seed)
    t = int(sum(lengths))
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    arrays = {
        "img": rng.integers(0, 256, size=(t, 96, 96, 3), dtype=np.uint8),
        "state": rng.uniform(0, 512, size=(t, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, size=(t, 9, 2)).astype(np.float32),
        "action": rng.uniform(0, 512, size=(t, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, size=(t, 1)).astype(np.float32),
    }
    for k, v in arrays.items():
        arr = data.create_array(k, shape=v.shape, chunks=(16, *v.shape[1:]), dtype=v.dtype, compressors=blosc)
        arr[:] = v
    meta = root.create_group("meta")
    ends = meta.create_array("episode_ends", shape=(len(lengths),), dtype=np.int64, compressors=None)
    ends[:] = np.cumsum(lengths)
    return path


# --------------------------------------------------------------------------------------------------
# round trips


def test_round_trip_format3(tmp_path: Path) -> None:
    eps = _episodes([7, 1, 12, 5])
    path = _write(tmp_path / "rt.zarr", eps, chunk_steps=4)
    assert (path / "zarr.json").exists()
    for in_memory in (False, True):
        buf = ReplayBuffer.open(path, in_memory=in_memory)
        assert buf.n_episodes == 4 and buf.n_steps == 25
        assert buf.episode_ends.dtype == np.int64
        np.testing.assert_array_equal(buf.episode_ends, [7, 8, 20, 25])
        np.testing.assert_array_equal(buf.episode_lengths, [7, 1, 12, 5])
        assert buf.keys() == ["action", "done", "img", "obs"]
        assert buf.in_memory == in_memory
        for i, ep in enumerate(eps):
            got = buf.get_episode(i)
            for k in ep:
                np.testing.assert_array_equal(got[k], ep[k])
                assert got[k].dtype == ep[k].dtype
        assert buf["obs"].shape == (25, 5)
        attrs = buf.attrs
        assert attrs["task"] == "test/Task-v0" and attrs["seeds"] == [1, 2, 3]
        assert attrs["toolkit_version"] == diffpolicy_immix.__version__
        buf.close()
    lazy = ReplayBuffer.open(path)
    assert lazy["obs"].chunks == (4, 5)  # chunked along time only


def test_round_trip_zip_and_appending_many_chunks(tmp_path: Path) -> None:
    eps = _episodes([3] * 20 + [11], seed=1)
    path = _write(tmp_path / "rt.zip", eps, chunk_steps=8)
    assert path.is_file() and not any(p.name.startswith("rt.zip.tmp") for p in tmp_path.iterdir())
    with ReplayBuffer.open(path) as buf:
        np.testing.assert_array_equal(buf["action"][:], np.concatenate([e["action"] for e in eps]))
        assert buf.n_episodes == 21
    assert "zip" in describe_store(path)


def test_from_episodes_matches_written_store(tmp_path: Path) -> None:
    eps = _episodes([4, 6])
    mem = ReplayBuffer.from_episodes(eps)
    disk = ReplayBuffer.open(_write(tmp_path / "a.zarr", eps), in_memory=True)
    np.testing.assert_array_equal(mem.episode_ends, disk.episode_ends)
    for k in mem.keys():
        np.testing.assert_array_equal(mem[k], disk[k])


def test_open_selected_keys_and_missing_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.zarr", _episodes([3, 4]))
    buf = ReplayBuffer.open(path, in_memory=True, keys=["action"])
    assert buf.keys() == ["action"]
    with pytest.raises(DatasetError, match=r"k\.zarr: data/nope: no such key \(available: action, done, img, obs\)"):
        ReplayBuffer.open(path, keys=["nope"])
    with pytest.raises(DatasetError, match="data/missing: no such key"):
        buf["missing"]  # noqa: B018


def test_writer_rejects_inconsistent_episodes(tmp_path: Path) -> None:
    w = ReplayBuffer.create_writer(tmp_path / "w.zarr")
    w.add_episode({"obs": np.zeros((3, 2), np.float32), "action": np.zeros((3, 1), np.float32)})
    with pytest.raises(DatasetError, match=r"episode 1: keys differ .*missing \['action'\]"):
        w.add_episode({"obs": np.zeros((3, 2), np.float32)})
    with pytest.raises(DatasetError, match=r"data/obs: episode 1 has rows of shape \(3,\)"):
        w.add_episode({"obs": np.zeros((3, 3), np.float32), "action": np.zeros((3, 1), np.float32)})
    with pytest.raises(DatasetError, match="episode 1: keys have different lengths"):
        w.add_episode({"obs": np.zeros((3, 2), np.float32), "action": np.zeros((4, 1), np.float32)})
    bad = np.zeros((3, 2), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(DatasetError, match="data/obs: episode 1 has a non-finite value at step 2"):
        w.add_episode({"obs": bad, "action": np.zeros((3, 1), np.float32)})
    w.abort()
    assert not (tmp_path / "w.zarr").exists() and list(tmp_path.iterdir()) == []


def test_writer_without_episodes_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no episodes were added"):
        with ReplayBuffer.create_writer(tmp_path / "empty.zarr"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_attrs_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"attrs\['bad'\]"):
        ReplayBuffer.create_writer(tmp_path / "a.zarr", {"bad": object()})


# --------------------------------------------------------------------------------------------------
# Diffusion Policy's zarr format-2 PushT store


def test_pusht_format2_store_opens_validates_and_samples(tmp_path: Path) -> None:
    lengths = [20, 35, 15]
    path = _pusht_store(tmp_path / "pusht_cchi_v7_replay.zarr", lengths)
    assert (path / ".zgroup").exists()  # really zarr format 2
    summary = validate_store(path)
    assert summary["n_episodes"] == 3 and summary["n_steps"] == 70
    assert summary["keys"] == ["action", "img", "keypoint", "n_contacts", "state"]
    buf = ReplayBuffer.open(path, in_memory=True)
    assert buf["img"].shape == (70, 96, 96, 3) and buf["img"].dtype == np.uint8
    text = describe_store(path)
    assert "zarr v2" in text and "Blosc" in text and "(70, 9, 2)" in text

    ds = PolicyDataset(path, obs_keys=["keypoint", "state:0:2"], horizon=16, n_obs_steps=2, n_action_steps=8)
    assert ds.obs_dim == 20 and ds.action_dim == 2
    # windows per episode: L - H + (To - 1) + (Ta - 1) + 1
    assert len(ds) == sum(n - 16 + 1 + 7 + 1 for n in lengths)
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["obs"].shape == (len(ds), 16, 20) and batch["obs"].dtype == torch.float32
    assert batch["action"].shape == (len(ds), 16, 2)
    # window 0 starts one step before episode 0: row 0 repeated, then rows 0..14
    rows = np.r_[0, np.arange(15)]
    want_obs = np.concatenate([buf["keypoint"][rows].reshape(16, 18), buf["state"][rows, :2]], axis=1)
    np.testing.assert_array_equal(batch["obs"][0].numpy(), want_obs)
    np.testing.assert_array_equal(batch["action"][0].numpy(), buf["action"][rows])
    # lazy reading from the format-2 store gives the same windows
    lazy = PolicyDataset(path, obs_keys=["keypoint", "state:0:2"], in_memory=False)
    idx = np.array([0, 5, len(ds) - 1, 17])
    for k, v in lazy.get_batch(idx).items():
        torch.testing.assert_close(v, batch[k][idx], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# malformed stores: each failure is its own one-line DatasetError naming the store, key and index


def _good(n: int = 10) -> dict[str, np.ndarray]:
    return {"obs": np.zeros((n, 3), np.float32), "action": np.zeros((n, 2), np.float32)}


def _nan_at(index: int) -> dict[str, np.ndarray]:
    data = _good()
    data["obs"][index, 1] = np.nan
    return data


def _make_malformed(kind: str, root: Path) -> Path:
    path = root / f"{kind}.zarr"
    ends = np.array([4, 10], dtype=np.int64)
    if kind == "missing_path":
        return path
    if kind == "not_zarr_dir":
        path.mkdir()
        (path / "readme.txt").write_text("hello")
        return path
    if kind == "not_zarr_file":
        path.write_text("not a zip")
        return path
    if kind == "empty_store":
        zarr.open_group(str(path), mode="w")
        return path
    if kind == "missing_data":
        root_group = zarr.open_group(str(path), mode="w")
        root_group.create_group("meta").create_array("episode_ends", data=ends)
        return path
    if kind == "no_arrays":
        return _raw_store(path, {}, ends)
    if kind == "missing_ends":
        return _raw_store(path, _good(), None)
    if kind == "float_ends":
        return _raw_store(path, _good(), ends.astype(np.float64))
    if kind == "zero_episodes":
        return _raw_store(path, _good(0), np.zeros(0, dtype=np.int64))
    if kind == "first_end_zero":
        return _raw_store(path, _good(), np.array([0, 4, 10], dtype=np.int64))
    if kind == "not_increasing":
        return _raw_store(path, _good(), np.array([4, 7, 7, 10], dtype=np.int64))
    if kind == "length_mismatch":
        data = _good()
        data["action"] = np.zeros((9, 2), np.float32)
        return _raw_store(path, data, ends)
    if kind == "nan":
        return _raw_store(path, _nan_at(6), ends)
    if kind == "inf_format2":
        data = _good()
        data["action"][8, 0] = -np.inf
        return _raw_store(path, data, ends, zarr_format=2)
    if kind == "complex_dtype":
        data = _good()
        data["label"] = np.zeros(10, dtype=np.complex64)
        return _raw_store(path, data, ends)
    raise AssertionError(kind)


MALFORMED = {
    "missing_path": r"store not found",
    "not_zarr_dir": r"not a zarr store \(no group metadata",
    "not_zarr_file": r"not a zarr store \(a file that is not a \.zip archive\)",
    "empty_store": r"empty store \(the root group holds no",
    "missing_data": r"data: missing group 'data/'",
    "no_arrays": r"data: group 'data/' holds no arrays",
    "missing_ends": r"meta/episode_ends: missing array",
    "float_ends": r"meta/episode_ends: dtype float64 is not an integer dtype",
    "zero_episodes": r"meta/episode_ends: empty store \(zero episodes\)",
    "first_end_zero": r"meta/episode_ends\[0\] = 0 must be > 0",
    "not_increasing": r"meta/episode_ends\[2\] = 7 is not greater than meta/episode_ends\[1\] = 7",
    "length_mismatch": r"data/action: length 9 != last episode end 10",
    "nan": r"data/obs: non-finite value nan at index 6 \(episode 1, step 2\)",
    "inf_format2": r"data/action: non-finite value -inf at index 8 \(episode 1, step 4\)",
    "complex_dtype": r"data/label: dtype complex64 is not bool, integer or float",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_store_gives_specific_error(kind: str, tmp_path: Path) -> None:
    path = _make_malformed(kind, tmp_path)
    for check in (validate_store, ReplayBuffer.open, lambda p: ReplayBuffer.open(p, in_memory=True)):
        with pytest.raises(DatasetError, match=MALFORMED[kind]) as info:
            check(path)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(str(path)), message
        assert isinstance(info.value, ValueError)


def test_finite_check_can_be_skipped(tmp_path: Path) -> None:
    path = _make_malformed("nan", tmp_path)
    buf = ReplayBuffer.open(path, in_memory=True, validate=False)
    assert np.isnan(buf["obs"][6, 1])
    assert validate_store(path, finite=False)["n_steps"] == 10


def test_lazy_finite_scan_crosses_chunks(tmp_path: Path) -> None:
    data = {"obs": np.zeros((100, 2), np.float32)}
    data["obs"][77, 0] = np.inf
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    root.create_group("data").create_array("obs", data=data["obs"], chunks=(8, 2))
    root.create_group("meta").create_array("episode_ends", data=np.array([50, 100]))
    with pytest.raises(DatasetError, match=r"index 77 \(episode 1, step 27\)"):
        ReplayBuffer.open(tmp_path / "c.zarr")


# --------------------------------------------------------------------------------------------------
# atomic writing


class _Interrupted(RuntimeError):
    pass


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "new.zarr"
    with pytest.raises(_Interrupted):
        with ReplayBuffer.create_writer(dest, chunk_steps=2) as w:
            for ep in _episodes([5, 6]):
                w.add_episode(ep)
            assert not dest.exists()  # nothing at the destination while writing
            with pytest.raises(DatasetError):  # the half-built store does not look valid
                validate_store(w.temp_path)
            raise _Interrupted("collection crashed")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_existing_store(tmp_path: Path) -> None:
    dest = _write(tmp_path / "data.zarr", _episodes([3, 4], seed=7))
    before = ReplayBuffer.open(dest, in_memory=True)
    with pytest.raises(_Interrupted):
        with ReplayBuffer.create_writer(dest) as w:
            w.add_episode(_episodes([9], seed=8)[0])
            raise _Interrupted
    after = ReplayBuffer.open(dest, in_memory=True)
    np.testing.assert_array_equal(after.episode_ends, [3, 7])
    np.testing.assert_array_equal(after["obs"], before["obs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]


def test_abandoned_writer_temp_store_is_invalid(tmp_path: Path) -> None:
    # a process killed mid-write leaves only <name>.tmp-<pid>, which lacks meta/episode_ends
    w = ReplayBuffer.create_writer(tmp_path / "k.zarr", chunk_steps=1)
    w.add_episode(_episodes([4])[0])
    assert w.temp_path.name.startswith(f"k.zarr.tmp-{os.getpid()}-")
    with pytest.raises(DatasetError, match="meta/episode_ends: missing array"):
        validate_store(w.temp_path)
    w.abort()
    assert not w.temp_path.exists()


def test_successful_write_replaces_existing_store(tmp_path: Path) -> None:
    for dest in (tmp_path / "r.zarr", tmp_path / "r.zip"):
        _write(dest, _episodes([3, 4], seed=1))
        _write(dest, _episodes([2, 2, 2], seed=2))
        assert ReplayBuffer.open(dest).n_episodes == 3
        ReplayBuffer.open(dest).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr", "r.zip"]


def test_overwrite_false_refuses_existing(tmp_path: Path) -> None:
    dest = _write(tmp_path / "x.zarr", _episodes([3]))
    with pytest.raises(FileExistsError, match="x.zarr: already exists"):
        ReplayBuffer.create_writer(dest, overwrite=False)


def test_describe_store_lists_keys_and_lengths(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.zarr", _episodes([2, 8, 5]), chunk_steps=3)
    text = describe_store(path)
    assert "episodes    3" in text and "steps       15" in text
    assert "min 2  mean 5.0  max 8" in text
    assert "img     (15, 4, 4, 3)  uint8" in text and "(3, 4, 4, 3)" in text
    assert "task: 'test/Task-v0'" in text and "toolkit_version" in text


def test_zip_of_a_store_folder_names_the_inner_store(tmp_path: Path) -> None:
    folder = _write(tmp_path / "pusht.zarr", _episodes([3]))
    archive = tmp_path / "pusht.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file():
                zf.write(f, "pusht/" + f.relative_to(tmp_path).as_posix())
    with pytest.raises(DatasetError, match=r"not a zarr store .*store folder 'pusht/pusht\.zarr/': extract it"):
        validate_store(archive)
