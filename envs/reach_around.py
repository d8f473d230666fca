"""``immix/ReachAround-v0``: a planar point robot reaches a goal behind a central obstacle.

Table ``[-0.5, 0.5]^2`` m, obstacle box ``|x| <= 0.15, |y| <= 0.08`` in the middle, robot = cylinder of
radius 0.03 m on two slide joints. The start lies below the obstacle and the goal above it, so every
successful path goes around the left or the right end of the obstacle: demonstrations are bimodal.

Observation ``Box(6,) float32``: ``[x, y, vx, vy, goal_x, goal_y]`` (m, m/s); with
``obs_mode="pixels_state"`` (``immix/ReachAroundImage-v0``) a dict ``{"img": uint8 (96, 96, 3), "state": (6,)}``.
Action ``Box(2,) float32`` in ``[-0.5, 0.5]^2`` m: the absolute target position of the robot, tracked by a
PD controller (``force = 200 (target - q) - 28 dq/dt``, mass 1 kg); 10 Hz control, 10 physics steps of 0.01 s.
Success: robot centre within 0.04 m of the goal (the episode then terminates).
Reward = score = 1 on success, else ``clip(1 - |p - goal| / |p0 - goal|, 0, 1)`` (p0 = start position).
``info["route"]``: -1 once the robot has passed the obstacle on its left (x < 0), +1 on its right, 0 before.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from .mujoco_base import MujocoTaskEnv

OBSTACLE_HALF = (0.15, 0.08)
START_CENTER = (0.0, -0.35)
GOAL_CENTER = (0.0, 0.35)
START_NOISE = (0.05, 0.03)  # uniform +- half-ranges (x, y) of the start position, m
GOAL_NOISE = (0.05, 0.03)
SUCCESS_RADIUS = 0.04
TABLE_HALF = 0.5


class ReachAroundEnv(MujocoTaskEnv):
    """See the module docstring for spaces, reward and success."""

    xml_name = "reach_around.xml"
    frame_skip = 10
    action_high = TABLE_HALF
    state_high = (TABLE_HALF, TABLE_HALF, np.inf, np.inf, TABLE_HALF, TABLE_HALF)

    def _setup(self) -> None:
        self._goal_site = self.model.site("goal").id
        self.goal = np.array(GOAL_CENTER)
        self.start = np.array(START_CENTER)
        self._start_distance = 1.0
        self._route = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Options (optional): ``start`` and/or ``goal`` as (x, y) to override the random draw."""
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        start = np.array(START_CENTER) + rng.uniform(-1, 1, size=2) * np.array(START_NOISE)
        goal = np.array(GOAL_CENTER) + rng.uniform(-1, 1, size=2) * np.array(GOAL_NOISE)
        if options.get("start") is not None:
            start = np.asarray(options["start"], dtype=float).reshape(2)
        if options.get("goal") is not None:
            goal = np.asarray(options["goal"], dtype=float).reshape(2)
        self.start, self.goal = start, goal
        self._start_distance = max(float(np.linalg.norm(goal - start)), 1e-6)
        self._route = 0
        self.data.qpos[:] = start
        self.data.qvel[:] = 0.0
        self.data.ctrl[:] = start
        self.model.site_pos[self._goal_site, :2] = goal
        mujoco.mj_forward(self.model, self.data)
        return self._observe(self._obs()), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -TABLE_HALF, TABLE_HALF)
        self._simulate(action)
        info = self._info()
        return self._observe(self._obs()), info["score"], info["success"], False, info

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel, self.goal]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        pos = self.data.qpos[:2]
        if self._route == 0 and abs(pos[1]) <= OBSTACLE_HALF[1] and abs(pos[0]) > OBSTACLE_HALF[0]:
            self._route = 1 if pos[0] > 0 else -1
        dist = float(np.linalg.norm(pos - self.goal))
        success = dist <= SUCCESS_RADIUS
        score = 1.0 if success else float(np.clip(1.0 - dist / self._start_distance, 0.0, 1.0))
        return {"success": bool(success), "score": score, "distance": dist, "route": self._route}
