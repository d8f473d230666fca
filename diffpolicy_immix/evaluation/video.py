"""Writing rollout videos: mp4 through imageio-ffmpeg, gif as the fallback, always atomically."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffpolicy_immix.utils.io import atomic_path


def _as_frames(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Stack frames into uint8 (T, H, W, 3), padding H and W to even sizes (yuv420p needs them)."""
    if len(frames) == 0:
        raise ValueError("write_video: frames is empty")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"write_video: frames have different shapes {sorted(shapes)}")
    arr = np.stack([np.asarray(f) for f in frames])  # (T, H, W, C)
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"write_video: frames shape {arr.shape[1:]} must be (H, W, 3) or (H, W, 4)")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return arr


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v2 as imageio  # lazy: pulls in the ffmpeg plugin

    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, macro_block_size=1)
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def write_video(path: str | os.PathLike[str], frames: Sequence[np.ndarray], fps: float = 30.0) -> Path:
    """Write frames as a video, atomically (temporary file in the same folder, then rename).

    Args:
        path: target file; ``.mp4`` (default when the suffix is neither ``.mp4`` nor ``.gif``) or ``.gif``.
        frames: sequence of arrays, shape (H, W, 3), uint8 (floats in [0, 1] or [0, 255] are converted).
        fps: frames per second.

    Returns:
        The path written: the requested one, or the same name with ``.gif`` when mp4 encoding failed
        (a warning says why).
    """
    if fps <= 0:
        raise ValueError(f"write_video: fps={fps} must be positive")
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        path = path.with_name(path.name + ".mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _as_frames(frames)

    if path.suffix.lower() == ".mp4":
        try:
            with atomic_path(path) as tmp:
                _write_mp4(tmp, arr, fps)
            return path
        except Exception as exc:  # any encoder failure falls back to gif
            warnings.warn(f"write_video: mp4 encoding of {path} failed ({exc!r}); writing a gif", stacklevel=2)
            path = path.with_suffix(".gif")

    with atomic_path(path) as tmp:
        _write_gif(tmp, arr, fps)
    return path
