"""Metric logs: a wide CSV that tolerates new columns, and optional TensorBoard.

``CsvLog`` writes one row per call with a header line. When a row brings a key the header lacks (a
diagnostic that is only computed every ``diag_every`` steps, an evaluation metric that appears late), the
file is rewritten once with the extended header: the old rows are copied to a temporary file with empty
cells in the new columns, which then replaces the original (an atomic rename), and appending continues.
Floats are written with ``repr``, so a value read back with ``float()`` is bit-identical.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from diffpolicy_immix.utils.io import atomic_write

__all__ = ["CsvLog", "TensorBoardLog", "read_csv"]

log = logging.getLogger(__name__)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV log as dicts of strings (empty string where a row had no value)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class CsvLog:
    """Append rows of metrics to ``path``; the column set can grow.

    Args:
        path: the CSV file; an existing file is continued (its header is kept).
        first_columns: columns that lead the header in this order when the file is created.
    """

    def __init__(self, path: str | Path, first_columns: tuple[str, ...] = ("step",)) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = []
        self._first = first_columns
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                self.columns = next(csv.reader(f), [])

    def write(self, row: dict[str, Any]) -> None:
        """Append one row; new keys extend the header (rewriting the file once)."""
        new = [k for k in row if k not in self.columns]
        if new:
            ordered = [c for c in self._first if c in new] + sorted(k for k in new if k not in self._first)
            self._rewrite(self.columns + ordered, keep=None)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_cell(row.get(c)) for c in self.columns])

    def truncate_after(self, step: int) -> None:
        """Drop rows with a larger ``step`` (rows a killed run wrote after its checkpoint)."""
        if self.columns:
            self._rewrite(self.columns, keep=lambda r: int(r["step"]) <= step)

    def _rewrite(self, columns: list[str], keep: Any) -> None:
        rows = read_csv(self.path) if self.columns else []
        with atomic_write(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for r in rows:
                if keep is None or keep(r):
                    writer.writerow([r.get(c, "") for c in columns])
        self.columns = columns


class TensorBoardLog:
    """Scalars to ``<dir>`` when ``torch.utils.tensorboard`` imports (it needs the ``tensorboard`` extra).

    Without it, one info line is logged and every call is a no-op.
    """

    def __init__(self, directory: str | Path) -> None:
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the `tensorboard` package
        except ImportError:
            log.info(
                "tensorboard is not installed; skipping TensorBoard logs (pip install 'diffpolicy-immix[tensorboard]')"
            )
            return
        self._writer = SummaryWriter(log_dir=str(directory))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def write(self, prefix: str, metrics: dict[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
