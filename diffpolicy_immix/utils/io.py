"""Atomic file writes and the clean-up of what killed writers leave behind.

Every file the toolkit writes goes through :func:`atomic_write` (an open file object) or
:func:`atomic_path` (a temporary path, for writers that need a file name): the content is written to a
hidden sibling ``.<name>.tmp-<pid>-<hex><suffix>`` and renamed over ``path`` only when the block ends
without an exception, so readers see either the old file or the complete new one. On an exception the
temporary file is removed. A folder built elsewhere (a zarr store) is moved over an existing one by
:func:`replace_path`, which swaps it through ``<name>.old-<pid>``. A process killed with SIGKILL cannot
remove its temporary file or folder: :func:`find_stale_temps` finds such leftovers (their writer process
is gone) and :func:`remove_stale_temps` deletes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_write",
    "find_stale_temps",
    "pid_alive",
    "remove_path",
    "remove_stale_temps",
    "replace_path",
]

# .<name>.tmp-<pid>[-<hex>][.<suffix>]  (files of atomic_write / atomic_path, and older .<name>.tmp-<pid>)
# <name>.tmp-<pid>-<n>[.d] and <name>.old-<pid>  (zarr stores built or swapped by the replay buffer)
_STALE = (
    re.compile(r"^\..+\.tmp-(?P<pid>\d+)(?:-[0-9a-f]+)?(?:\.[A-Za-z0-9]+)?$"),
    re.compile(r"^[^.].*\.tmp-(?P<pid>\d+)-\d+(?:\.d)?$"),
    re.compile(r"^[^.].*\.old-(?P<pid>\d+)$"),
)


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it is renamed to ``path``.

    For writers that take a file name (encoders, ``safetensors``). The parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, fsync: bool = False, **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` when the block succeeds.

    Args:
        path: the target file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        fsync: flush the data to disk before the rename (checkpoints: survives a power loss too).
        open_kwargs: passed to ``open`` (e.g. ``newline=""`` for CSV).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode={mode!r} must be 'w' or 'wb'")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def remove_path(path: str | os.PathLike[str]) -> None:
    """Delete a file, link or folder tree if it exists (errors inside a tree are ignored)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def replace_path(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Move a finished file or folder ``src`` to ``dest`` (same file system), replacing what is there.

    Without an existing ``dest`` this is one atomic rename. A folder cannot be renamed over an existing
    one, so an existing ``dest`` is first renamed to ``<dest>.old-<pid>``, ``src`` takes its place and the
    old one is deleted; if that second rename fails, the old one is put back. A process killed between
    the renames leaves ``<dest>.old-<pid>``, which :func:`find_stale_temps` reports.
    """
    src, dest = Path(src), Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        os.replace(src, dest)
        return
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    remove_path(old)
    os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    remove_path(old)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def find_stale_temps(directory: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Leftovers of killed writers in ``directory``: temporary files and stores whose writer is gone.

    Args:
        directory: the folder to scan (not recursive); a missing folder has none.
        name: only leftovers of this target name (e.g. ``"reach_around.zarr"``).
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if name is not None and not entry.name.lstrip(".").startswith(name + "."):
            continue
        for pattern in _STALE:
            match = pattern.match(entry.name)
            if match is not None:
                if not pid_alive(int(match.group("pid"))):
                    found.append(entry)
                break
    return found


def remove_stale_temps(directory: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete :func:`find_stale_temps`'s leftovers; returns what was removed (for a warning)."""
    removed = []
    for entry in find_stale_temps(directory, name):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
