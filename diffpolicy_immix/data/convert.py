"""Read robomimic HDF5 files and LeRobot dataset folders; convert them to Diffusion Policy's zarr layout.

```python
from diffpolicy_immix.data.convert import convert, describe_source, validate_source
convert("low_dim_v141.hdf5", "datasets/lift.zarr", mask="train")   # robomimic: data/demo_<i>/...
convert("path/to/lerobot_pusht", "datasets/pusht_lerobot.zarr")     # LeRobot v2.0 / v2.1 / v3.0 folder
```

robomimic (``pip install 'diffpolicy-immix[robomimic]'``, h5py)::

    data/demo_<i>/actions (T, Da)     -> data/action
    data/demo_<i>/obs/<key> (T, ...)  -> data/<key>   (images stay uint8 (T, H, W, C))
    data/demo_<i>/rewards, dones (T,) -> data/reward, data/done   (when every demo has them)
    mask/<name>                       -> ``mask=<name>`` keeps only the demos it lists

Demos are taken in numeric index order (demo_2 before demo_10). ``data.attrs["env_args"]`` is kept as
the ``env_args`` attribute.

LeRobot (``pip install 'diffpolicy-immix[lerobot]'``, pyarrow + PyAV): ``meta/info.json``
(``codebase_version``, ``fps``, ``features`` with ``dtype``/``shape``, ``data_path``, ``video_path``,
``chunks_size``); v2.x: ``meta/episodes.jsonl`` and one parquet (and one mp4 per video key) per episode;
v3.0: ``meta/episodes/chunk-XXX/file-XXX.parquet`` (per-episode rows with ``data/chunk_index``,
``data/file_index``, ``videos/<key>/chunk_index``, ``.../file_index``, ``.../from_timestamp``) and
files holding many episodes. Every numeric feature becomes ``data/<feature name>`` with the feature's
shape (``observation.state`` (T, Ds), ``action`` (T, Da)); ``video`` and ``image`` features become
uint8 (T, H, W, 3); the bookkeeping columns (``timestamp``, ``frame_index``, ``episode_index``,
``index``, ``task_index``) and strings are left out. A video frame is the one nearest to the row's
timestamp (plus the episode's ``from_timestamp`` in v3.0), within half a frame period.

Malformed input raises :class:`~diffpolicy_immix.data.validation.DatasetError` with one line naming the
file and key; a missing optional dependency raises :class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffpolicy_immix.data.replay_buffer import ReplayBuffer
from diffpolicy_immix.data.validation import DatasetError
from diffpolicy_immix.errors import MissingExtraError, UserError

__all__ = [
    "FORMATS",
    "MissingExtraError",
    "SourceInfo",
    "convert",
    "describe_source",
    "detect_format",
    "open_source",
    "validate_source",
]

FORMATS = ("zarr", "robomimic", "lerobot")
LEROBOT_VERSIONS = ("v2.0", "v2.1", "v3.0")
# LeRobot's per-frame bookkeeping columns: not demonstration data.
LEROBOT_SKIP = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_DEMO = re.compile(r"demo_(\d+)$")


def _require(module: str, extra: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtraError(
            f"reading {what} needs the '{module}' package: pip install 'diffpolicy-immix[{extra}]'"
        ) from None


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"robomimic"`` for an HDF5 file, ``"lerobot"`` for a folder with ``meta/info.json``, else ``"zarr"``."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in (".hdf5", ".h5"):
            return "robomimic"
        with open(p, "rb") as f:
            if f.read(8) == _HDF5_SIGNATURE:
                return "robomimic"
    if p.is_dir() and (p / "meta" / "info.json").is_file():
        return "lerobot"
    return "zarr"


@dataclass
class SourceInfo:
    """What a source holds: episode lengths (N,), ``keys`` zarr key -> (row shape, dtype, origin)."""

    path: Path
    format: str
    lengths: np.ndarray
    keys: dict[str, tuple[tuple[int, ...], np.dtype, str]]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        return len(self.lengths)

    @property
    def n_steps(self) -> int:
        return int(self.lengths.sum())


# ================================================================================== robomimic
class RobomimicReader:
    """A robomimic HDF5 file: the structure is checked on opening (metadata only, no arrays read)."""

    def __init__(self, path: str | os.PathLike[str], mask: str | None = None) -> None:
        h5py = _require("h5py", "robomimic", "robomimic HDF5 files")
        self.path = Path(path)
        label = str(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{label}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetError(f"{label}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
        try:
            self._scan(label, mask)
        except BaseException:
            self._f.close()
            raise

    def _scan(self, label: str, mask: str | None) -> None:
        demos = self._select_demos(label, mask)
        keys, lengths = self._check_demos(label, demos)
        self.demos = demos
        self.info = SourceInfo(
            self.path, "robomimic", np.asarray(lengths, dtype=np.int64), keys, self._attrs(demos, keys, mask)
        )

    def _select_demos(self, label: str, mask: str | None) -> list[str]:
        """The ``demo_<i>`` groups in index order, only those listed in ``mask/<mask>`` when given."""
        f = self._f
        if "data" not in f:
            raise DatasetError(f"{label}: missing group 'data' (a robomimic file holds data/demo_<i>)")
        index = {}
        for name in f["data"]:
            m = _DEMO.match(name)
            if not m:
                raise DatasetError(f"{label}: data/{name}: not a demo_<i> group")
            index[name] = int(m.group(1))
        demos = sorted(index, key=index.__getitem__)
        if mask is not None:
            masks = sorted(f["mask"]) if "mask" in f else []
            if mask not in masks:
                raise DatasetError(
                    f"{label}: mask/{mask}: no such filter key (available: {', '.join(masks) or 'none'})"
                )
            listed = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(f["mask"][mask][()]).ravel()]
            unknown = [n for n in listed if n not in index]
            if unknown:
                raise DatasetError(f"{label}: mask/{mask} lists {unknown[0]!r}, which is not a group in data/")
            keep = set(listed)
            demos = [d for d in demos if d in keep]
        if not demos:
            raise DatasetError(
                f"{label}: no demonstrations (data/ holds no demo_<i>{' in mask/' + mask if mask else ''})"
            )
        return demos

    def _check_demos(
        self, label: str, demos: list[str]
    ) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype, str]], list[int]]:
        """Every demo against the first: the same obs keys, row shapes, numeric dtypes and one length per
        demo. Returns the converted keys (``{key: (row shape, dtype, source path)}``; ``reward`` / ``done``
        only when every demo has them) and the demos' lengths."""
        data = self._f["data"]
        first = demos[0]
        keys: dict[str, tuple[tuple[int, ...], np.dtype, str]] = {}
        lengths = []
        for name in demos:
            found, length = _demo_datasets(label, data[name], name, first_has=None if name == first else keys)
            if name == first:
                keys = {
                    k: (tuple(ds.shape[1:]), ds.dtype, where.replace(f"/{name}/", "/demo_<i>/"))
                    for k, (ds, where) in found.items()
                }
            for k in ("reward", "done"):  # kept only when every demo has them
                if k in keys and k not in found:
                    del keys[k]
            obs_now = sorted(k for k in found if k not in _CONVERTED)
            obs_first = sorted(k for k in keys if k not in _CONVERTED)
            if obs_now != obs_first:
                raise DatasetError(
                    f"{label}: data/{name}/obs: keys {obs_now} differ from data/{first}/obs keys {obs_first}"
                )
            for k, (ds, where) in found.items():
                if k not in keys:
                    continue
                if ds.shape[0] != length:
                    raise DatasetError(f"{label}: {where}: length {ds.shape[0]} != data/{name}/actions length {length}")
                if tuple(ds.shape[1:]) != keys[k][0]:
                    raise DatasetError(
                        f"{label}: {where}: rows of shape {tuple(ds.shape[1:])} != data/{first}'s {keys[k][0]}"
                    )
                if not (np.issubdtype(ds.dtype, np.number) or ds.dtype == np.bool_):
                    raise DatasetError(f"{label}: {where}: dtype {ds.dtype} is not numeric")
            lengths.append(length)
        return keys, lengths

    def _attrs(self, demos: list[str], keys: dict[str, Any], mask: str | None) -> dict[str, Any]:
        """The converted store's attributes: source, demos, masks, the file's ``env_args`` and the key roles."""
        f = self._f
        attrs: dict[str, Any] = {"source": str(self.path), "source_format": "robomimic", "demos": demos}
        if mask is not None:
            attrs["mask"] = mask
        if "mask" in f:
            attrs["masks"] = sorted(f["mask"])
        env_args = f["data"].attrs.get("env_args")
        if env_args is not None:
            env_args = env_args.decode() if isinstance(env_args, bytes) else str(env_args)
            try:
                attrs["env_args"] = json.loads(env_args)
            except json.JSONDecodeError:
                attrs["env_args"] = env_args
        attrs["obs_keys"] = sorted(k for k in keys if k not in _CONVERTED)
        attrs["action_key"] = "action"
        return attrs

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Each demo's arrays ``{key: (T_i, ...)}`` in index order."""
        data = self._f["data"]
        sources = {"action": "actions", "reward": "rewards", "done": "dones"}
        for name in self.demos:
            g = data[name]
            yield {k: g[sources[k]][()] if k in sources else g["obs"][k][()] for k in self.info.keys}

    def close(self) -> None:
        self._f.close()


# ================================================================================== LeRobot
_NUMERIC = {
    "bool",
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
}


def _hwc(shape: tuple[int, ...], names: Any) -> tuple[int, int, int]:
    """(H, W, C) of an image/video feature whose shape is CHW or HWC (``names`` decides when given)."""
    if isinstance(names, list) and len(names) == 3:
        chw = str(names[0]).startswith("c")
    else:
        chw = shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)
    return (shape[1], shape[2], shape[0]) if chw else (shape[0], shape[1], shape[2])


class LeRobotReader:
    """A local LeRobot dataset folder (codebase v2.0, v2.1 or v3.0); the metadata and the parquet
    row counts are checked on opening."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.pa = _require("pyarrow", "lerobot", "LeRobot datasets")
        self.pq = _require("pyarrow.parquet", "lerobot", "LeRobot datasets")
        self.path = Path(path)
        self.label = str(self.path)
        info_path = self.path / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.label}: meta/info.json: missing (not a LeRobot dataset folder)")
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{self.label}/meta/info.json: not valid JSON ({exc})") from None
        version = info.get("codebase_version")
        if version not in LEROBOT_VERSIONS:
            raise DatasetError(
                f"{self.label}/meta/info.json: unknown codebase_version {version!r} "
                f"(supported: {', '.join(LEROBOT_VERSIONS)})"
            )
        self.version = str(version)
        required = ["fps", "features", "data_path"] + (["chunks_size"] if version != "v3.0" else [])
        for k in required:
            if k not in info:
                raise DatasetError(f"{self.label}/meta/info.json: missing field {k!r}")
        self.fps = float(info["fps"])
        self.meta = info
        self.columns: dict[str, tuple[tuple[int, ...], np.dtype]] = {}  # parquet features
        self.images: dict[str, tuple[int, int, int]] = {}  # parquet image features -> (H, W, C)
        self.videos: dict[str, tuple[int, int, int]] = {}
        for name, feat in info["features"].items():
            if not isinstance(feat, dict) or "dtype" not in feat or "shape" not in feat:
                raise DatasetError(f"{self.label}/meta/info.json: features.{name}: needs 'dtype' and 'shape'")
            dtype, shape = str(feat["dtype"]), tuple(int(s) for s in feat["shape"])
            if name in LEROBOT_SKIP:
                continue
            if dtype in _NUMERIC:
                self.columns[name] = (shape, np.dtype(dtype))
            elif dtype in ("video", "image"):
                if len(shape) != 3:
                    raise DatasetError(f"{self.label}/meta/info.json: features.{name}: {dtype} shape {list(shape)}")
                (self.videos if dtype == "video" else self.images)[name] = _hwc(shape, feat.get("names"))
        if self.videos and "video_path" not in info:
            raise DatasetError(f"{self.label}/meta/info.json: missing field 'video_path' (features have videos)")
        if not self.columns and not self.videos and not self.images:
            raise DatasetError(f"{self.label}/meta/info.json: features hold no numeric, image or video feature")
        self.episode_rows = self._read_episodes()
        self._check_data_files()
        keys: dict[str, tuple[tuple[int, ...], np.dtype, str]] = {}
        for name, (shape, dtype) in self.columns.items():
            keys[name] = (shape, dtype, f"parquet column {name!r}")
        for name, hwc in self.images.items():
            keys[name] = (hwc, np.dtype(np.uint8), f"parquet image {name!r}")
        for name, hwc in self.videos.items():
            keys[name] = (hwc, np.dtype(np.uint8), f"video {name!r}")
        attrs = {
            "source": str(self.path),
            "source_format": f"lerobot {self.version}",
            "fps": self.fps,
            "robot_type": info.get("robot_type"),
            "episode_indices": [int(e["episode_index"]) for e in self.episode_rows],
            "action_key": "action" if "action" in keys else None,
        }
        lengths = np.asarray([e["length"] for e in self.episode_rows], dtype=np.int64)
        self.info = SourceInfo(self.path, f"lerobot {self.version}", lengths, keys, attrs)

    # ---------------------------------------------------------------------------------------------
    def _read_episodes(self) -> list[dict[str, Any]]:
        """Per-episode metadata rows sorted by episode_index (v2: episodes.jsonl, v3: episodes/ parquet)."""
        meta = self.path / "meta"
        if self.version != "v3.0":
            p = meta / "episodes.jsonl"
            if not p.is_file():
                raise FileNotFoundError(f"{self.label}: meta/episodes.jsonl: missing")
            rows = []
            for i, line in enumerate(p.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{self.label}/meta/episodes.jsonl: line {i + 1}: not JSON ({exc})") from None
                for k in ("episode_index", "length"):
                    if k not in row:
                        raise DatasetError(f"{self.label}/meta/episodes.jsonl: line {i + 1}: missing {k!r}")
                rows.append({"episode_index": int(row["episode_index"]), "length": int(row["length"])})
        else:
            files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise FileNotFoundError(f"{self.label}: meta/episodes/chunk-*/file-*.parquet: missing")
            needed = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            for k in self.videos:
                needed += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
            rows = []
            for fp in files:
                names = self.pq.read_schema(fp).names
                missing = [c for c in needed if c not in names]
                if missing:
                    raise DatasetError(f"{self.label}/{fp.relative_to(self.path)}: missing column {missing[0]!r}")
                rows += self.pq.read_table(fp, columns=needed).to_pylist()
        rows.sort(key=lambda r: r["episode_index"])
        seen = [r["episode_index"] for r in rows]
        if len(set(seen)) != len(seen):
            raise DatasetError(f"{self.label}: meta: episode_index listed twice")
        if not rows:
            raise DatasetError(f"{self.label}: meta: no episodes")
        for r in rows:
            if r["length"] < 1:
                raise DatasetError(f"{self.label}: meta: episode {r['episode_index']} has length {r['length']}")
        return rows

    def _data_file(self, row: dict[str, Any]) -> Path:
        tpl = self.meta["data_path"]
        if self.version != "v3.0":
            ep = row["episode_index"]
            rel = tpl.format(episode_chunk=ep // int(self.meta["chunks_size"]), episode_index=ep)
        else:
            rel = tpl.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        return self.path / rel

    def _video_file(self, row: dict[str, Any], key: str) -> Path:
        tpl = self.meta["video_path"]
        if self.version != "v3.0":
            ep = row["episode_index"]
            rel = tpl.format(episode_chunk=ep // int(self.meta["chunks_size"]), video_key=key, episode_index=ep)
        else:
            rel = tpl.format(
                video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"]
            )
        return self.path / rel

    def _rel(self, p: Path) -> str:
        return f"{self.label}/{p.relative_to(self.path)}"

    def _check_data_files(self) -> None:
        """Every data file exists, has the feature columns and each episode's row count."""
        wanted = [*self.columns, *self.images]
        counts: dict[Path, dict[int, int]] = {}
        for row in self.episode_rows:
            fp = self._data_file(row)
            if fp not in counts:
                if not fp.is_file():
                    raise FileNotFoundError(f"{self._rel(fp)}: missing data file of episode {row['episode_index']}")
                names = self.pq.read_schema(fp).names
                missing = [c for c in wanted if c not in names]
                if missing:
                    raise DatasetError(f"{self._rel(fp)}: column {missing[0]!r} missing (a feature in meta/info.json)")
                if self.version != "v3.0":
                    counts[fp] = {row["episode_index"]: self.pq.ParquetFile(fp).metadata.num_rows}
                else:
                    if "episode_index" not in names:
                        raise DatasetError(f"{self._rel(fp)}: column 'episode_index' missing")
                    eps = self.pq.read_table(fp, columns=["episode_index"]).column(0).to_numpy()
                    uniq, n = np.unique(eps, return_counts=True)
                    counts[fp] = dict(zip(uniq.tolist(), n.tolist()))
            n = counts[fp].get(row["episode_index"], 0)
            if n != row["length"]:
                raise DatasetError(
                    f"{self._rel(fp)}: episode {row['episode_index']} has {n} rows, meta says length {row['length']}"
                )
            for key in self.videos:
                vp = self._video_file(row, key)
                if not vp.is_file():
                    raise FileNotFoundError(f"{self._rel(vp)}: missing video of episode {row['episode_index']}")

    # ---------------------------------------------------------------------------------------------
    def _column(self, table: Any, name: str, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
        """A parquet column (scalars, lists or fixed-size lists, nested) as (T, *shape)."""
        pa = self.pa
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise DatasetError(f"{where}: column {name!r} has {col.null_count} null values")
        n, arr = len(col), col
        while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
            arr = arr.flatten()
        values = arr.to_numpy(zero_copy_only=False)
        size = int(np.prod(shape, dtype=np.int64))
        if values.size != n * size:
            raise DatasetError(
                f"{where}: column {name!r} has {values.size / max(n, 1):g} values per row, meta/info.json shape "
                f"{list(shape)}"
            )
        return values.reshape(n, *shape).astype(dtype, copy=False)

    def _images(self, table: Any, name: str, hwc: tuple[int, int, int], where: str) -> np.ndarray:
        from PIL import Image

        out = np.empty((table.num_rows, *hwc), dtype=np.uint8)
        for i, cell in enumerate(table.column(name).to_pylist()):
            raw = cell.get("bytes") if isinstance(cell, dict) else cell
            if raw is None and isinstance(cell, dict) and cell.get("path"):
                raw = (self.path / cell["path"]).read_bytes()
            if raw is None:
                raise DatasetError(f"{where}: column {name!r} row {i}: no image bytes")
            img = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB" if hwc[2] == 3 else "L"))
            out[i] = img.reshape(hwc)
        return out

    def _decode(self, path: Path, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frames of a video with presentation times in [t0, t1] (every frame when both are None): times (N,)
        s and frames (N, H, W, 3) uint8. With ``t0`` the decoder seeks to the keyframe before it, so one
        episode of a many-episode v3.0 file is decoded without decoding (and holding) the whole file."""
        av = _require("av", "lerobot", "LeRobot videos")
        times, frames = [], []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                seek = t0 is not None and t0 > 0 and stream.time_base is not None
                if seek:
                    container.seek(int(t0 / stream.time_base), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.time is None and seek:  # no timestamps: only a full decode can count frames
                        return self._decode(path)
                    t = float(frame.time) if frame.time is not None else len(times) / self.fps
                    if t1 is not None and t > t1:
                        break
                    if t0 is None or t >= t0:
                        times.append(t)
                        frames.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as exc:
            raise DatasetError(f"{self._rel(path)}: cannot decode ({exc})") from None
        if seek and (not times or times[0] > t0 + 1.0 / self.fps + 1e-4):  # the seek overshot: decode from 0
            return self._decode(path, None, t1)
        if not frames:
            raise DatasetError(f"{self._rel(path)}: no video frames")
        order = np.argsort(times, kind="stable")
        return np.asarray(times)[order], np.stack(frames)[order]

    def _frames_at(self, video: tuple[Path, np.ndarray, np.ndarray], query: np.ndarray, ep: int) -> np.ndarray:
        path, times, frames = video
        j = np.clip(np.searchsorted(times, query), 1, max(len(times) - 1, 1))
        if len(times) > 1:
            j = np.where(np.abs(times[j - 1] - query) <= np.abs(times[j] - query), j - 1, j)
        else:
            j = np.zeros(len(query), dtype=np.int64)
        tol = 0.5 / self.fps + 1e-4
        off = np.abs(times[j] - query)
        if (off > tol).any():
            k = int(np.argmax(off > tol))
            raise DatasetError(
                f"{self._rel(path)}: episode {ep}: no frame within {tol:.4f} s of timestamp {query[k]:.4f} s "
                f"(the video has {len(times)} frames, {times[0]:.3f}-{times[-1]:.3f} s)"
            )
        return frames[j]

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Each episode's arrays ``{key: (T_i, ...)}`` in episode_index order."""
        wanted = [*self.columns, *self.images]
        table_cache: tuple[Path | None, Any] = (None, None)
        for row in self.episode_rows:
            ep, fp = row["episode_index"], self._data_file(row)
            if table_cache[0] != fp:
                cols = list(dict.fromkeys([*wanted, "episode_index", "timestamp", "frame_index"]))
                names = self.pq.read_schema(fp).names
                table_cache = (fp, self.pq.read_table(fp, columns=[c for c in cols if c in names]))
            table = table_cache[1]
            if self.version == "v3.0":
                eps = table.column("episode_index").to_numpy()
                table = table.take(np.flatnonzero(eps == ep))
            where = f"{self._rel(fp)} (episode {ep})"
            out = {n: self._column(table, n, s, d, where) for n, (s, d) in self.columns.items()}
            out.update({n: self._images(table, n, hwc, where) for n, hwc in self.images.items()})
            if self.videos:
                if "timestamp" in table.column_names:
                    ts = table.column("timestamp").to_numpy().astype(np.float64)
                elif "frame_index" in table.column_names:
                    ts = table.column("frame_index").to_numpy().astype(np.float64) / self.fps
                else:
                    ts = np.arange(table.num_rows) / self.fps
                tol = 0.5 / self.fps + 1e-4
                for key in self.videos:
                    vp = self._video_file(row, key)
                    if self.version == "v3.0":  # many episodes per file: decode this episode's time range only
                        query = float(row[f"videos/{key}/from_timestamp"]) + ts
                        frames = self._frames_at(
                            (vp, *self._decode(vp, query.min() - tol, query.max() + tol)), query, ep
                        )
                    else:  # one file per episode
                        frames = self._frames_at((vp, *self._decode(vp)), ts, ep)
                    if frames.shape[1:] != self.videos[key]:
                        raise DatasetError(
                            f"{self._rel(vp)}: frames of shape {frames.shape[1:]} != meta/info.json "
                            f"{key} (H, W, C) {self.videos[key]}"
                        )
                    out[key] = frames
            yield out

    def close(self) -> None:
        pass


# ================================================================================== entry points
def open_source(path: str | os.PathLike[str], mask: str | None = None) -> RobomimicReader | LeRobotReader:
    """A reader of a robomimic HDF5 file or a LeRobot folder (its structure checked)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    fmt = detect_format(p)
    if fmt == "robomimic":
        return RobomimicReader(p, mask=mask)
    if mask is not None:
        raise UserError(f"mask={mask!r}: filter keys exist only in robomimic HDF5 files, not in {p}")
    if fmt == "lerobot":
        return LeRobotReader(p)
    raise DatasetError(f"{p}: neither a robomimic HDF5 file nor a LeRobot folder (no meta/info.json)")


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    mask: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert ``src`` (robomimic HDF5 or LeRobot folder) to a zarr store at ``dst`` (written at a
    temporary path beside it and renamed into place when complete).

    Returns ``{"path", "format", "episodes", "steps", "keys", "seconds", "steps_per_s"}``.
    """
    from tqdm.auto import tqdm

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise UserError(f"{dst}: already exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    reader = open_source(src, mask=mask)
    try:
        info = reader.info
        attrs = {k: v for k, v in info.attrs.items() if v is not None}
        with ReplayBuffer.create_writer(dst, attrs, overwrite=overwrite) as writer:
            episodes = tqdm(
                reader.episodes(), total=info.n_episodes, desc=f"convert {info.format}", disable=not progress
            )
            for ep in episodes:
                writer.add_episode(ep)
    finally:
        reader.close()
    seconds = time.perf_counter() - t0
    return {
        "path": str(dst),
        "format": info.format,
        "episodes": info.n_episodes,
        "steps": info.n_steps,
        "keys": sorted(info.keys),
        "seconds": seconds,
        "steps_per_s": info.n_steps / max(seconds, 1e-9),
    }


def validate_source(path: str | os.PathLike[str], mask: str | None = None) -> dict[str, Any]:
    """Check a robomimic file or LeRobot folder's structure (keys, lengths, files) without reading the
    arrays; returns ``{"n_episodes", "n_steps", "keys", "episode_ends", "format"}``."""
    reader = open_source(path, mask=mask)
    try:
        info = reader.info
    finally:
        reader.close()
    return {
        "n_episodes": info.n_episodes,
        "n_steps": info.n_steps,
        "keys": sorted(info.keys),
        "episode_ends": np.cumsum(info.lengths),
        "format": info.format,
    }


def describe_source(path: str | os.PathLike[str], mask: str | None = None) -> str:
    """A human-readable summary: format, episodes, steps, lengths, one line per converted key."""
    reader = open_source(path, mask=mask)
    try:
        info = reader.info
    finally:
        reader.close()
    lengths = info.lengths
    lines = [
        f"source      {info.path}",
        f"format      {info.format}",
        f"episodes    {info.n_episodes}",
        f"steps       {info.n_steps}",
        f"ep. length  min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()}",
        "keys:       zarr key, row shape, dtype, from",
    ]
    rows = [(k, str(s), str(d), origin) for k, (s, d, origin) in sorted(info.keys.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("attributes:")
    for k in sorted(info.attrs):
        v = repr(info.attrs[k])
        lines.append(f"  {k}: {v if len(v) <= 100 else v[:97] + '...'}")
    return "\n".join(lines)


_CONVERTED = ("action", "reward", "done")  # keys the conversion names itself; obs keys may not take them


def _demo_datasets(label: str, g: Any, name: str, first_has: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
    """One demo group's datasets by converted key (``{key: (dataset, source path)}``) and its length.
    ``rewards`` / ``dones`` are taken from the first demo (``first_has`` None) and from later demos only when
    the first had them."""
    if "actions" not in g:
        raise DatasetError(f"{label}: data/{name}/actions: missing")
    if "obs" not in g:
        raise DatasetError(f"{label}: data/{name}/obs: missing group")
    length = int(g["actions"].shape[0]) if g["actions"].ndim else 0
    if length < 1:
        raise DatasetError(f"{label}: data/{name}/actions: empty (shape {g['actions'].shape})")
    found = {"action": (g["actions"], f"data/{name}/actions")}
    for k in g["obs"]:
        if k in _CONVERTED:
            raise DatasetError(f"{label}: data/{name}/obs/{k}: obs key collides with the converted {k!r}")
        found[k] = (g["obs"][k], f"data/{name}/obs/{k}")
    for src, dst in (("rewards", "reward"), ("dones", "done")):
        if src in g and (first_has is None or dst in first_has):
            found[dst] = (g[src], f"data/{name}/{src}")
    return found, length
