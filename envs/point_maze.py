"""``immix/PointMaze-v0``: gymnasium-robotics ``PointMaze_Medium-v3`` with a flat observation.

The underlying task: a force-actuated point mass (radius 0.1) in an 8 x 8 maze of unit cells, 100 Hz control,
action ``Box(2,) float32`` in ``[-1, 1]^2`` = force command (x 100 N). Episodic (``continuing_task=False``).

Observation ``Box(6,) float32``: ``[x, y, vx, vy, goal_x, goal_y]`` = the underlying ``observation`` (4) followed
by ``desired_goal`` (2).
Start/goal: one of :data:`START_GOAL_CELLS` (row, col) pairs drawn uniformly with the env's seeded RNG; the
underlying env adds uniform noise of +-0.25 to both positions. Every pair is joined by two routes of equal
grid length around the maze's central loop, so demonstrations are bimodal.
Success: the underlying ``info["success"]`` (distance to the goal <= 0.45); the episode then terminates.
Reward = score = 1 on success, else ``clip(1 - g(p) / g(p0), 0, 1)`` with g the maze (geodesic) distance to the
goal: grid BFS steps between cells plus the straight distance to the next cell centre on a shortest route.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .mujoco_base import check_render_args

UNDERLYING_ID = "PointMaze_Medium-v3"
START_GOAL_CELLS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((1, 1), (6, 3)),
    ((6, 3), (1, 1)),
    ((1, 6), (6, 1)),
    ((6, 1), (1, 6)),
    ((5, 4), (4, 1)),
    ((4, 1), (5, 4)),
)
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def free_cells(maze_map: list[list[Any]]) -> np.ndarray:
    """Boolean grid (rows, cols): True where the maze cell is not a wall."""
    return np.array([[cell != 1 for cell in row] for row in maze_map], dtype=bool)


def bfs_distances(free: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    """Grid steps from ``source`` to every cell (4-connected through free cells); inf where unreachable."""
    dist = np.full(free.shape, np.inf)
    dist[source] = 0
    queue = deque([source])
    while queue:
        r, c = queue.popleft()
        for dr, dc in NEIGHBOURS:
            n = (r + dr, c + dc)
            if 0 <= n[0] < free.shape[0] and 0 <= n[1] < free.shape[1] and free[n] and dist[n] == np.inf:
                dist[n] = dist[r, c] + 1
                queue.append(n)
    return dist


def _make_underlying(**kwargs: Any) -> gym.Env:
    try:
        import gymnasium_robotics
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError("immix/PointMaze-v0 needs gymnasium-robotics: pip install 'diffpolicy-immix[maze]'") from err
    gym.register_envs(gymnasium_robotics)
    return gym.make(UNDERLYING_ID, **kwargs).unwrapped


class PointMazeEnv(gym.Env[np.ndarray, np.ndarray]):
    """Flat-observation, episodic, seeded-start/goal view of ``PointMaze_Medium-v3`` (see module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 100}

    def __init__(self, render_mode: str | None = None, width: int = 96, height: int = 96) -> None:
        check_render_args(render_mode, width, height, self.metadata["render_modes"])
        self.render_mode = render_mode
        kwargs: dict[str, Any] = {"continuing_task": False, "reset_target": False}
        if render_mode is not None:
            kwargs.update(render_mode=render_mode, width=width, height=height)
        self.maze_env = _make_underlying(**kwargs)
        self.maze = self.maze_env.maze
        self.free = free_cells(self.maze.maze_map)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        half = np.array([self.maze.map_width, self.maze.map_length]) * self.maze.maze_size_scaling / 2
        high = np.array([half[0], half[1], np.inf, np.inf, half[0], half[1]], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.goal_cell: tuple[int, int] = START_GOAL_CELLS[0][1]
        self.start_cell: tuple[int, int] = START_GOAL_CELLS[0][0]
        self._goal_dist = bfs_distances(self.free, self.goal_cell)
        self._downhill: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
        self._start_geodesic = 1.0
        self._last_obs: dict[str, np.ndarray] = {}

    @property
    def goal(self) -> np.ndarray:
        return self.maze_env.goal.copy()

    def cell_of(self, xy: np.ndarray) -> tuple[int, int]:
        """Maze cell (row, col) containing ``xy``, snapped to the nearest free cell if on a wall."""
        scale = self.maze.maze_size_scaling
        r = int(np.clip(math.floor((self.maze.y_map_center - float(xy[1])) / scale), 0, self.free.shape[0] - 1))
        c = int(np.clip(math.floor((float(xy[0]) + self.maze.x_map_center) / scale), 0, self.free.shape[1] - 1))
        if self.free[r, c]:
            return r, c
        rows, cols = np.nonzero(self.free)
        centres = np.stack([self.maze.cell_rowcol_to_xy(np.array([i, j])) for i, j in zip(rows, cols)])
        k = int(np.argmin(np.linalg.norm(centres - np.asarray(xy), axis=1)))
        return int(rows[k]), int(cols[k])

    def _downhill_table(self) -> dict[tuple[int, int], list[tuple[float, float, float]]]:
        """For each free cell: (x, y, steps to goal) of its neighbours one step closer to the goal cell; the
        goal cell's entry is the goal position itself."""
        goal = self.goal
        table: dict[tuple[int, int], list[tuple[float, float, float]]] = {self.goal_cell: [(goal[0], goal[1], 0.0)]}
        rows, cols = self.free.shape
        for r, c in zip(*np.nonzero(self.free)):
            cell = (int(r), int(c))
            if cell == self.goal_cell:
                continue
            entries = []
            for dr, dc in NEIGHBOURS:
                n = (cell[0] + dr, cell[1] + dc)
                if 0 <= n[0] < rows and 0 <= n[1] < cols and self._goal_dist[n] < self._goal_dist[cell]:
                    x, y = goal if n == self.goal_cell else self.maze.cell_rowcol_to_xy(np.array(n))
                    entries.append((float(x), float(y), float(self._goal_dist[n])))
            table[cell] = entries
        return table

    def geodesic_distance(self, xy: np.ndarray) -> float:
        """Approximate maze distance from ``xy`` to the goal (see module docstring)."""
        entries = self._downhill.get(self.cell_of(xy), [])
        x, y = float(xy[0]), float(xy[1])
        if not entries:  # unreachable cell (cannot happen in the medium maze)
            return float(np.hypot(*(np.asarray(xy) - self.goal))) + float(self.free.size)
        return min(math.hypot(x - ex, y - ey) + d for ex, ey, d in entries)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Options (optional): ``start_cell`` and ``goal_cell`` as (row, col) to override the drawn pair."""
        super().reset(seed=seed)
        options = options or {}
        start, goal = START_GOAL_CELLS[int(self.np_random.integers(len(START_GOAL_CELLS)))]
        start = tuple(options.get("start_cell") or start)
        goal = tuple(options.get("goal_cell") or goal)
        for field, cell in (("start_cell", start), ("goal_cell", goal)):
            if len(cell) != 2 or not (0 <= cell[0] < self.free.shape[0] and 0 <= cell[1] < self.free.shape[1]):
                raise ValueError(f"options[{field!r}]={cell!r} is outside the {self.free.shape} maze")
            if not self.free[cell]:
                raise ValueError(f"options[{field!r}]={cell!r} is a wall cell")
        self.start_cell, self.goal_cell = (int(start[0]), int(start[1])), (int(goal[0]), int(goal[1]))
        inner_seed = None if seed is None else int(self.np_random.integers(2**31))
        obs, _ = self.maze_env.reset(
            seed=inner_seed, options={"goal_cell": np.array(self.goal_cell), "reset_cell": np.array(self.start_cell)}
        )
        self._goal_dist = bfs_distances(self.free, self.goal_cell)
        self._downhill = self._downhill_table()
        self._start_geodesic = max(self.geodesic_distance(obs["achieved_goal"]), 1e-6)
        self._last_obs = obs
        return self._flat(obs), self._info(obs, bool(np.linalg.norm(obs["achieved_goal"] - self.goal) <= 0.45))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        obs, _, _, _, inner_info = self.maze_env.step(action)
        self._last_obs = obs
        info = self._info(obs, bool(inner_info["success"]))
        return self._flat(obs), info["score"], info["success"], False, info

    def render(self) -> np.ndarray | None:
        """RGB frame from the underlying env, ``ndarray uint8, shape (height, width, 3)``."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to gym.make")
            return None
        renderer = self.maze_env.point_env.mujoco_renderer
        first = renderer.viewer is None
        frame = self.maze_env.render()
        if first and renderer.viewer is not None and hasattr(renderer.viewer, "scn"):
            import mujoco  # shadows and reflections off: software GL is much faster without them

            renderer.viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            frame = self.maze_env.render()
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        self.maze_env.close()
        super().close()

    @staticmethod
    def _flat(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([obs["observation"], obs["desired_goal"]]).astype(np.float32)

    def _info(self, obs: dict[str, np.ndarray], success: bool) -> dict[str, Any]:
        geo = self.geodesic_distance(obs["achieved_goal"])
        score = 1.0 if success else float(np.clip(1.0 - geo / self._start_geodesic, 0.0, 1.0))
        return {
            "success": success,
            "score": score,
            "geodesic_distance": geo,
            "start_cell": np.array(self.start_cell),
            "goal_cell": np.array(self.goal_cell),
        }
