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


#: observation modes of the MuJoCo tasks: the state vector, or a dict of a camera image and the state
OBS_MODES = ("state", "pixels_state")


def check_render_args(render_mode: str | None, width: int, height: int, modes: list[str]) -> None:
    """Validate the rendering arguments shared by every task; raise a one-line ValueError otherwise."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode={render_mode!r} is not supported; use one of {modes} or None")
    for field, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
            raise ValueError(f"{field}={value!r} must be an int in [1, 1024]")


def check_view_args(
    render_mode: str | None, width: int, height: int, modes: list[str], obs_mode: str, image_size: int
) -> None:
    """Validate the rendering and observation arguments of a task with a camera variant (one-line ValueError)."""
    check_render_args(render_mode, width, height, modes)
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode={obs_mode!r} is not supported; use one of {OBS_MODES}")
    check_render_args(None, image_size, image_size, [])


class MujocoTaskEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base class: owns ``model``/``data``, steps ``frame_skip`` physics steps per action, renders lazily.

    Subclasses set ``xml_name``, ``frame_skip``, ``action_high`` (actions lie in ``[-action_high,
    action_high]^2``) and ``state_high`` (bounds of the state vector), put their own set-up in
    ``_setup()`` and implement ``reset``/``step``, returning ``self._observe(state)``.
    Rendering uses ``mujoco.Renderer`` on the fixed top-down camera ``top`` with shadows and
    reflections off (software GL is ~30x faster without them); the renderer is created on the first
    ``render()`` call and released by ``close()``.

    ``obs_mode="pixels_state"`` makes every observation a dict ``{"img": uint8 (image_size, image_size, 3),
    "state": float32 (Do,)}``: the same top-down camera rendered offscreen (EGL by default) by a second
    renderer at ``image_size`` (independent of ``width``/``height``, which size ``render()``'s frames).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}
    xml_name: str = ""
    frame_skip: int = 1
    action_high: float = 1.0
    state_high: tuple[float, ...] = ()

    def __init__(
        self,
        render_mode: str | None = None,
        width: int = 96,
        height: int = 96,
        obs_mode: str = "state",
        image_size: int = 96,
    ) -> None:
        check_view_args(render_mode, width, height, self.metadata["render_modes"], obs_mode, image_size)
        self.obs_mode = obs_mode
        self.image_size = image_size
        self.render_mode = render_mode
        self.width, self.height = width, height
        self.model = mujoco.MjModel.from_xml_path(asset_path(self.xml_name))
        buffer = (int(self.model.vis.global_.offwidth), int(self.model.vis.global_.offheight))
        if width > buffer[0] or height > buffer[1]:
            raise ValueError(f"width={width}, height={height}: at most {buffer[0]} x {buffer[1]} for {self.xml_name}")
        if image_size > min(buffer):
            raise ValueError(f"image_size={image_size}: at most {min(buffer)} for {self.xml_name}")
        self.data = mujoco.MjData(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._obs_renderer: mujoco.Renderer | None = None
        self._camera = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "top")
        self.action_space = gym.spaces.Box(-self.action_high, self.action_high, shape=(2,), dtype=np.float32)
        high = np.array(self.state_high, dtype=np.float32)
        self.observation_space = self._observation_space(gym.spaces.Box(-high, high, dtype=np.float32))
        self._setup()

    def _setup(self) -> None:
        """Task-specific state after the model, data and spaces exist (subclasses override)."""

    @property
    def control_dt(self) -> float:
        """Seconds of simulated time per ``step`` call."""
        return float(self.model.opt.timestep) * self.frame_skip

    def _simulate(self, ctrl: np.ndarray) -> None:
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)

    def _observation_space(self, state: gym.spaces.Box) -> gym.spaces.Space:
        """The observation space of ``obs_mode`` given the state vector's Box."""
        if self.obs_mode == "state":
            return state
        image = gym.spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
        return gym.spaces.Dict({"img": image, "state": state})

    def _observe(self, state: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """The observation of ``obs_mode``: ``state`` (Do,), or ``{"img": (S, S, 3) uint8, "state": (Do,)}``."""
        if self.obs_mode == "state":
            return state
        if self._obs_renderer is None:
            self._obs_renderer = self._make_renderer(self.image_size, self.image_size)
        self._obs_renderer.update_scene(self.data, camera=self._camera)
        return {"img": self._obs_renderer.render().copy(), "state": state}

    def _make_renderer(self, height: int, width: int) -> mujoco.Renderer:
        try:
            renderer = mujoco.Renderer(self.model, height=height, width=width)
        except Exception as err:  # noqa: BLE001 - mujoco raises several types for a missing GL
            raise RuntimeError(
                f"{type(self).__name__}.render: no OpenGL context ({err}); headless rendering needs "
                "MUJOCO_GL=egl (or osmesa) set before mujoco is first imported, e.g. import "
                "diffpolicy_immix_envs first or export MUJOCO_GL=egl"
            ) from err
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer

    def render(self) -> np.ndarray | None:
        """RGB frame, ``ndarray uint8, shape (height, width, 3)``; None when ``render_mode`` is None."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to gym.make")
            return None
        if self._renderer is None:
            self._renderer = self._make_renderer(self.height, self.width)
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        for name in ("_renderer", "_obs_renderer"):
            renderer = getattr(self, name, None)
            if renderer is not None:
                renderer.close()
                setattr(self, name, None)
        super().close()
