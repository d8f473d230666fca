"""Checkpoints: atomic writes, safe loading, random-state capture and top-k retention.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)`` (no arbitrary code runs while unpickling). Keys:

    format_version  int
    model           the model's state_dict (the normalizer is part of it)
    ema             EMA.state_dict() or None
    optimizer       AdamW state_dict
    lr_scheduler    LambdaLR state_dict
    grad_scaler     GradScaler state_dict (fp16 autocast) or None
    step, epoch     ints: optimizer steps done, epoch of the next batch
    wall_time       float: training seconds so far (summed over resumed runs)
    world_size      int
    noise_seeds     list[int]: the noise generator seed of each rank
    rng             list (one entry per rank) of capture_rng_state() dicts
    log_state       the trainer's pending metric sums (rows not yet written)
    train_config    TrainConfig.to_dict()
    config_yaml     the full run configuration as a YAML string

The top-k checkpoints ranked by evaluation score hold only what evaluation needs: a ``safetensors`` file
(``step=000500-score=0.9200.safetensors``) with the evaluated weights (the EMA model's, normalizer
included) and string metadata ``format`` (``WEIGHTS_FORMAT``), ``weights`` (``ema`` or ``model``),
``step``, ``score`` and ``config_yaml``. ``load_weights`` reads one back.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffpolicy_immix.errors import MissingInputError, UserError
from diffpolicy_immix.utils.io import atomic_path, atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "REQUIRED_KEYS",
    "WEIGHTS_FORMAT",
    "CheckpointManager",
    "atomic_save",
    "capture_rng_state",
    "load_checkpoint",
    "load_weights",
    "preserved_rng",
    "restore_rng_state",
    "save_weights",
    "scored_name",
]

CHECKPOINT_FORMAT = 1
WEIGHTS_FORMAT = "diffpolicy_immix-weights-1"
REQUIRED_KEYS = ("format_version", "model", "optimizer", "lr_scheduler", "step", "epoch", "rng")
_SCORED = re.compile(r"^step=(\d+)-score=(.+)\.(pt|safetensors)$")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path`` (flushed to disk), then renamed into place.

    A failure part-way (full disk, a crash, an exception) leaves any previous file at ``path`` intact.
    """
    with atomic_write(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by the trainer, refusing anything that is not plain data.

    Raises:
        MissingInputError: no file at ``path`` (a ``FileNotFoundError``).
        UserError: the file holds pickled objects other than tensors and built-in containers, is not
            a torch file, or lacks a checkpoint key (the message names the path and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol is reported by the error below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0]  # torch appends a long paragraph about weights_only
        raise UserError(
            f"{path}: refused by safe (weights_only) loading, not a plain-data checkpoint: {first}"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a diffpolicy_immix checkpoint (holds a {type(state).__name__}, not a dict)")
    for key in REQUIRED_KEYS:
        if key not in state:
            raise UserError(f"{path}: not a diffpolicy_immix checkpoint: missing key {key!r}")
    if state["format_version"] != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format_version={state['format_version']!r}; this version reads {CHECKPOINT_FORMAT}"
        )
    return state


def save_weights(weights: dict[str, Tensor], metadata: dict[str, str], path: str | Path) -> Path:
    """Write a weights-only ``safetensors`` file atomically.

    Args:
        weights: a ``state_dict`` (tensors only); tensors are copied to contiguous CPU memory.
        metadata: string metadata (``format`` is set to ``WEIGHTS_FORMAT``).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    meta = {str(k): str(v) for k, v in metadata.items()} | {"format": WEIGHTS_FORMAT}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by :func:`save_weights`: (state_dict, metadata).

    Raises:
        MissingInputError: no file at ``path``.
        UserError: not a safetensors file, or not one written by this toolkit (names the path).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        weights = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable safetensors file ({first})") from exc
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise UserError(
            f"{path}: metadata format={metadata.get('format')!r}; expected {WEIGHTS_FORMAT!r} "
            "(a weights file written by diffpolicy_immix)"
        )
    return weights, metadata


# ---------------------------------------------------------------------------------------------- RNG state


def capture_rng_state(noise_generator: torch.Generator | None = None, cuda: bool = False) -> dict[str, Any]:
    """Every random state a training step can touch, as tensors and plain numbers.

    numpy's and Python's states are converted from tuples of arrays/ints into int64 tensors so that
    safe loading accepts them.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (global state)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "cuda": torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else None,
        "noise_generator": noise_generator.get_state() if noise_generator is not None else None,
    }
    return state


def restore_rng_state(state: dict[str, Any], noise_generator: torch.Generator | None = None) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (restoring the global state)
        (
            np_state["bit_generator"],
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    py_state = state["python"]
    random.setstate(
        (
            int(py_state["version"]),
            tuple(int(v) for v in py_state["internal"].tolist()),
            py_state["gauss_next"],
        )
    )
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if noise_generator is not None and state.get("noise_generator") is not None:
        noise_generator.set_state(state["noise_generator"])


@contextlib.contextmanager
def preserved_rng(cuda: bool = False) -> Iterator[None]:
    """Run a block (e.g. an evaluation) without disturbing torch's, numpy's and Python's global RNGs."""
    state = capture_rng_state(None, cuda)
    try:
        yield
    finally:
        restore_rng_state(state)


# ---------------------------------------------------------------------------------------------- files


def scored_name(step: int, score: float) -> str:
    """File name of a ranked checkpoint, e.g. ``step=000500-score=0.9200.safetensors``."""
    return f"step={step:06d}-score={score:.4f}.safetensors"


def _parse_scored(name: str) -> tuple[int, float] | None:
    match = _SCORED.match(name)
    if match is None:
        return None
    try:
        return int(match.group(1)), float(match.group(2))
    except ValueError:
        return None


class CheckpointManager:
    """``<dir>/latest.pt`` plus the ``keep_top_k`` best weights files by evaluation score (higher is better).

    The ranking is read back from the file names (``.safetensors``, and ``.pt`` of older runs), so it
    survives restarts. Ties keep the later step.
    """

    def __init__(self, directory: str | Path, keep_top_k: int) -> None:
        self.directory = Path(directory)
        self.keep_top_k = keep_top_k

    @property
    def latest_path(self) -> Path:
        return self.directory / "latest.pt"

    def save_latest(self, state: dict[str, Any]) -> Path:
        atomic_save(state, self.latest_path)
        return self.latest_path

    def ranked(self) -> list[tuple[float, int, Path]]:
        """Scored checkpoints on disk as (score, step, path), best first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            parsed = _parse_scored(path.name)
            if parsed is not None:
                found.append((parsed[1], parsed[0], path))
        return sorted(found, key=lambda item: (item[0], item[1]), reverse=True)

    def would_keep(self, step: int, score: float) -> bool:
        """Whether a checkpoint with this score would enter the top k."""
        if self.keep_top_k == 0 or not math.isfinite(score):
            return False
        others = [(s, st) for s, st, _ in self.ranked() if st != step]
        if len(others) < self.keep_top_k:
            return True
        worst_kept = sorted(others, reverse=True)[self.keep_top_k - 1]
        return (round(score, 4), step) > worst_kept

    def save_scored(self, weights: dict[str, Tensor], metadata: dict[str, str], step: int, score: float) -> Path | None:
        """Write ``step=...-score=....safetensors`` (weights and metadata, see ``save_weights``) if it enters
        the top k, then prune; returns its path or None."""
        if not self.would_keep(step, score):
            return None
        for _, old_step, old_path in self.ranked():
            if old_step == step:  # a re-evaluation of the same step replaces the older file
                old_path.unlink(missing_ok=True)
        path = self.directory / scored_name(step, score)
        save_weights(weights, {**metadata, "step": str(step), "score": repr(float(score))}, path)
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete scored checkpoints beyond the best ``keep_top_k``; returns the deleted paths."""
        removed = []
        for _, _, path in self.ranked()[self.keep_top_k :]:
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed
