"""Opening and checking replay-buffer stores (Diffusion Policy's zarr layout).

A valid store is a zarr group (format 2 or 3, directory or ``.zip``) holding

```
root/
  data/<key>          arrays (T, ...) concatenated over time, numeric or bool dtype
  meta/episode_ends   int (N,) cumulative episode ends, strictly increasing, first > 0,
                      last == T == len(data/<key>) for every key
```

and finite values in every float array. Every failure raises :class:`DatasetError` with a one-line
message that starts with the store path and names the key and the offending index or value.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore, ZipStore

__all__ = ["DatasetError", "open_root", "check_group", "check_finite", "validate_store", "describe_store"]

# Rows read at once when scanning a store lazily for NaN/inf (bounded by bytes, see `_block_rows`).
_SCAN_BYTES = 64 * 2**20


class DatasetError(ValueError):
    """A store is missing, is not a zarr store, or breaks the replay-buffer layout (one-line message)."""


def _one_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _is_valid_dtype(dtype: Any) -> bool:
    """Numeric (bool, signed/unsigned int, float) numpy dtypes only; no complex, strings or objects."""
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    return kind in "biuf"


def _nested_store_hint(p: Path) -> str:
    """For a .zip that merely archives a store folder (e.g. ``pusht/x.zarr/...``), say where it is."""
    if not p.is_file():
        return ""
    with zipfile.ZipFile(p) as zf:
        groups = [n.rsplit("/", 1)[0] for n in zf.namelist() if n.endswith(("/.zgroup", "/zarr.json"))]
    if not groups:
        return ""
    inner = min(groups, key=lambda g: (g.count("/"), g))  # the outermost group
    return f"; the archive holds a store folder '{inner}/': extract it and open that"


def open_root(path: str | os.PathLike[str]) -> tuple[zarr.Group, Any]:
    """Open the root group of a store read-only.

    Args:
        path: a directory store (``*.zarr``) or a ``.zip`` store, zarr format 2 or 3.

    Returns:
        ``(root, store)``; call ``store.close()`` when done (a no-op for directories).

    Raises:
        DatasetError: the path does not exist or holds no zarr group.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: store not found (no such file or directory)")
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise DatasetError(f"{p}: not a zarr store (a file that is not a .zip archive)")
        store: Any = ZipStore(p, mode="r")
    else:
        store = LocalStore(p, read_only=True)
    try:
        root = zarr.open_group(store, mode="r")
    except Exception as err:  # zarr raises several types (GroupNotFoundError, JSON errors, ...)
        store.close()
        if isinstance(err, FileNotFoundError):
            raise DatasetError(
                f"{p}: not a zarr store (no group metadata '.zgroup' or 'zarr.json' at the root)"
                + _nested_store_hint(p)
            ) from err
        reason = f"{type(err).__name__}: {_one_line(err)}"
        raise DatasetError(f"{p}: not a readable zarr store ({reason})") from err
    return root, store


def check_group(root: zarr.Group, label: str, *, finite: bool = True) -> dict[str, Any]:
    """Check the layout of an open root group; optionally scan float arrays for NaN/inf.

    Args:
        root: the store's root group.
        label: how the store is named in errors (its path).
        finite: also read every float array (chunk by chunk) and reject NaN/inf.

    Returns:
        ``{"n_episodes": int, "n_steps": int, "keys": list[str], "episode_ends": np.ndarray (N,) int64}``.
    """
    members = dict(root.members())
    if not members:
        raise DatasetError(f"{label}: empty store (the root group holds no 'data/' or 'meta/' group)")
    data = members.get("data")
    if not isinstance(data, zarr.Group):
        raise DatasetError(f"{label}: data: missing group 'data/' (found members {sorted(members)})")
    meta = members.get("meta")
    if not isinstance(meta, zarr.Group) or "episode_ends" not in meta:
        raise DatasetError(f"{label}: meta/episode_ends: missing array (the cumulative episode ends)")
    ends_arr = meta["episode_ends"]
    if not isinstance(ends_arr, zarr.Array):
        raise DatasetError(f"{label}: meta/episode_ends: is a group, expected an integer array")
    if np.dtype(ends_arr.dtype).kind not in "iu":
        raise DatasetError(f"{label}: meta/episode_ends: dtype {ends_arr.dtype} is not an integer dtype")
    if ends_arr.ndim != 1:
        raise DatasetError(f"{label}: meta/episode_ends: shape {ends_arr.shape} is not 1-D")
    episode_ends = np.asarray(ends_arr[...], dtype=np.int64)
    check_episode_ends(label, episode_ends)
    arrays = {name: arr for name, arr in data.arrays()}
    if not arrays:
        raise DatasetError(f"{label}: data: group 'data/' holds no arrays")
    n_steps = int(episode_ends[-1])
    for key in sorted(arrays):
        arr = arrays[key]
        if not _is_valid_dtype(arr.dtype):
            raise DatasetError(f"{label}: data/{key}: dtype {arr.dtype} is not bool, integer or float")
        if arr.ndim == 0:
            raise DatasetError(f"{label}: data/{key}: is a scalar, expected an array (T, ...)")
        if arr.shape[0] != n_steps:
            raise DatasetError(
                f"{label}: data/{key}: length {arr.shape[0]} != last episode end {n_steps} "
                f"(meta/episode_ends[{len(episode_ends) - 1}])"
            )
    if finite:
        check_finite(label, arrays, episode_ends)
    return {
        "n_episodes": len(episode_ends),
        "n_steps": n_steps,
        "keys": sorted(arrays),
        "episode_ends": episode_ends,
    }


def check_episode_ends(label: str, episode_ends: np.ndarray) -> None:
    """Reject an empty, non-positive or non-increasing ``episode_ends`` (N,) array."""
    if len(episode_ends) == 0:
        raise DatasetError(f"{label}: meta/episode_ends: empty store (zero episodes)")
    if episode_ends[0] <= 0:
        raise DatasetError(f"{label}: meta/episode_ends[0] = {episode_ends[0]} must be > 0")
    bad = np.flatnonzero(np.diff(episode_ends) <= 0)
    if len(bad):
        i = int(bad[0]) + 1
        raise DatasetError(
            f"{label}: meta/episode_ends[{i}] = {episode_ends[i]} is not greater than "
            f"meta/episode_ends[{i - 1}] = {episode_ends[i - 1]} (must be strictly increasing)"
        )


def _block_rows(arr: Any) -> int:
    """Rows per read when scanning: whole time chunks, about `_SCAN_BYTES` at a time."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
    chunk = int(getattr(arr, "chunks", (1,))[0]) or 1
    return max(chunk, (_SCAN_BYTES // row_bytes) // chunk * chunk)


def check_finite(label: str, arrays: Mapping[str, Any], episode_ends: np.ndarray) -> None:
    """Raise on the first NaN/inf of any float array, naming the key, the index, episode and step.

    Args:
        arrays: key -> array (T, ...) (numpy or zarr; zarr arrays are read in blocks of whole chunks).
        episode_ends: (N,) int64, used to name the episode of the bad index.
    """
    for key in sorted(arrays):
        arr = arrays[key]
        if np.dtype(arr.dtype).kind != "f" or arr.shape[0] == 0:
            continue
        in_memory = isinstance(arr, np.ndarray)
        step = arr.shape[0] if in_memory else _block_rows(arr)
        for start in range(0, arr.shape[0], step):
            block = np.asarray(arr[start : start + step])
            ok = np.isfinite(block.reshape(len(block), -1)).all(axis=1)  # (rows,)
            if ok.all():
                continue
            t = start + int(np.flatnonzero(~ok)[0])
            row = block[t - start].reshape(-1)
            value = row[~np.isfinite(row)][0]
            ep = int(np.searchsorted(episode_ends, t, side="right"))
            ep_start = int(episode_ends[ep - 1]) if ep > 0 else 0
            raise DatasetError(
                f"{label}: data/{key}: non-finite value {value} at index {t} (episode {ep}, step {t - ep_start})"
            )


def validate_store(path: str | os.PathLike[str], *, finite: bool = True) -> dict[str, Any]:
    """Check a store on disk; return a summary or raise :class:`DatasetError` naming the first problem.

    Args:
        path: directory or ``.zip`` store, zarr format 2 or 3.
        finite: also scan float arrays for NaN/inf (reads the whole store once).

    Returns:
        ``{"n_episodes", "n_steps", "keys", "episode_ends"}`` (see :func:`check_group`).
    """
    root, store = open_root(path)
    try:
        return check_group(root, str(path), finite=finite)
    finally:
        store.close()


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def describe_store(path: str | os.PathLike[str]) -> str:
    """A human-readable summary of a store: format, episodes, steps, per-key shape/dtype/chunks/codecs,
    episode-length min/mean/max and the attributes. Checks the layout (not NaN/inf) first.
    """
    root, store = open_root(path)
    try:
        summary = check_group(root, str(path), finite=False)
        ends = summary["episode_ends"]
        lengths = np.diff(ends, prepend=0)
        kind = "zip" if isinstance(store, ZipStore) else "directory"
        lines = [
            f"store       {path}",
            f"format      zarr v{root.metadata.zarr_format} ({kind})",
            f"episodes    {summary['n_episodes']}",
            f"steps       {summary['n_steps']}",
            f"ep. length  min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()}",
            "data:        key, shape, dtype, chunks, compressors, bytes",
        ]
        data = root["data"]
        rows = []
        for key in summary["keys"]:
            arr = data[key]
            codecs = ",".join(type(c).__name__ for c in arr.compressors) or "none"
            size = f"{_fmt_bytes(int(arr.nbytes))} -> {_fmt_bytes(int(arr.nbytes_stored()))} stored"
            rows.append((key, str(tuple(arr.shape)), str(arr.dtype), str(tuple(arr.chunks)), codecs, size))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        attrs = dict(root.attrs)
        lines.append("attributes:" if attrs else "attributes: (none)")
        for k in sorted(attrs):
            v = repr(attrs[k])
            lines.append(f"  {k}: {v if len(v) <= 100 else v[:97] + '...'}")
        return "\n".join(lines)
    finally:
        store.close()
