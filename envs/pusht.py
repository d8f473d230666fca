"""``immix/PushT-v0``: gym-pusht's Push-T with Diffusion Policy's low-dimensional observation.

The underlying task (``gym_pusht/PushT-v0``, pymunk): a kinematic disc (radius 15) PD-tracks an absolute
target in ``[0, 512]^2`` px at 10 Hz (100 Hz physics) and pushes a T-shaped block to the fixed goal pose
``(256, 256, pi/4)``. Damping 0 in pymunk means bodies keep no velocity between physics steps, so the block
moves only while pushed.

Observation ``Box(20,) float32``: the 9 block keypoints (x0, y0, ..., x8, y8) in px followed by the agent
position (x, y), as Diffusion Policy's ``PushTKeypointsEnv`` (without its visibility mask).
The keypoints are fixed points of the block frame (:data:`BLOCK_KEYPOINTS_LOCAL`) mapped to the world by the
block pose (body position and angle); see :func:`derive_block_keypoints` for how they were chosen.
Action ``Box(2,) float32`` in ``[0, 512]^2``: absolute agent target.
Reward = score = ``clip(coverage / 0.95, 0, 1)`` where coverage = area(block & goal) / area(block): the value
Diffusion Policy (and gym-pusht) use as reward and report as "coverage" (mean of the per-episode max).
Success: coverage > 0.95 (terminates). ``info`` also carries ``coverage`` (raw), ``state`` = ``[agent_x,
agent_y, block_x, block_y, block_angle mod 2 pi]`` (Diffusion Policy's ``state`` key, float32 (5,)) and
``keypoint`` float32 (9, 2) (Diffusion Policy's ``keypoint`` key).
Randomization: gym-pusht's (agent uniform integer in [50, 450)^2, block position in [100, 400)^2, angle
uniform in [-pi, pi)).

``obs_mode="pixels_state"`` (``immix/PushTImage-v0``) makes every observation a dict ``{"img": uint8
(image_size, image_size, 3), "state": float32 (5,)}`` laid out as Diffusion Policy's PushT image dataset:
gym-pusht's own pixel observation (its ``obs_type="pixels_agent_pos"``: the 512 x 512 pygame scene resized
with OpenCV, no action marker) and ``state = [agent_x, agent_y, block_x, block_y, block_angle mod 2 pi]``
(the ``info["state"]`` above). Diffusion Policy's image task reads ``img`` and ``state[0:2]``, the agent
position, so its store and this env share ``obs_keys: [img, "state:0:2"]``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .mujoco_base import check_view_args

UNDERLYING_ID = "gym_pusht/PushT-v0"
SUCCESS_COVERAGE = 0.95
# Nine points of the T in the block's body frame (px), fixed once with derive_block_keypoints(seed=0, n=9);
# tests/test_envs.py re-derives them. Diffusion Policy picked its keypoints by the same procedure; the values
# coincide with its datasets' only if both renderings of the T agree pixel for pixel (not verified here).
BLOCK_KEYPOINTS_LOCAL = np.array(
    [
        [9.269787, 90.040974],
        [-60.983472, -1.18673],
        [60.912756, -1.393364],
        [-0.270503, 25.543625],
        [-14.064928, 122.815854],
        [39.002739, 32.857404],
        [-39.966414, 32.729655],
        [-16.824344, 62.863179],
        [23.541461, -1.700288],
    ]
)


def derive_block_keypoints(seed: int = 0, n: int = 9) -> np.ndarray:
    """Choose ``n`` keypoints spread over the T's footprint, shape (n, 2), block frame, px.

    Procedure (Diffusion Policy's idea, own implementation): draw the T at rest at (256, 300) with gym-pusht's
    pygame debug renderer, take every non-background pixel as a candidate, start from one drawn with
    ``numpy.random.default_rng(seed)``, add points by farthest-point sampling, then add a uniform [0, 1)
    sub-pixel offset drawn from the same generator.
    """
    import pygame
    import pymunk
    from gym_pusht.envs.pusht import PushTEnv as _PushT
    from gym_pusht.envs.pymunk_override import DrawOptions

    rng = np.random.default_rng(seed)
    origin = np.array([256.0, 300.0])
    space = pymunk.Space()
    _PushT.add_tee(space, tuple(origin), 0)
    surface = pygame.Surface((512, 512))
    surface.fill(pygame.Color("white"))
    space.debug_draw(DrawOptions(surface))
    image = np.asarray(pygame.surfarray.array3d(surface)).transpose(1, 0, 2)  # (y, x, 3)
    rows, cols = np.nonzero((image != 255).any(axis=-1))
    candidates = np.stack([cols, rows], axis=1).astype(float) - origin  # (M, 2) as (x, y)
    chosen = [int(rng.choice(len(candidates)))]
    nearest = np.linalg.norm(candidates - candidates[chosen[0]], axis=1)
    for _ in range(n - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[nxt], axis=1))
    return candidates[chosen] + rng.uniform(0.0, 1.0, size=(n, 2))


def block_keypoints(block_pose: np.ndarray, local: np.ndarray = BLOCK_KEYPOINTS_LOCAL) -> np.ndarray:
    """World keypoints (K, 2) of the T at ``block_pose = (x, y, angle)`` (body origin and angle, px/rad)."""
    c, s = np.cos(block_pose[2]), np.sin(block_pose[2])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.asarray(block_pose[:2], dtype=float)


def _make_underlying(**kwargs: Any) -> gym.Env:
    try:
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError("immix/PushT-v0 needs gym-pusht: pip install 'diffpolicy-immix[pusht]'") from err
    return gym.make(UNDERLYING_ID, **kwargs).unwrapped


class PushTKeypointEnv(gym.Env[Any, np.ndarray]):
    """Keypoint observation view of gym-pusht (see module docstring).

    ``width``/``height`` size ``render()``'s frames; ``image_size`` the ``img`` of ``obs_mode="pixels_state"``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        render_mode: str | None = None,
        width: int = 96,
        height: int = 96,
        obs_mode: str = "state",
        image_size: int = 96,
    ) -> None:
        check_view_args(render_mode, width, height, self.metadata["render_modes"], obs_mode, image_size)
        self.render_mode = render_mode
        self.obs_mode = obs_mode
        self.image_size = image_size
        self.pusht = _make_underlying(
            obs_type="state" if obs_mode == "state" else "pixels_agent_pos",  # the image only when observed
            render_mode="rgb_array",
            observation_width=image_size,
            observation_height=image_size,
            visualization_width=width,
            visualization_height=height,
        )
        self.action_space = spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)
        # Keypoints stay inside the walled table; the agent is kinematic (it ignores the walls) and its PD
        # controller may overshoot a target on the border, hence the margin.
        keypoints = spaces.Box(-64.0, 576.0, shape=(20,), dtype=np.float32)
        if obs_mode == "state":
            self.observation_space = keypoints
        else:  # Diffusion Policy's image-dataset keys; the angle lies in [0, 2 pi)
            pose = spaces.Box(
                np.array([-64.0, -64.0, -64.0, -64.0, 0.0], dtype=np.float32),
                np.array([576.0, 576.0, 576.0, 576.0, 2 * np.pi], dtype=np.float32),
            )
            image = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
            self.observation_space = spaces.Dict({"img": image, "state": pose})

    @property
    def block_pose(self) -> np.ndarray:
        """``(x, y, angle)`` of the block body (angle unwrapped)."""
        b = self.pusht.block
        return np.array([b.position[0], b.position[1], b.angle])

    @property
    def agent_pos(self) -> np.ndarray:
        return np.array(self.pusht.agent.position)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray | dict[str, np.ndarray], dict[str, Any]]:
        """Options (optional): ``reset_to_state`` = [agent_x, agent_y, block_x, block_y, angle] (gym-pusht's)."""
        super().reset(seed=seed)
        inner_seed = None if seed is None else int(self.np_random.integers(2**31))
        inner_obs, _ = self.pusht.reset(seed=inner_seed, options=options or None)
        info = self._info(self.pusht._get_coverage())
        return self._obs(info, inner_obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray | dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), 0.0, 512.0)
        inner_obs, _, _, _, inner_info = self.pusht.step(action)
        info = self._info(float(inner_info["coverage"]))
        return self._obs(info, inner_obs), info["score"], info["success"], False, info

    def render(self) -> np.ndarray | None:
        """RGB frame from gym-pusht (with the last action marked), ``ndarray uint8, shape (height, width, 3)``."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to gym.make")
            return None
        return np.ascontiguousarray(self.pusht.render())

    def close(self) -> None:
        self.pusht.close()
        super().close()

    def _obs(self, info: dict[str, Any], inner_obs: Any) -> np.ndarray | dict[str, np.ndarray]:
        """The observation of ``obs_mode``: keypoints and agent (20,), or ``{"img": (S, S, 3) uint8, "state":
        (5,)}`` with the image gym-pusht observed (``inner_obs["pixels"]``) and Diffusion Policy's state."""
        if self.obs_mode == "state":
            return np.concatenate([info["keypoint"].reshape(-1), self.agent_pos]).astype(np.float32)
        return {
            "img": np.ascontiguousarray(inner_obs["pixels"], dtype=np.uint8),
            "state": np.asarray(info["state"], dtype=np.float32),
        }

    def _info(self, coverage: float) -> dict[str, Any]:
        pose = self.block_pose
        state = np.array([*self.agent_pos, pose[0], pose[1], pose[2] % (2 * np.pi)], dtype=np.float32)
        success = coverage > SUCCESS_COVERAGE
        return {
            "success": bool(success),
            "score": float(np.clip(coverage / SUCCESS_COVERAGE, 0.0, 1.0)),
            "coverage": float(coverage),
            "state": state,
            "keypoint": block_keypoints(pose).astype(np.float32),
        }
