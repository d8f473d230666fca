"""Conversion speed of `dpi-data convert` per source format (steps/s), on synthetic files written here.

    python scripts/bench_convert.py [--episodes 100] [--steps 150]

robomimic low-dim: obs object (10), robot0_eef_pos (3), robot0_eef_quat (4), robot0_gripper_qpos (2), actions
(7), float64 (the layout of robomimic's low_dim files); robomimic image: the same plus agentview_image
uint8 84x84x3. LeRobot v2.1 / v3.0: observation.state (3), action (2) float32 and one 96x96 mp4 video
(mpeg4), one file per episode (v2.1) or all episodes in one file (v3.0). Each conversion runs once
after the files are written (the page cache is warm).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_convert import write_mp4  # noqa: E402  (the test suite's format writers)

from diffpolicy_immix.data.convert import convert  # noqa: E402


def write_robomimic(path: Path, episodes: int, steps: int, image: bool) -> None:
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i in range(episodes):
            g = data.create_group(f"demo_{i}")
            g.create_dataset("actions", data=rng.normal(size=(steps, 7)))
            obs = g.create_group("obs")
            for k, d in (("object", 10), ("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2)):
                obs.create_dataset(k, data=rng.normal(size=(steps, d)))
            if image:
                obs.create_dataset("agentview_image", data=rng.integers(0, 255, (steps, 84, 84, 3), dtype=np.uint8))


def write_lerobot(root: Path, episodes: int, steps: int, version: str) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import test_convert as T

    T.H, T.W = 96, 96  # the writers' frame size
    lengths = [steps] * episodes
    info = T.info_json(version, lengths)
    info["features"]["observation.image"]["shape"] = [3, 96, 96]
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    values = [int(v) % 256 for v in range(steps)]
    if version == "v2.1":
        (root / "meta" / "episodes.jsonl").write_text(
            "".join(json.dumps({"episode_index": i, "length": steps}) + "\n" for i in range(episodes))
        )
        for ep in range(episodes):
            p = root / f"data/chunk-000/episode_{ep:06d}.parquet"
            p.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(T.episode_table(ep, steps, ep * steps), p)
            write_mp4(root / f"videos/chunk-000/observation.image/episode_{ep:06d}.mp4", values)
        return
    rows = []
    for ep in range(episodes):
        rows.append(
            {
                "episode_index": ep,
                "length": steps,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "videos/observation.image/chunk_index": 0,
                "videos/observation.image/file_index": 0,
                "videos/observation.image/from_timestamp": ep * steps / T.FPS,
            }
        )
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    (root / "data/chunk-000").mkdir(parents=True)
    table = pa.concat_tables([T.episode_table(ep, steps, ep * steps) for ep in range(episodes)])
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    write_mp4(root / "videos/observation.image/chunk-000/file-000.mp4", values * episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    n, t = args.episodes, args.steps
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'source':<22}{'episodes':>9}{'steps':>8}{'seconds':>9}{'steps/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = [
            ("robomimic low-dim", lambda p: write_robomimic(p, n, t, False), "rl.hdf5"),
            ("robomimic + image", lambda p: write_robomimic(p, n, t, True), "ri.hdf5"),
            ("lerobot v2.1 + video", lambda p: write_lerobot(p, n, t, "v2.1"), "lr21"),
            ("lerobot v3.0 + video", lambda p: write_lerobot(p, n, t, "v3.0"), "lr30"),
        ]
        for name, write, fname in cases:
            src = root / fname
            write(src)
            t0 = time.perf_counter()
            s = convert(src, root / f"{fname}.zarr", progress=False)
            dt = time.perf_counter() - t0
            print(f"{name:<22}{s['episodes']:>9}{s['steps']:>8}{dt:>9.2f}{s['steps'] / dt:>10.0f}")


if __name__ == "__main__":
    main()
