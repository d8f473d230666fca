"""Scripted experts that generate demonstrations, one per task, built with :func:`make_expert`.

```python
expert = make_expert("immix/ReachAround-v0", seed=0)  # or the short name "reach_around"
obs, info = env.reset(seed=0)
expert.reset(env)                 # env as returned by gym.make (wrappers are fine)
action = expert.act(env, obs)     # float32, the action space's shape
```

An expert draws all its per-episode randomness (route choice, noise) from its own generator seeded at
construction, so a (task, expert seed, env seeds) triple reproduces a dataset exactly.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np


class Expert(Protocol):
    """What the data collector relies on."""

    name: str

    def reset(self, env: gym.Env) -> None: ...

    def act(self, env: gym.Env, obs: np.ndarray) -> np.ndarray: ...


def _polyline_lengths(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length at each vertex of a polyline (N, 2), shape (N,)."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _point_at(points: np.ndarray, cum: np.ndarray, s: float) -> np.ndarray:
    """Point at arc length ``s`` along a polyline (clamped to its ends), shape (2,)."""
    s = float(np.clip(s, 0.0, cum[-1]))
    i = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(points) - 2))
    seg = cum[i + 1] - cum[i]
    t = 0.0 if seg <= 0 else (s - cum[i]) / seg
    return points[i] + t * (points[i + 1] - points[i])


def _project(points: np.ndarray, cum: np.ndarray, p: np.ndarray) -> float:
    """Arc length of the point of a polyline nearest to ``p``."""
    best_d, best_s = np.inf, 0.0
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        ab = b - a
        denom = float(ab @ ab)
        t = 0.0 if denom <= 0 else float(np.clip((p - a) @ ab / denom, 0.0, 1.0))
        d = float(np.linalg.norm(a + t * ab - p))
        if d < best_d:
            best_d, best_s = d, cum[i] + t * np.sqrt(denom)
    return best_s


class ReachAroundExpert:
    """Goes around the left or right end of the obstacle (a fair coin per episode) along a jittered polyline.

    A "carrot" moves along the route at a per-episode speed, never more than ``lookahead`` ahead of the
    robot's projection on the route; the action is the carrot plus smooth (Ornstein-Uhlenbeck) noise that
    fades out near the goal. ``mode`` is "left" or "right" for the current episode.
    """

    name = "reach_around_waypoints"

    def __init__(self, seed: int = 0, noise: float = 0.008, lookahead: float = 0.12) -> None:
        if noise < 0 or lookahead <= 0:
            raise ValueError(f"noise={noise} must be >= 0 and lookahead={lookahead} > 0")
        self.rng = np.random.default_rng(seed)
        self.noise, self.lookahead = noise, lookahead
        self.side = 1
        self._path = np.zeros((2, 2))
        self._cum = np.zeros(2)
        self._s = 0.0
        self._speed = 0.05
        self._ou = np.zeros(2)

    @property
    def mode(self) -> str:
        return "left" if self.side < 0 else "right"

    def reset(self, env: gym.Env) -> None:
        from .reach_around import OBSTACLE_HALF

        u = env.unwrapped
        rng = self.rng
        self.side = int(rng.choice([-1, 1]))
        x = self.side * rng.uniform(OBSTACLE_HALF[0] + 0.10, OBSTACLE_HALF[0] + 0.15)
        y_low = -OBSTACLE_HALF[1] - rng.uniform(0.03, 0.08)
        y_high = OBSTACLE_HALF[1] + rng.uniform(0.03, 0.08)
        start = np.array(u.data.qpos[:2])
        self._path = np.array([start, [x, y_low], [x, y_high], u.goal])
        self._cum = _polyline_lengths(self._path)
        self._s = 0.0
        self._speed = rng.uniform(0.045, 0.065)  # m per control step
        self._ou = np.zeros(2)

    def act(self, env: gym.Env, obs: np.ndarray) -> np.ndarray:
        pos, goal = np.asarray(obs[:2], dtype=float), np.asarray(obs[4:6], dtype=float)
        self._path[-1] = goal
        self._cum = _polyline_lengths(self._path)
        self._s = min(self._s + self._speed, _project(self._path, self._cum, pos) + self.lookahead, self._cum[-1])
        target = _point_at(self._path, self._cum, self._s)
        self._ou = 0.8 * self._ou + self.noise * self.rng.standard_normal(2)
        fade = min(1.0, float(np.linalg.norm(target - goal)) / 0.15)
        action = target + fade * self._ou
        return np.clip(action, -0.5, 0.5).astype(np.float32)


class PointMazeExpert:
    """Shortest grid route (BFS; ties between equally short routes broken at random) + PD to cell centres.

    As D4RL's maze2d data: waypoints are the centres of the cells on the route, then the goal; the action is
    ``clip(kp (waypoint - pos) - kd vel, -1, 1)`` plus small Gaussian noise, and the waypoint advances once
    the point is within ``switch_radius`` of it.
    """

    name = "point_maze_bfs_pd"

    def __init__(
        self, seed: int = 0, kp: float = 10.0, kd: float = 1.0, noise: float = 0.1, switch_radius: float = 0.3
    ) -> None:
        if kp <= 0 or kd < 0 or noise < 0 or switch_radius <= 0:
            raise ValueError(
                f"kp={kp}, kd={kd}, noise={noise}, switch_radius={switch_radius}: need kp > 0, kd >= 0, "
                "noise >= 0, switch_radius > 0"
            )
        self.rng = np.random.default_rng(seed)
        self.kp, self.kd, self.noise, self.switch_radius = kp, kd, noise, switch_radius
        self.route: list[tuple[int, int]] = []
        self._waypoints = np.zeros((1, 2))
        self._i = 0

    def reset(self, env: gym.Env) -> None:
        from .point_maze import NEIGHBOURS, bfs_distances

        u = env.unwrapped
        dist = bfs_distances(u.free, u.goal_cell)
        cell = u.cell_of(np.array(u.maze_env.data.qpos[:2]))
        route = [cell]
        while cell != u.goal_cell:
            options = [
                (cell[0] + dr, cell[1] + dc)
                for dr, dc in NEIGHBOURS
                if dist[cell[0] + dr, cell[1] + dc] == dist[cell] - 1
            ]
            if not options:
                raise RuntimeError(f"no route from cell {cell} to goal cell {u.goal_cell}")
            cell = options[int(self.rng.integers(len(options)))]
            route.append(cell)
        self.route = route
        centres = [u.maze.cell_rowcol_to_xy(np.array(c)) for c in route[1:-1]]
        self._waypoints = np.array([*centres, u.goal]).reshape(-1, 2)
        self._i = 0

    def act(self, env: gym.Env, obs: np.ndarray) -> np.ndarray:
        pos, vel = np.asarray(obs[:2], dtype=float), np.asarray(obs[2:4], dtype=float)
        self._waypoints[-1] = obs[4:6]
        last = len(self._waypoints) - 1
        while self._i < last and np.linalg.norm(self._waypoints[self._i] - pos) < self.switch_radius:
            self._i += 1
        action = self.kp * (self._waypoints[self._i] - pos) - self.kd * vel
        action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def _push_block_expert(seed: int = 0, **kwargs: Any) -> Expert:
    from .push_planner import PushBlockExpert

    return PushBlockExpert(seed=seed, **kwargs)


def _pusht_expert(seed: int = 0, **kwargs: Any) -> Expert:
    from .push_planner import PushTExpert

    return PushTExpert(seed=seed, **kwargs)


class StateObsExpert:
    """An expert of a state-observation task acting in its ``pixels_state`` variant: it reads the
    ``"state"`` entry of the dict observation (the same vector the state task observes)."""

    def __init__(self, inner: Expert) -> None:
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))

    def __getattr__(self, name: str) -> Any:  # mode, route, ... of the wrapped expert
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self, env: gym.Env) -> None:
        self.inner.reset(env)

    def act(self, env: gym.Env, obs: Any) -> np.ndarray:
        return self.inner.act(env, obs["state"] if isinstance(obs, dict) else obs)


def _robosuite_lift_expert(seed: int = 0, **kwargs: Any) -> Expert:
    from .robosuite_tasks import LiftExpert

    return LiftExpert(seed=seed, **kwargs)


def _state_view(make: Any) -> Any:
    def build(seed: int = 0, **kwargs: Any) -> Expert:
        return StateObsExpert(make(seed=seed, **kwargs))

    return build


EXPERTS: dict[str, Any] = {
    "immix/ReachAround-v0": ReachAroundExpert,
    "immix/PushBlock-v0": _push_block_expert,
    "immix/PointMaze-v0": PointMazeExpert,
    "immix/PushT-v0": _pusht_expert,
    "immix/ReachAroundImage-v0": _state_view(ReachAroundExpert),
    "immix/PushBlockImage-v0": _state_view(_push_block_expert),
    "immix/PushTImage-v0": _state_view(_pusht_expert),
    "immix/RobosuiteLift-v0": _robosuite_lift_expert,
}


def make_expert(task_or_id: str, seed: int = 0, **kwargs: Any) -> Expert:
    """The scripted expert of a task (short name or ``immix/`` id); ValueError listing valid ids on a typo."""
    from . import resolve_task

    return EXPERTS[resolve_task(task_or_id)](seed=seed, **kwargs)
