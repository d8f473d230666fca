"""Shared plumbing for the tasks defined by this package's own MJCF files (model loading, stepping, rendering)."""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: headless rendering by default

import gymnasium as gym
import mujoco
import numpy as np


def asset_path(name: str) -> str:
    """Filesystem path of an MJCF file shipped in ``diffpolicy_immix_envs/assets``."""
    path = resources.files("diffpolicy_immix_envs") / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"diffpolicy_immix_envs/assets/{name}: MJCF asset not found (is the package installed?)"
        )
    return str(path)


def check_render_args(render_mode: str | None, width: int, height: int, modes: list[str]) -> None:
    """Validate the rendering arguments shared by every task; raise a one-line ValueError otherwise."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode={render_mode!r} is not supported; use one of {modes} or None")
    for field, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
            raise ValueError(f"{field}={value!r} must be an int in [1, 1024]")


class MujocoTaskEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base class: owns ``model``/``data``, steps ``frame_skip`` physics steps per action, renders lazily.

    Subclasses set ``xml_name`` and ``frame_skip`` and implement ``reset``/``step``.
    Rendering uses ``mujoco.Renderer`` on the fixed top-down camera ``top`` with shadows and
    reflections off (software GL is ~30x faster without them); the renderer is created on the first
    ``render()`` call and released by ``close()``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}
    xml_name: str = ""
    frame_skip: int = 1

    def __init__(self, render_mode: str | None = None, width: int = 96, height: int = 96) -> None:
        check_render_args(render_mode, width, height, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.width, self.height = width, height
        self.model = mujoco.MjModel.from_xml_path(asset_path(self.xml_name))
        buffer = (int(self.model.vis.global_.offwidth), int(self.model.vis.global_.offheight))
        if width > buffer[0] or height > buffer[1]:
            raise ValueError(f"width={width}, height={height}: at most {buffer[0]} x {buffer[1]} for {self.xml_name}")
        self.data = mujoco.MjData(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._camera = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "top")

    @property
    def control_dt(self) -> float:
        """Seconds of simulated time per ``step`` call."""
        return float(self.model.opt.timestep) * self.frame_skip

    def _simulate(self, ctrl: np.ndarray) -> None:
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)

    def render(self) -> np.ndarray | None:
        """RGB frame, ``ndarray uint8, shape (height, width, 3)``; None when ``render_mode`` is None."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to gym.make")
            return None
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, height=self.height, width=self.width)
            except Exception as err:  # noqa: BLE001 - mujoco raises several types for a missing GL
                raise RuntimeError(
                    f"{type(self).__name__}.render: no OpenGL context ({err}); headless rendering needs "
                    "MUJOCO_GL=egl (or osmesa) set before mujoco is first imported, e.g. import "
                    "diffpolicy_immix_envs first or export MUJOCO_GL=egl"
                ) from err
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()
