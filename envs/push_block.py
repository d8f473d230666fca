"""``immix/PushBlock-v0``: push a rectangular block to a target position and orientation.

Table ``[-0.3, 0.3]^2`` m with walls. Pusher = cylinder of radius 0.015 m on two slide joints, PD-tracking
an absolute target (``force = 300 (target - q) - 35 dq/dt``, mass 1 kg). Block = 0.12 x 0.06 m box,
0.2 kg, on slide x / slide y / hinge z joints; table friction is Coulomb friction on those joints
(0.6 N per axis, 0.02 N m in yaw) plus light damping, so the block only moves while pushed.
Pusher-block contact friction 0.5. Control 10 Hz (10 physics steps of 10 ms).

Observation ``Box(6,) float32``: ``[pusher_x, pusher_y, block_x, block_y, cos(yaw), sin(yaw)]``; with
``obs_mode="pixels_state"`` (``immix/PushBlockImage-v0``) a dict ``{"img": uint8 (96, 96, 3), "state": (6,)}``.
Action ``Box(2,) float32`` in ``[-0.3, 0.3]^2`` m: absolute pusher target position.
Target pose: fixed at ``(0, 0)`` m, yaw 0. The box footprint is symmetric under a half turn, so the yaw
error is taken modulo pi (in ``[-pi/2, pi/2)``).
Success: block centre within 0.01 m of the target and yaw error within 0.1 rad (terminates the episode).
Reward = score = overlap fraction ``area(block footprint & target footprint) / area(footprint)`` in [0, 1].
Randomization at reset: block centre uniform in ``[-0.17, 0.17]^2`` at least 0.08 m from the target,
yaw uniform in ``[-pi/2, pi/2)``; pusher uniform in ``[-0.25, 0.25]^2`` at least 0.02 m clear of the block.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from .geometry import box_polygon, convex_overlap_area, distance_to_polygon, to_world, wrap_angle
from .mujoco_base import MujocoTaskEnv

TABLE_HALF = 0.3
BLOCK_HALF = (0.06, 0.03)
PUSHER_RADIUS = 0.015
TARGET_POSE = np.array([0.0, 0.0, 0.0])
BLOCK_RANGE = 0.17  # block centre drawn from [-BLOCK_RANGE, BLOCK_RANGE]^2
BLOCK_MIN_OFFSET = 0.08  # minimum initial distance between block centre and target
PUSHER_RANGE = 0.25
POS_TOL = 0.01
YAW_TOL = 0.1


def block_footprint(pose: np.ndarray) -> np.ndarray:
    """Counter-clockwise world corners (4, 2) of the block at ``pose = (x, y, yaw)``."""
    return to_world(box_polygon(*BLOCK_HALF), pose)


def pose_errors(pose: np.ndarray, target: np.ndarray = TARGET_POSE) -> tuple[float, float]:
    """(position error in m, yaw error in rad modulo pi) of a block pose against the target."""
    return float(np.linalg.norm(pose[:2] - target[:2])), float(wrap_angle(pose[2] - target[2], np.pi))


class PushBlockEnv(MujocoTaskEnv):
    """See the module docstring for spaces, reward, success and randomization."""

    xml_name = "push_block.xml"
    frame_skip = 10
    action_high = TABLE_HALF
    state_high = (TABLE_HALF, TABLE_HALF, TABLE_HALF, TABLE_HALF, 1.0, 1.0)

    def _setup(self) -> None:
        self.target_pose = TARGET_POSE.copy()
        self._target_area = BLOCK_HALF[0] * BLOCK_HALF[1] * 4
        self._target_poly = block_footprint(self.target_pose)
        mocap = self.model.body("target").mocapid[0]
        self.data.mocap_pos[mocap, :2] = self.target_pose[:2]
        self.data.mocap_quat[mocap] = [np.cos(self.target_pose[2] / 2), 0, 0, np.sin(self.target_pose[2] / 2)]

    @property
    def block_pose(self) -> np.ndarray:
        """Block ``(x, y, yaw)``, yaw unwrapped as integrated by the hinge."""
        return self.data.qpos[:3].copy()

    @property
    def pusher_pos(self) -> np.ndarray:
        return self.data.qpos[3:5].copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Options (optional): ``block_pose`` (x, y, yaw) and/or ``pusher_pos`` (x, y) override the draw."""
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        while True:
            xy = rng.uniform(-BLOCK_RANGE, BLOCK_RANGE, size=2)
            if np.linalg.norm(xy - self.target_pose[:2]) >= BLOCK_MIN_OFFSET:
                break
        block = np.array([xy[0], xy[1], rng.uniform(-np.pi / 2, np.pi / 2)])
        if options.get("block_pose") is not None:
            block = np.asarray(options["block_pose"], dtype=float).reshape(3)
        poly = block_footprint(block)
        while True:
            pusher = rng.uniform(-PUSHER_RANGE, PUSHER_RANGE, size=2)
            if distance_to_polygon(pusher, poly) >= PUSHER_RADIUS + 0.02:
                break
        if options.get("pusher_pos") is not None:
            pusher = np.asarray(options["pusher_pos"], dtype=float).reshape(2)
        self.data.qpos[:] = np.concatenate([block, pusher])
        self.data.qvel[:] = 0.0
        self.data.ctrl[:] = pusher
        mujoco.mj_forward(self.model, self.data)
        return self._observe(self._obs()), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -TABLE_HALF, TABLE_HALF)
        self._simulate(action)
        info = self._info()
        return self._observe(self._obs()), info["score"], info["success"], False, info

    def _obs(self) -> np.ndarray:
        q = self.data.qpos
        return np.array([q[3], q[4], q[0], q[1], np.cos(q[2]), np.sin(q[2])], dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        pose = self.block_pose
        pos_err, yaw_err = pose_errors(pose, self.target_pose)
        overlap = convex_overlap_area(block_footprint(pose), self._target_poly) / self._target_area
        success = pos_err <= POS_TOL and abs(yaw_err) <= YAW_TOL
        return {
            "success": bool(success),
            "score": float(np.clip(overlap, 0.0, 1.0)),
            "position_error": pos_err,
            "yaw_error": yaw_err,
        }
