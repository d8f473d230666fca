"""Replay buffer over a zarr store in Diffusion Policy's layout.

```
root/                       attrs: task, expert, seeds, obs_keys, action_key, toolkit_version, ...
  data/<key>   (T, ...)     every episode's steps concatenated over time, chunked along time only
  meta/episode_ends (N,)    int64 cumulative ends: episode i is rows [ends[i-1], ends[i]) (ends[-1] = T)
```

Reading accepts zarr format 2 (Diffusion Policy's files, Blosc-compressed) and format 3, as a
directory or a ``.zip`` file. Writing creates format 3 through :class:`ReplayBufferWriter`, which
builds the store at ``<dest>.tmp-<pid>-<n>`` next to the destination and moves it into place only when it
is closed without error.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from diffpolicy_immix import __version__
from diffpolicy_immix.data.validation import (
    DatasetError,
    _is_valid_dtype,
    check_episode_ends,
    check_finite,
    check_group,
    open_root,
)
from diffpolicy_immix.utils.io import replace_path

__all__ = ["ReplayBuffer", "ReplayBufferWriter"]

# Target size of one time chunk when `chunk_steps` is not given (compressed chunks end up smaller).
_CHUNK_BYTES = 2**20
_MAX_CHUNK_STEPS = 65536
_WRITER_IDS = itertools.count()


def _auto_chunk_steps(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
    return int(min(_MAX_CHUNK_STEPS, max(1, _CHUNK_BYTES // row_bytes)))


def _jsonable(value: Any, name: str) -> Any:
    """numpy scalars/arrays -> Python lists/numbers; raise naming the attribute if not JSON-serializable."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    elif isinstance(value, Mapping):
        value = {str(k): _jsonable(v, f"{name}.{k}") for k, v in value.items()}
    elif isinstance(value, list | tuple):
        value = [_jsonable(v, name) for v in value]
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"attrs[{name!r}] = {value!r} is not JSON-serializable ({err})") from None
    return value


class ReplayBuffer:
    """Episodes of time-aligned arrays: ``data[key]`` (T, ...) plus ``episode_ends`` (N,) int64.

    Build one with :meth:`open` (a store on disk), :meth:`from_episodes` (in memory) or write a store
    with :meth:`create_writer`. Arrays are numpy (``in_memory``) or lazy zarr arrays.

    Example::

        with ReplayBuffer.create_writer("datasets/reach.zarr", {"task": "immix/ReachAround-v0"}) as w:
            w.add_episode({"obs": obs, "action": act})       # obs (T, Do), act (T, Da)
        buf = ReplayBuffer.open("datasets/reach.zarr", in_memory=True)
        buf["action"][buf.episode_slice(0)]                  # (T0, Da)
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        episode_ends: np.ndarray,
        attrs: Mapping[str, Any] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        store: Any = None,
    ) -> None:
        self._data = dict(data)
        self._episode_ends = np.asarray(episode_ends, dtype=np.int64)
        self._episode_ends.setflags(write=False)
        self._attrs = dict(attrs or {})
        self.path = Path(path) if path is not None else None
        self._store = store

    # ----------------------------------------------------------------------------------------------
    # construction
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        in_memory: bool = False,
        *,
        validate: bool = True,
        keys: list[str] | None = None,
    ) -> ReplayBuffer:
        """Open a store (zarr format 2 or 3; directory or ``.zip``).

        Args:
            path: the store.
            in_memory: load the arrays into numpy (and close the store); otherwise arrays are lazy
                ``zarr.Array`` objects read on access.
            validate: check the layout and scan float arrays for NaN/inf (raises :class:`DatasetError`).
                The layout itself (``data/``, ``meta/episode_ends``, lengths) is always checked.
            keys: load only these data keys (default all); a missing key raises :class:`DatasetError`.
        """
        root, store = open_root(path)
        label = str(path)
        try:
            summary = check_group(root, label, finite=validate and not in_memory)
            data_group = root["data"]
            names = summary["keys"]
            if keys is not None:
                missing = [k for k in keys if k not in names]
                if missing:
                    raise DatasetError(f"{label}: data/{missing[0]}: no such key (available: {', '.join(names)})")
                names = list(keys)
            arrays: dict[str, Any] = {k: data_group[k] for k in names}
            if in_memory:
                arrays = {k: np.asarray(a[...]) for k, a in arrays.items()}
                if validate:
                    check_finite(label, arrays, summary["episode_ends"])
            attrs = dict(root.attrs)
        except BaseException:
            store.close()
            raise
        if in_memory:
            store.close()
            store = None
        return cls(arrays, summary["episode_ends"], attrs, path=path, store=store)

    @classmethod
    def from_episodes(cls, episodes: list[Mapping[str, Any]], attrs: Mapping[str, Any] | None = None) -> ReplayBuffer:
        """An in-memory buffer from a list of episodes (dict key -> array (T_i, ...)), checked like
        :meth:`ReplayBufferWriter.add_episode`."""
        if not episodes:
            raise DatasetError("<memory>: meta/episode_ends: empty store (zero episodes)")
        spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        checked = []
        for i, ep in enumerate(episodes):
            arrays, spec = _check_episode(ep, spec, i, "<memory>")
            checked.append(arrays)
        lengths = [len(next(iter(ep.values()))) for ep in checked]
        data = {k: np.concatenate([ep[k] for ep in checked]) for k in spec}
        return cls(data, np.cumsum(lengths, dtype=np.int64), attrs)

    @staticmethod
    def create_writer(
        path: str | os.PathLike[str],
        attrs: Mapping[str, Any] | None = None,
        *,
        chunk_steps: int | Mapping[str, int] | None = None,
        overwrite: bool = True,
    ) -> ReplayBufferWriter:
        """A :class:`ReplayBufferWriter` (use it as a context manager) for a new format-3 store.

        Args:
            path: destination (``*.zarr`` directory, or ``*.zip`` for a single-file store).
            attrs: JSON-serializable root attributes (task, expert, seeds, obs_keys, action_key, ...);
                ``toolkit_version`` and ``created`` are added.
            chunk_steps: time steps per chunk (one value or per key); default about 1 MiB per chunk.
            overwrite: replace an existing store at ``path`` once the new one is complete (the old one
                is untouched if writing fails); with ``False`` an existing path raises FileExistsError.
        """
        return ReplayBufferWriter(path, attrs, chunk_steps=chunk_steps, overwrite=overwrite)

    # ----------------------------------------------------------------------------------------------
    # access
    @property
    def n_episodes(self) -> int:
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(N,) int64 cumulative episode ends (read-only)."""
        return self._episode_ends

    @property
    def episode_starts(self) -> np.ndarray:
        """(N,) int64 first row of each episode."""
        return np.concatenate([[0], self._episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        """(N,) int64 steps per episode."""
        return np.diff(self._episode_ends, prepend=0)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (a copy)."""
        return dict(self._attrs)

    @property
    def in_memory(self) -> bool:
        return all(isinstance(a, np.ndarray) for a in self._data.values())

    @property
    def data(self) -> dict[str, Any]:
        """key -> array (T, ...) (numpy when in memory, else zarr.Array)."""
        return dict(self._data)

    def keys(self) -> list[str]:
        return sorted(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        """The array (T, ...) of one key; a missing key raises :class:`DatasetError` listing the keys."""
        try:
            return self._data[key]
        except KeyError:
            raise DatasetError(
                f"{self.path or '<memory>'}: data/{key}: no such key (available: {', '.join(self.keys())})"
            ) from None

    def episode_slice(self, i: int) -> slice:
        """Rows of episode ``i`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes")
        i %= n
        start = int(self._episode_ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._episode_ends[i]))

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as numpy arrays key -> (T_i, ...)."""
        sl = self.episode_slice(i)
        return {k: np.asarray(self[k][sl]) for k in (keys or self.keys())}

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_episodes):
            yield self.get_episode(i)

    def close(self) -> None:
        """Release the store of a lazily opened buffer (needed for ``.zip`` stores)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "<memory>"
        return (
            f"ReplayBuffer({where}, episodes={self.n_episodes}, steps={self.n_steps}, "
            f"keys={self.keys()}, in_memory={self.in_memory})"
        )


def _check_episode(
    episode: Mapping[str, Any],
    spec: dict[str, tuple[tuple[int, ...], np.dtype]],
    index: int,
    label: str,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """Validate one episode against ``spec`` (key -> (row shape, dtype)); an empty ``spec`` is
    derived from this episode. Returns the checked arrays and the spec."""
    if not isinstance(episode, Mapping) or not episode:
        raise DatasetError(f"{label}: episode {index}: expected a non-empty dict key -> array (T, ...)")
    arrays = {str(k): np.asarray(v) for k, v in episode.items()}
    if not spec:  # the first episode defines keys, row shapes and dtypes (kept only if it passes)
        spec = {}
        for k, a in arrays.items():
            if "/" in k or not k:
                raise DatasetError(f"{label}: episode {index}: key {k!r} is not a valid array name")
            if a.ndim == 0:
                raise DatasetError(f"{label}: data/{k}: episode {index} gives a scalar, expected (T, ...)")
            if not _is_valid_dtype(a.dtype):
                raise DatasetError(f"{label}: data/{k}: dtype {a.dtype} is not bool, integer or float")
            spec[k] = (tuple(a.shape[1:]), a.dtype)
    if set(arrays) != set(spec):
        missing, extra = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
        raise DatasetError(
            f"{label}: episode {index}: keys differ from the first episode's (missing {missing}, extra {extra})"
        )
    lengths = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{label}: episode {index}: keys have different lengths {lengths}")
    if next(iter(lengths.values())) == 0:
        raise DatasetError(f"{label}: episode {index}: has zero steps")
    out = {}
    for k, a in arrays.items():
        row_shape, dtype = spec[k]
        if tuple(a.shape[1:]) != row_shape:
            raise DatasetError(
                f"{label}: data/{k}: episode {index} has rows of shape {tuple(a.shape[1:])}, "
                f"the first episode {row_shape}"
            )
        if a.dtype != dtype:
            if not np.can_cast(a.dtype, dtype, casting="same_kind"):
                raise DatasetError(f"{label}: data/{k}: episode {index} has dtype {a.dtype}, cannot cast to {dtype}")
            a = a.astype(dtype)
        if dtype.kind == "f":
            ok = np.isfinite(a.reshape(len(a), -1)).all(axis=1)
            if not ok.all():
                raise DatasetError(
                    f"{label}: data/{k}: episode {index} has a non-finite value at step {int(np.flatnonzero(~ok)[0])}"
                )
        out[k] = np.ascontiguousarray(a)
    return out, spec


class ReplayBufferWriter:
    """Writes a new format-3 store episode by episode, atomically.

    The store is built at ``<dest>.tmp-<pid>-<n>`` next to the destination; ``meta/episode_ends`` and the
    attributes are written last, and the directory is renamed to ``dest`` only by a successful
    :meth:`close` (or the end of a ``with`` block without an exception). On an exception the temporary
    store is deleted and an existing store at ``dest`` stays as it was; an existing store is replaced
    only after the new one is complete (old renamed away, new renamed in, old deleted).

    Steps are buffered in memory and written in whole time chunks, so appending never rewrites a chunk.
    A ``.zip`` destination is built as a directory and packed (uncompressed entries; chunks are already
    compressed) at close.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        attrs: Mapping[str, Any] | None = None,
        *,
        chunk_steps: int | Mapping[str, int] | None = None,
        overwrite: bool = True,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: already exists (pass overwrite=True to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(chunk_steps, int) and chunk_steps < 1:
            raise ValueError(f"chunk_steps={chunk_steps} must be >= 1")
        self._chunk_steps = chunk_steps
        self._attrs = {str(k): _jsonable(v, str(k)) for k, v in (attrs or {}).items()}
        self._zip = self.path.suffix == ".zip"
        # <name>.tmp-<pid>-<n>: unique per writer; a leftover from a dead process with a reused pid is
        # stale and removed.
        self._tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{next(_WRITER_IDS)}")
        self._build = self._tmp.with_name(self._tmp.name + ".d") if self._zip else self._tmp
        for p in {self._tmp, self._build}:
            _remove(p)
        self._root = zarr.open_group(LocalStore(self._build), mode="w", zarr_format=3)
        self._data_group = self._root.create_group("data")
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._pending: dict[str, list[np.ndarray]] = {}
        self._ends: list[int] = []
        self._state = "open"

    # ----------------------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def temp_path(self) -> Path:
        """Where the store is being built."""
        return self._build

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or replace root attributes (written at close)."""
        self._require_open()
        self._attrs.update({str(k): _jsonable(v, str(k)) for k, v in attrs.items()})

    def add_episode(self, episode: Mapping[str, Any]) -> int:
        """Append one episode: dict key -> array (T, ...), the same keys, row shapes and (castable)
        dtypes as the first episode, T >= 1, finite floats. Returns the episode's index."""
        self._require_open()
        arrays, self._spec = _check_episode(episode, self._spec, len(self._ends), str(self.path))
        if not self._arrays:
            self._create_arrays()
        length = len(next(iter(arrays.values())))
        for k, a in arrays.items():
            self._pending[k].append(a)
        self._ends.append(self.n_steps + length)
        self._flush(final=False)
        return len(self._ends) - 1

    def close(self) -> Path:
        """Finish the store and move it to the destination; returns the destination path."""
        self._require_open()
        try:
            if not self._ends:
                raise DatasetError(f"{self.path}: no episodes were added; nothing written")
            self._flush(final=True)
            ends = np.asarray(self._ends, dtype=np.int64)
            check_episode_ends(str(self.path), ends)
            meta = self._root.create_group("meta")
            meta.create_array("episode_ends", data=ends, chunks=(max(1, min(len(ends), 65536)),))
            attrs = {"toolkit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            attrs.update(self._attrs)
            self._root.attrs.update(attrs)
            if self._zip:
                _pack_zip(self._build, self._tmp)
                _remove(self._build)
            replace_path(self._tmp, self.path)  # swaps an existing store through <name>.old-<pid>
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Delete the temporary store; the destination is left untouched."""
        if self._state == "closed":
            return
        self._state = "aborted"
        _remove(self._build)
        _remove(self._tmp)

    def __enter__(self) -> ReplayBufferWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # an abandoned writer leaves no temporary store behind
        if getattr(self, "_state", "closed") == "open":
            try:
                self.abort()
            except Exception:  # interpreter shutdown: modules may already be gone
                pass

    # ----------------------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self.path}: writer is {self._state}")

    def _chunk_for(self, key: str) -> int:
        row_shape, dtype = self._spec[key]
        cs = self._chunk_steps
        if isinstance(cs, Mapping):
            cs = cs.get(key)
        if cs is None:
            return _auto_chunk_steps(row_shape, dtype)
        if int(cs) < 1:
            raise ValueError(f"chunk_steps[{key!r}]={cs} must be >= 1")
        return int(cs)

    def _create_arrays(self) -> None:
        for k, (row_shape, dtype) in self._spec.items():
            self._arrays[k] = self._data_group.create_array(
                k, shape=(0, *row_shape), chunks=(self._chunk_for(k), *row_shape), dtype=dtype
            )
            self._pending[k] = []

    def _flush(self, final: bool) -> None:
        """Write buffered steps in whole time chunks (and the partial tail when ``final``)."""
        for k, arr in self._arrays.items():
            pending = self._pending[k]
            n_pending = sum(len(a) for a in pending)
            chunk = arr.chunks[0]
            n_write = n_pending if final else (n_pending // chunk) * chunk
            if n_write == 0:
                continue
            block = np.concatenate(pending) if len(pending) > 1 else pending[0]
            start = arr.shape[0]
            arr.resize((start + n_write, *arr.shape[1:]))
            arr[start : start + n_write] = block[:n_write]
            self._pending[k] = [block[n_write:].copy()] if n_write < n_pending else []


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def _pack_zip(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for dirpath, _, files in os.walk(src):
            for name in sorted(files):
                full = Path(dirpath) / name
                zf.write(full, full.relative_to(src).as_posix())
