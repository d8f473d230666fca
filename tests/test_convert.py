"""robomimic HDF5 files and LeRobot folders (v2.1 and v3.0), written here from the public format
descriptions, converted to Diffusion Policy's zarr layout and read back; malformed input is refused
with one line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffpolicy_immix.data import DatasetError, ReplayBuffer
from diffpolicy_immix.data.convert import MissingExtraError, convert, describe_source, detect_format, validate_source

HAS_H5PY = importlib.util.find_spec("h5py") is not None
HAS_LEROBOT = importlib.util.find_spec("pyarrow") is not None and importlib.util.find_spec("av") is not None
needs_h5py = pytest.mark.skipif(not HAS_H5PY, reason="h5py not installed (extra 'robomimic')")
needs_lerobot = pytest.mark.skipif(not HAS_LEROBOT, reason="pyarrow/av not installed (extra 'lerobot')")
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------------- robomimic
def robomimic_demos(n: int = 12) -> dict[int, dict[str, np.ndarray]]:
    """Demo index -> arrays; demo i has 3 + i % 4 steps and values that encode (i, t)."""
    demos = {}
    for i in range(n):
        t = np.arange(3 + i % 4)
        demos[i] = {
            "actions": np.stack([i + 0.01 * t] * 7, axis=1).astype(np.float64),
            "object": np.stack([i * 100.0 + t] * 10, axis=1),
            "robot0_eef_pos": np.stack([t, t, t], axis=1).astype(np.float32),
            "agentview_image": np.full((len(t), 8, 6, 3), i * 10 + t[:, None, None, None], dtype=np.uint8),
            "rewards": (t == t[-1]).astype(np.float64),
            "dones": (t == t[-1]).astype(np.int64),
        }
    return demos


def write_robomimic(path: Path, demos: dict[int, dict[str, np.ndarray]], masks: dict | None = None) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        data.attrs["total"] = sum(len(d["object"]) for d in demos.values() if "object" in d)
        for i in sorted(demos, key=str):  # created in lexical order: demo_0, demo_1, demo_10, demo_11, demo_2...
            d = demos[i]
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(d["rewards"])
            for k in ("actions", "rewards", "dones"):
                if k in d:
                    g.create_dataset(k, data=d[k])
            obs = g.create_group("obs")
            for k in ("object", "robot0_eef_pos", "agentview_image"):
                if k in d:
                    obs.create_dataset(k, data=d[k])
        for name, members in (masks or {}).items():
            f.create_dataset(f"mask/{name}", data=np.array([f"demo_{i}".encode() for i in members]))
    return path


@needs_h5py
def test_robomimic_round_trip_in_index_order(tmp_path: Path) -> None:
    demos = robomimic_demos()
    src = write_robomimic(tmp_path / "low_dim.hdf5", demos, {"train": [11, 2, 0, 5], "valid": [1]})
    assert detect_format(src) == "robomimic"
    summary = convert(src, tmp_path / "out.zarr", progress=False)
    assert summary["episodes"] == 12 and summary["steps"] == sum(len(d["actions"]) for d in demos.values())
    buf = ReplayBuffer.open(tmp_path / "out.zarr", in_memory=True)
    assert buf.keys() == ["action", "agentview_image", "done", "object", "reward", "robot0_eef_pos"]
    assert buf["agentview_image"].dtype == np.uint8 and buf["agentview_image"].shape[1:] == (8, 6, 3)
    assert buf["action"].dtype == np.float64 and buf["robot0_eef_pos"].dtype == np.float32
    np.testing.assert_array_equal(buf.episode_lengths, [3 + i % 4 for i in range(12)])
    for i in range(12):  # numeric order: demo_2 before demo_10
        ep = buf.get_episode(i)
        np.testing.assert_array_equal(ep["action"], demos[i]["actions"])
        np.testing.assert_array_equal(ep["object"], demos[i]["object"])
        np.testing.assert_array_equal(ep["agentview_image"], demos[i]["agentview_image"])
        np.testing.assert_array_equal(ep["done"], demos[i]["dones"])
    assert buf.attrs["env_args"]["env_name"] == "Lift" and buf.attrs["demos"][:3] == ["demo_0", "demo_1", "demo_2"]
    assert buf.attrs["action_key"] == "action" and "object" in buf.attrs["obs_keys"]

    convert(src, tmp_path / "train.zarr", mask="train", progress=False)
    train = ReplayBuffer.open(tmp_path / "train.zarr", in_memory=True)
    assert train.attrs["demos"] == ["demo_0", "demo_2", "demo_5", "demo_11"] and train.attrs["mask"] == "train"
    np.testing.assert_array_equal(train.get_episode(3)["action"], demos[11]["actions"])


@needs_h5py
@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: d[1].pop("actions"), "data/demo_1/actions: missing"),
        (lambda d: d[0].update(object=d[0]["object"][:-1]), "data/demo_0/obs/object: length 2 != data/demo_0/actions"),
        (lambda d: d[3].pop("object"), "data/demo_3/obs: keys ['agentview_image', 'robot0_eef_pos'] differ"),
        (lambda d: d[2].update(object=d[2]["object"][:, :5]), "data/demo_2/obs/object: rows of shape (5,) != data/"),
    ],
)
def test_malformed_robomimic_is_refused(tmp_path: Path, break_it, message: str) -> None:
    demos = robomimic_demos(4)
    break_it(demos)
    src = write_robomimic(tmp_path / "bad.hdf5", demos)
    with pytest.raises(DatasetError) as err:
        convert(src, tmp_path / "out.zarr", progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.zarr").exists() and not list(tmp_path.glob("out.zarr.tmp-*"))


@needs_h5py
def test_robomimic_file_level_errors(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "d.hdf5", robomimic_demos(3), {"train": [0]})
    with pytest.raises(DatasetError, match=r"mask/nope: no such filter key \(available: train\)"):
        validate_source(src, mask="nope")
    import h5py

    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(DatasetError, match="missing group 'data'"):
        validate_source(tmp_path / "empty.hdf5")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        validate_source(tmp_path / "junk.hdf5")


def test_missing_extra_names_it(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "x.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'diffpolicy-immix\[robomimic\]'"):
        convert(tmp_path / "x.hdf5", tmp_path / "o.zarr", progress=False)
    (tmp_path / "lr" / "meta").mkdir(parents=True)
    (tmp_path / "lr" / "meta" / "info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'diffpolicy-immix\[lerobot\]'"):
        convert(tmp_path / "lr", tmp_path / "o.zarr", progress=False)


# ----------------------------------------------------------------------------------------- LeRobot
FPS = 10
H, W = 16, 24


def frame_value(ep: int, t: int) -> int:
    return 10 + 15 * ep + 45 * t  # a uniform grey level per frame, >= 15 apart: survives lossy encoding


def write_mp4(path: Path, values: list[int]) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = 1  # intra frames only
        s.options = {"qscale": "1"}
        for v in values:
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), v, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def episode_table(ep: int, length: int, start: int):
    import pyarrow as pa

    t = np.arange(length)
    return pa.table(
        {
            "observation.state": pa.array(
                [[ep, float(i), -float(i)] for i in t], type=pa.list_(pa.float32(), 3)
            ),  # fixed-size list
            "action": pa.array([[ep + 0.5, i * 0.1] for i in t], type=pa.list_(pa.float32())),  # variable list
            "timestamp": pa.array(t / FPS, type=pa.float32()),
            "frame_index": pa.array(t, type=pa.int64()),
            "episode_index": pa.array([ep] * length, type=pa.int64()),
            "index": pa.array(start + t, type=pa.int64()),
            "task_index": pa.array([0] * length, type=pa.int64()),
        }
    )


def info_json(version: str, lengths: list[int]) -> dict:
    v3 = version == "v3.0"
    return {
        "codebase_version": version,
        "robot_type": "test",
        "total_episodes": len(lengths),
        "total_frames": sum(lengths),
        "chunks_size": 1000,
        "fps": FPS,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        if v3
        else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if v3
        else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {
            "observation.image": {
                "dtype": "video",
                "shape": [3, H, W],
                "names": ["channels", "height", "width"],
                "info": {"video.fps": FPS, "video.codec": "mpeg4", "video.pix_fmt": "yuv420p"},
            },
            "observation.state": {"dtype": "float32", "shape": [3], "names": None},
            "action": {"dtype": "float32", "shape": [2], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }


LENGTHS = [5, 3, 4]


def write_lerobot_v21(root: Path, lengths: list[int] = LENGTHS) -> Path:
    import pyarrow.parquet as pq

    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v2.1", lengths)))
    order = list(reversed(range(len(lengths))))  # episodes.jsonl out of order: sorted by episode_index
    (root / "meta" / "episodes.jsonl").write_text(
        "".join(json.dumps({"episode_index": i, "tasks": ["push"], "length": lengths[i]}) + "\n" for i in order)
    )
    start = 0
    for ep, n in enumerate(lengths):
        p = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episode_table(ep, n, start), p)
        write_mp4(
            root / f"videos/chunk-000/observation.image/episode_{ep:06d}.mp4", [frame_value(ep, t) for t in range(n)]
        )
        start += n
    return root


def write_lerobot_v30(root: Path, lengths: list[int] = LENGTHS) -> Path:
    """Episodes 0 and 1 in data file-000, episode 2 in file-001; one video file for all episodes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v3.0", lengths)))
    files = {0: 0, 1: 0, 2: 1}
    tables: dict[int, list] = {0: [], 1: []}
    rows, start, ts = [], 0, 0.0
    for ep, n in enumerate(lengths):
        tables[files[ep]].append(episode_table(ep, n, start))
        rows.append(
            {
                "episode_index": ep,
                "tasks": ["push"],
                "length": n,
                "data/chunk_index": 0,
                "data/file_index": files[ep],
                "dataset_from_index": start,
                "dataset_to_index": start + n,
                "videos/observation.image/chunk_index": 0,
                "videos/observation.image/file_index": 0,
                "videos/observation.image/from_timestamp": ts,
                "videos/observation.image/to_timestamp": ts + n / FPS,
            }
        )
        start += n
        ts += n / FPS
    for f, parts in tables.items():
        p = root / f"data/chunk-000/file-{f:03d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), p)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    write_mp4(
        root / "videos/observation.image/chunk-000/file-000.mp4",
        [frame_value(ep, t) for ep, n in enumerate(lengths) for t in range(n)],
    )
    return root


@needs_lerobot
@pytest.mark.parametrize("writer", [write_lerobot_v21, write_lerobot_v30], ids=["v2.1", "v3.0"])
def test_lerobot_round_trip(tmp_path: Path, writer) -> None:
    src = writer(tmp_path / "ds")
    assert detect_format(src) == "lerobot"
    summary = convert(src, tmp_path / "out.zarr", progress=False)
    assert summary["episodes"] == 3 and summary["steps"] == sum(LENGTHS)
    buf = ReplayBuffer.open(tmp_path / "out.zarr", in_memory=True)
    assert buf.keys() == ["action", "observation.image", "observation.state"]
    np.testing.assert_array_equal(buf.episode_lengths, LENGTHS)
    assert buf["observation.image"].dtype == np.uint8 and buf["observation.image"].shape[1:] == (H, W, 3)
    assert buf["action"].dtype == np.float32
    for ep, n in enumerate(LENGTHS):
        e = buf.get_episode(ep)
        np.testing.assert_allclose(e["observation.state"], [[ep, i, -i] for i in range(n)])
        np.testing.assert_allclose(e["action"], [[ep + 0.5, i * 0.1] for i in range(n)], rtol=1e-6)
        means = e["observation.image"].reshape(n, -1).mean(axis=1)
        np.testing.assert_allclose(means, [frame_value(ep, t) for t in range(n)], atol=5.0)
    assert buf.attrs["fps"] == FPS and buf.attrs["episode_indices"] == [0, 1, 2]


@needs_lerobot
def test_lerobot_errors(tmp_path: Path) -> None:
    src = write_lerobot_v21(tmp_path / "ds")
    info = json.loads((src / "meta/info.json").read_text())
    (src / "meta/info.json").write_text(json.dumps(dict(info, codebase_version="v1.6")))
    with pytest.raises(DatasetError, match=r"unknown codebase_version 'v1.6' \(supported: v2.0, v2.1, v3.0\)$"):
        validate_source(src)
    (src / "meta/info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "data_path"}))
    with pytest.raises(DatasetError, match="meta/info.json: missing field 'data_path'"):
        validate_source(src)
    (src / "meta/info.json").write_text(json.dumps(info))
    (src / "meta/episodes.jsonl").write_text(
        "".join(json.dumps({"episode_index": i, "length": n + (i == 1)}) + "\n" for i, n in enumerate(LENGTHS))
    )
    with pytest.raises(DatasetError, match=r"episode_000001.parquet: episode 1 has 3 rows, meta says length 4"):
        validate_source(src)
    (src / "meta/episodes.jsonl").write_text(
        "".join(json.dumps({"episode_index": i, "length": n}) + "\n" for i, n in enumerate(LENGTHS))
    )
    os.remove(src / "videos/chunk-000/observation.image/episode_000002.mp4")
    with pytest.raises(FileNotFoundError, match=r"episode_000002.mp4: missing video of episode 2"):
        validate_source(src)

    v3 = write_lerobot_v30(tmp_path / "v3")
    os.remove(v3 / "data/chunk-000/file-001.parquet")
    with pytest.raises(FileNotFoundError, match=r"data/chunk-000/file-001.parquet: missing data file of episode 2"):
        validate_source(v3)


@needs_lerobot
def test_describe_lerobot(tmp_path: Path) -> None:
    text = describe_source(write_lerobot_v30(tmp_path / "ds"))
    assert "format      lerobot v3.0" in text and "episodes    3" in text
    assert "observation.image  (16, 24, 3)  uint8" in text


@needs_h5py
def test_dpi_data_commands(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "d.hdf5", robomimic_demos(3), {"train": [0, 2]})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "dpi-data"), *args], capture_output=True, text=True, cwd=tmp_path)

    info = run("info", str(src))
    assert info.returncode == 0 and "format      robomimic" in info.stdout and "object" in info.stdout
    ok = run("validate", str(src))
    assert ok.returncode == 0 and "valid robomimic (3 episodes, 12 steps)" in ok.stdout
    conv = run("convert", str(src), "out.zarr", "--mask", "train")
    assert conv.returncode == 0 and "2 episodes" in conv.stdout, conv.stderr
    assert ReplayBuffer.open(tmp_path / "out.zarr").n_episodes == 2
    again = run("convert", str(src), "out.zarr")
    assert (
        again.returncode == 2
        and again.stderr.strip() == "error: out.zarr: already exists (pass --overwrite to replace it)"
    )
    bad = run("convert", str(src), "o2.zarr", "--mask", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "mask/nope: no such filter key" in bad.stderr


@needs_lerobot
def test_lerobot_v30_decodes_each_episode_range_only(tmp_path: Path, monkeypatch) -> None:
    """One video file holds every episode; each episode's frames come from a decode of its own time range
    (a file of many long episodes never sits in memory whole), and the content is the episode's."""
    from diffpolicy_immix.data.convert import LeRobotReader

    src = write_lerobot_v30(tmp_path / "ds")
    held: list[int] = []
    decode = LeRobotReader._decode

    def counting(self, path, t0=None, t1=None):
        times, frames = decode(self, path, t0, t1)
        held.append(len(frames))
        return times, frames

    monkeypatch.setattr(LeRobotReader, "_decode", counting)
    convert(src, tmp_path / "out.zarr", progress=False)
    assert len(held) == len(LENGTHS)
    assert all(n <= length + 2 for n, length in zip(held, LENGTHS))  # its frames, +-1 at the borders
    assert max(held) < sum(LENGTHS)
