"""Row reads of large time-chunked arrays (camera images) through a bounded cache of whole chunks.

A lazy zarr array is read one whole chunk at a time (the unit zarr decompresses anyway); decoded chunks
stay in a least-recently-used cache of at most ``max_bytes``, so a data set larger than memory trains
with a fixed memory footprint, and one that fits is read from disk about once.

```python
rows = ChunkedRows(zarr_array, max_bytes=256 * 2**20)
frames = rows.take(np.array([[0, 1], [57, 58]]))      # (2, 2, 96, 96, 3) uint8
rows.stats()                                          # hits, misses, cached_bytes, ...
```
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["ChunkedRows"]


class ChunkedRows:
    """``take(rows)`` over an array (T, ...) that is read by whole time chunks through an LRU cache.

    Args:
        array: a lazy ``zarr.Array`` (chunked along time; its ``chunks[0]`` rows make one read) or a numpy
            array (read directly, nothing cached).
        max_bytes: bound of the decoded chunks kept in memory; at least the chunk being read is kept.
    """

    def __init__(self, array: Any, max_bytes: int = 256 * 2**20) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes} must be >= 0")
        self.array = array
        self.max_bytes = int(max_bytes)
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = int(array.chunks[0]) if not isinstance(array, np.ndarray) else max(1, self.shape[0])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, cid: int) -> np.ndarray:
        block = self._cache.get(cid)
        if block is not None:
            self._cache.move_to_end(cid)
            self.hits += 1
            return block
        self.misses += 1
        start = cid * self.chunk_rows
        block = np.asarray(self.array[start : min(start + self.chunk_rows, self.shape[0])])
        self._cache[cid] = block
        self._bytes += block.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return block

    def take(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` for an int array ``rows`` of any shape -> ``(*rows.shape, *array.shape[1:])``."""
        rows = np.asarray(rows, dtype=np.int64)
        if isinstance(self.array, np.ndarray):
            return np.take(self.array, rows, axis=0)
        uniq, inverse = np.unique(rows.reshape(-1), return_inverse=True)
        out = np.empty((len(uniq), *self.shape[1:]), dtype=self.dtype)
        cids = uniq // self.chunk_rows
        bounds = np.flatnonzero(np.diff(cids)) + 1  # uniq is sorted, so each chunk's rows are contiguous
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(uniq)]):
            cid = int(cids[lo])
            out[lo:hi] = self._chunk(cid)[uniq[lo:hi] - cid * self.chunk_rows]
        return out[inverse].reshape(*rows.shape, *self.shape[1:])

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded chunks held now."""
        return self._bytes

    def stats(self) -> dict[str, float]:
        """``hits``, ``misses`` (chunk reads), ``hit_rate``, ``cached_bytes``, ``cached_chunks``."""
        total = self.hits + self.misses
        return {
            "hits": float(self.hits),
            "misses": float(self.misses),
            "hit_rate": self.hits / total if total else 0.0,
            "cached_bytes": float(self._bytes),
            "cached_chunks": float(len(self._cache)),
        }

    def clear(self) -> None:
        """Drop every cached chunk."""
        self._cache.clear()
        self._bytes = 0
