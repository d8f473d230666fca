"""Closed-loop pushing experts for ``immix/PushBlock-v0`` and ``immix/PushT-v0``.

Both experts run the same planner over a copy of the simulator:

1. **Candidates.** Points spread along every free outer edge of the block (its convex parts, in the block
   frame), each pushing along the edge's inward normal tilted at random by up to 0.2 rad. A candidate's
   pre-contact point is the contact backed off by the pusher radius plus a small gap; candidates whose
   pre-contact disc would touch the block or leave the table are dropped. "Keep pushing along the current
   line" is one more candidate right after a push.
2. **Evaluation by simulation.** For each candidate the current state is copied into a scratch simulator,
   the pusher is put at rest at the pre-contact point (or, to keep pushing, left in its real state) and
   driven straight along the push direction for up to ``horizon`` control steps; the pose cost is recorded
   after every step.
3. **Choice.** The candidate and push length with the largest cost decrease per control step wins; the
   steps count the travel there (a path around the block's inflated convex hull) and a settling allowance,
   and continuing the current push gets a bonus. After two plans without progress one of the better
   candidates is taken at random.
4. **Execution.** The pusher follows the travel path (a carrot moving at ``travel_speed``, slowing at the
   end), starts pushing once it is at the pre-contact point and nearly at rest (the state the simulation
   assumed), pushes for the chosen number of steps, and the planner runs again from the new real state
   (closed loop). If the block moves while the pusher travels, it replans at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .geometry import (
    convex_hull,
    distance_to_polygon,
    ensure_ccw,
    inflate_convex,
    nearest_on_polygon,
    path_around_convex,
    point_in_convex,
    ray_exit_distance,
    rotation,
    segment_polygon_distance,
    to_world,
    wrap_angle,
)


@dataclass
class PushGeometry:
    """Task constants the planner needs (lengths in the task's units)."""

    parts: list[np.ndarray]  # convex counter-clockwise polygons of the block, body frame
    pusher_radius: float
    bounds: tuple[float, float]  # pusher positions allowed in [lo, hi]^2
    gap: float  # pre-contact clearance between pusher and block
    clearance: float  # extra margin kept around the block while travelling
    edge_spacing: float  # distance between candidate contact points along an edge
    push_step: tuple[float, float]  # (min, max) push advance per control step
    travel_speed: float  # carrot speed while travelling, per control step
    reach_tol: float  # pushing starts once the pusher is this close to the pre-contact point ...
    settle_speed: float  # ... and slower than this (units per second), as the simulated pushes assume;
    # both are relaxed for coarse pushes (to half a push step, and a push step per control step)
    replan_shift: tuple[float, float] = (1.0, 0.01)  # block shift (length, rad) that cancels a travel
    control_dt: float = 0.1  # seconds per control step
    new_push_overhead: float = 2.0  # control steps charged for starting a new push (settling at the contact)
    keep_bonus: float = 1.25  # rate multiplier that favours continuing the current push


@dataclass
class _Candidate:
    contact: np.ndarray  # body frame
    direction: np.ndarray  # body frame, unit, points into the block


@dataclass
class _Option:
    rate: float  # predicted cost decrease per control step
    path: np.ndarray  # travel waypoints (N, 2), world
    origin: np.ndarray  # push targets are origin + (offset + step * k) * direction, k = 1..steps
    direction: np.ndarray  # world, unit
    steps: int
    offset: float
    keep: bool  # continues the current push (no travel, no settling)
    predicted_cost: float


class _PushPlanner:
    """Shared planner; subclasses provide the simulator access (see the module docstring)."""

    name = "push_planner"

    def __init__(
        self,
        geometry: PushGeometry,
        seed: int = 0,
        horizon: int = 6,
        min_push: int = 2,
        noise: float = 0.0,
        jitter: bool = True,
    ) -> None:
        if not 1 <= min_push <= horizon:
            raise ValueError(f"min_push={min_push} and horizon={horizon} need 1 <= min_push <= horizon")
        if noise < 0:
            raise ValueError(f"noise={noise} must be >= 0")
        self.geo = geometry
        self.rng = np.random.default_rng(seed)
        self.horizon, self.min_push, self.noise, self.jitter = horizon, min_push, noise, jitter
        self.hull = ensure_ccw(convex_hull(np.concatenate(geometry.parts)))
        self.travel_hull = inflate_convex(self.hull, geometry.pusher_radius + geometry.clearance)
        self._edges = self._outer_edges()
        self.plans = 0
        self.reset(None)

    # --- to be provided by subclasses -------------------------------------------------------------
    def read(self, env: gym.Env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pusher position (2,), pusher velocity (2,), block pose (3,)) of the real environment."""
        raise NotImplementedError

    def cost(self, pose: np.ndarray) -> float:
        """Distance of a block pose to the target pose in tolerance units (about 1 at the success border)."""
        raise NotImplementedError

    def simulate(self, env: gym.Env, pusher: np.ndarray, pusher_vel: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Block poses (K, 3) after each of the K control steps tracking ``targets`` (K, 2), starting from the
        real state with the pusher moved to ``pusher`` with velocity ``pusher_vel``."""
        raise NotImplementedError

    # --- planner ----------------------------------------------------------------------------------
    def _outer_edges(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Edges (a, b) of the parts whose outside is free (not covered by another part), body frame."""
        edges = []
        for i, poly in enumerate(self.geo.parts):
            n = len(poly)
            for j in range(n):
                a, b = poly[j], poly[(j + 1) % n]
                e = b - a
                length = float(np.linalg.norm(e))
                outward = np.array([e[1], -e[0]]) / length
                # split the edge where another part covers it; keep the free pieces
                ts = np.linspace(0, 1, max(int(length / (self.geo.edge_spacing / 4)), 2) + 1)
                probe = a + ts[:, None] * e + outward * 1e-3 * length
                free = [not any(point_in_convex(p, q) for k, q in enumerate(self.geo.parts) if k != i) for p in probe]
                begin = None
                for idx, (t, f) in enumerate(zip(ts, free)):
                    if f and begin is None:
                        begin = t
                    if begin is not None and (not f or idx == len(ts) - 1):
                        end = t if f else ts[idx - 1]
                        if end - begin > 1e-6:
                            edges.append((a + begin * e, a + end * e))
                        begin = None
        return edges

    def _candidates(self) -> list[_Candidate]:
        r, gap = self.geo.pusher_radius, self.geo.gap
        out = []
        for a, b in self._edges:
            e = b - a
            length = float(np.linalg.norm(e))
            inward = np.array([-e[1], e[0]]) / length
            n_pts = max(int(round(length / self.geo.edge_spacing)), 1)
            if self.jitter:
                offsets = (np.arange(n_pts) + 0.5 + self.rng.uniform(-0.35, 0.35, size=n_pts)) / n_pts
                tilts = [[float(self.rng.uniform(-0.2, 0.2))] for _ in offsets]
            else:  # a fixed grid: the same state always gives the same candidates
                offsets = (np.arange(n_pts) + 0.5) / n_pts
                tilts = [[-0.2, 0.0, 0.2]] * n_pts
            for t, angles in zip(offsets, tilts):
                contact = a + t * e
                for angle in angles:
                    direction = rotation(angle) @ inward
                    pre = contact - direction * (r + gap)
                    if all(distance_to_polygon(pre, poly) >= r + 0.5 * gap for poly in self.geo.parts):
                        out.append(_Candidate(contact, direction))
        return out

    def _travel_path(self, start: np.ndarray, pose: np.ndarray, pre: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Waypoints (N, 2) from ``start`` to the pre-contact ``pre`` (world) that keep off the block."""
        lo, hi = self.geo.bounds
        parts = [to_world(p, pose) for p in self.geo.parts]
        clear = self.geo.pusher_radius + 0.25 * self.geo.gap
        start_d = min(distance_to_polygon(start, p) for p in parts)
        seg_d = min(segment_polygon_distance(start, pre, p) for p in parts)
        if seg_d >= clear:
            return np.clip(np.array([start, pre]), lo, hi)
        if start_d < clear and seg_d >= start_d - 1e-9:  # backing off from a contact
            probe = start + 0.05 * (pre - start)
            if min(distance_to_polygon(probe, p) for p in parts) > start_d:
                return np.clip(np.array([start, pre]), lo, hi)
        hull = to_world(self.travel_hull, pose)
        pts = [start]
        if point_in_convex(start, hull):  # leave the inflated hull first, along the contact normal
            near = min((nearest_on_polygon(start, p) for p in parts), key=lambda q: float(np.linalg.norm(start - q)))
            away = start - near
            if np.linalg.norm(away) < 1e-9:
                away = start - to_world(self.hull.mean(axis=0, keepdims=True), pose)[0]
            away = away / max(float(np.linalg.norm(away)), 1e-9)
            pts.append(start + away * (ray_exit_distance(start, away, hull) + 1e-3 * self.geo.pusher_radius))
        # the approach point: the pre-contact backed off along the push direction out of the hull
        back = ray_exit_distance(pre, -direction, hull)
        approach = pre - direction * (back + 1e-3 * self.geo.pusher_radius)
        pts.extend(path_around_convex(pts[-1], approach, hull))
        pts.append(pre)
        return np.clip(np.array(pts), lo, hi)

    def _plan(self, env: gym.Env) -> None:
        self.plans += 1
        pusher, pusher_vel, pose = self.read(env)
        cost0 = self.cost(pose)
        self._stalls = self._stalls + 1 if cost0 >= self._last_cost - 1e-3 else 0
        self._last_cost = cost0
        lo_step, hi_step = self.geo.push_step
        step = float(np.clip(cost0 * lo_step, lo_step, hi_step))
        lo, hi = self.geo.bounds
        ks = np.arange(1, self.horizon + 1)
        options: list[_Option] = []
        if self._mode == "push_done":  # keep pushing along the current line, from the real pusher state
            targets = self._last_target + (step * ks)[:, None] * self._push_dir
            poses = self.simulate(env, pusher, pusher_vel, np.clip(targets, lo, hi))
            rate = (cost0 - np.array([self.cost(p) for p in poses])) / (ks + 1.0)
            k = int(np.argmax(rate))
            keep = float(rate[k]) * (self.geo.keep_bonus if rate[k] > 0 else 1.0)
            predicted = float(self.cost(poses[k]))
            options.append(
                _Option(keep, np.array([pusher]), self._last_target, self._push_dir, int(ks[k]), 0.0, True, predicted)
            )
        for cand in self._candidates():
            d_world = rotation(pose[2]) @ cand.direction
            pre = to_world(cand.contact[None], pose)[0] - d_world * (self.geo.pusher_radius + self.geo.gap)
            if np.any(pre < lo) or np.any(pre > hi):
                continue
            path = self._travel_path(pusher, pose, pre, d_world)
            travel_steps = float(np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1))) / self.geo.travel_speed
            targets = pre + (self.geo.gap + step * ks)[:, None] * d_world
            poses = self.simulate(env, pre, np.zeros(2), np.clip(targets, lo, hi))
            rate = (cost0 - np.array([self.cost(p) for p in poses])) / (
                travel_steps + ks + 1.0 + self.geo.new_push_overhead
            )
            rate[: self.min_push - 1] = -np.inf
            k = int(np.argmax(rate))
            predicted = float(self.cost(poses[k]))
            options.append(_Option(float(rate[k]), path, pre, d_world, int(ks[k]), self.geo.gap, False, predicted))
        if not options:  # nowhere to push from: wander a little and try again
            self._start_travel(np.array([pusher, pusher + self.rng.normal(size=2) * self.geo.travel_speed]), 0)
            return
        options.sort(key=lambda o: -o.rate)
        choice = options[0]
        if self._stalls >= 2:  # no progress lately: take one of the better options at random
            choice = options[int(self.rng.integers(min(len(options), max(3, len(options) // 4))))]
            self._stalls = 0
        self.predicted_cost = choice.predicted_cost
        self._push_from, self._push_dir, self._push_offset = choice.origin, choice.direction, choice.offset
        self._keep = choice.keep
        self._step_size, self._plan_pose = step, pose
        self._start_travel(choice.path, choice.steps)

    def _start_travel(self, path: np.ndarray, push_steps: int) -> None:
        self._path = path if len(path) > 1 else np.concatenate([path, path])
        self._cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self._path, axis=0), axis=1))])
        self._s = 0.0
        self._travel_steps = 0
        self._push_steps = push_steps
        self._mode = "travel"

    def _carrot(self) -> np.ndarray:
        s = min(self._s, float(self._cum[-1]))
        i = int(np.clip(np.searchsorted(self._cum, s, side="right") - 1, 0, len(self._path) - 2))
        seg = self._cum[i + 1] - self._cum[i]
        t = 0.0 if seg <= 0 else (s - self._cum[i]) / seg
        return self._path[i] + t * (self._path[i + 1] - self._path[i])

    def _moved(self, pose: np.ndarray) -> bool:
        shift, turn = self.geo.replan_shift
        return bool(
            np.linalg.norm(pose[:2] - self._plan_pose[:2]) > shift
            or abs(float(wrap_angle(pose[2] - self._plan_pose[2]))) > turn
        )

    # --- expert API -------------------------------------------------------------------------------
    def reset(self, env: gym.Env | None) -> None:
        self._mode = "plan"
        self._stalls = 0
        self._last_cost = np.inf
        self._path = np.zeros((2, 2))
        self._cum = np.zeros(2)
        self._s = 0.0
        self._travel_steps = 0
        self._push_from = np.zeros(2)
        self._push_dir = np.zeros(2)
        self._push_offset = 0.0
        self._keep = False
        self._push_steps = 0
        self._push_k = 0
        self._step_size = self.geo.push_step[1]
        self._plan_pose = np.zeros(3)
        self._last_target = np.zeros(2)
        self.plans = 0  # number of plans this episode (diagnostics)
        self.predicted_cost = np.inf  # cost the last plan expects after its push (diagnostics)

    def act(self, env: gym.Env, obs: np.ndarray) -> np.ndarray:
        pusher, pusher_vel, pose = self.read(env)
        if self._mode == "travel" and self._moved(pose):
            self._mode = "plan"
        if self._mode in ("plan", "push_done"):
            self._plan(env)
        target = pusher
        if self._mode == "travel":
            remaining = float(self._cum[-1]) - self._s
            self._s += min(self.geo.travel_speed, max(0.5 * remaining, 0.25 * self.geo.travel_speed))
            self._travel_steps += 1
            target = self._carrot()
            if self._s >= self._cum[-1]:
                tol = max(self.geo.reach_tol, 0.5 * self._step_size)
                settle = max(self.geo.settle_speed, self._step_size / self.geo.control_dt)
                reached = self._keep or (
                    np.linalg.norm(pusher - self._path[-1]) < tol and np.linalg.norm(pusher_vel) < settle
                )
                if self._push_steps == 0 or self._travel_steps > self._cum[-1] / self.geo.travel_speed + 15:
                    self._mode = "plan"
                elif reached:
                    self._mode, self._push_k = "push", 0
        if self._mode == "push":
            self._push_k += 1
            target = self._push_from + (self._push_offset + self._step_size * self._push_k) * self._push_dir
            if self._push_k >= self._push_steps:
                self._mode = "push_done"
        self._last_target = target
        if self.noise > 0:
            target = target + self.noise * self.rng.standard_normal(2)
        lo, hi = self.geo.bounds
        return np.clip(target, lo, hi).astype(np.float32)


class PushBlockExpert(_PushPlanner):
    """Planner expert for ``immix/PushBlock-v0`` (simulates pushes in a scratch ``MjData``)."""

    name = "push_block_planner"

    def __init__(
        self, seed: int = 0, horizon: int = 6, min_push: int = 2, noise: float = 0.0, jitter: bool = True
    ) -> None:
        from .geometry import box_polygon
        from .push_block import BLOCK_HALF, PUSHER_RADIUS, TABLE_HALF

        geometry = PushGeometry(
            parts=[box_polygon(*BLOCK_HALF)],
            pusher_radius=PUSHER_RADIUS,
            bounds=(-TABLE_HALF + PUSHER_RADIUS + 0.003, TABLE_HALF - PUSHER_RADIUS - 0.003),
            gap=0.008,
            clearance=0.01,
            edge_spacing=0.02,
            push_step=(0.003, 0.02),
            travel_speed=0.03,
            reach_tol=0.004,
            settle_speed=0.03,
            replan_shift=(0.002, 0.02),
        )
        super().__init__(geometry, seed=seed, horizon=horizon, min_push=min_push, noise=noise, jitter=jitter)
        self._scratch: Any = None

    def read(self, env: gym.Env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = env.unwrapped
        return u.pusher_pos, u.data.qvel[3:5].copy(), u.block_pose

    def cost(self, pose: np.ndarray) -> float:
        from .push_block import POS_TOL, TARGET_POSE, YAW_TOL, pose_errors

        pos_err, yaw_err = pose_errors(pose, TARGET_POSE)
        return float(np.hypot(pos_err / POS_TOL, yaw_err / YAW_TOL))

    def simulate(self, env: gym.Env, pusher: np.ndarray, pusher_vel: np.ndarray, targets: np.ndarray) -> np.ndarray:
        import mujoco

        u = env.unwrapped
        if self._scratch is None or self._scratch[0] is not u.model:
            self._scratch = (u.model, mujoco.MjData(u.model))
        model, data = self._scratch
        data.qpos[:3] = u.data.qpos[:3]
        data.qpos[3:5] = pusher
        data.qvel[:3] = u.data.qvel[:3]
        data.qvel[3:5] = pusher_vel
        out = np.empty((len(targets), 3))
        for k, target in enumerate(targets):
            data.ctrl[:] = target
            mujoco.mj_step(model, data, nstep=u.frame_skip)
            out[k] = data.qpos[:3]
        return out


class PushTExpert(_PushPlanner):
    """Planner expert for ``immix/PushT-v0`` (simulates pushes in a second gym-pusht instance).

    Cost (px): ``sqrt(|c - c*|^2 + (R theta)^2)`` with c the centroid of the T's 8 corners, theta the angle
    error wrapped to [-pi, pi) and R the corners' root-mean-square radius about c (about 51 px). Near the goal
    it equals the corners' RMS distance to the goal's; far from it it stays linear in the angle (the RMS
    distance is flat at a half-turn error, which stalls a greedy planner). Coverage > 0.95 needs about 1 px.
    """

    name = "pusht_planner"

    def __init__(
        self, seed: int = 0, horizon: int = 6, min_push: int = 2, noise: float = 0.0, jitter: bool = True
    ) -> None:
        from .pusht import _make_underlying

        self._sim = _make_underlying(obs_type="state")
        self._sim.reset(seed=0)
        parts = [
            ensure_ccw(np.array([list(v) for v in shape.get_vertices()], dtype=float))
            for shape in self._sim._block_shapes
        ]
        corners = np.concatenate(parts)
        self._centroid = corners.mean(axis=0)
        self._radius = float(np.sqrt(np.mean(np.sum((corners - self._centroid) ** 2, axis=1))))
        self._goal_pose = np.asarray(self._sim.goal_pose, dtype=float)
        self._goal_centroid = to_world(self._centroid[None], self._goal_pose)[0]
        geometry = PushGeometry(
            parts=parts,
            pusher_radius=15.0,
            bounds=(0.0, 512.0),
            gap=1.5,
            clearance=6.0,
            edge_spacing=12.0,
            push_step=(0.5, 8.0),
            travel_speed=18.0,
            reach_tol=1.0,
            settle_speed=20.0,
        )
        super().__init__(geometry, seed=seed, horizon=horizon, min_push=min_push, noise=noise, jitter=jitter)

    def read(self, env: gym.Env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = env.unwrapped
        return u.agent_pos, np.array(u.pusht.agent.velocity), u.block_pose

    def cost(self, pose: np.ndarray) -> float:
        d = to_world(self._centroid[None], pose)[0] - self._goal_centroid
        angle = float(wrap_angle(pose[2] - self._goal_pose[2]))
        return float(np.sqrt(d @ d + (self._radius * angle) ** 2))

    def simulate(self, env: gym.Env, pusher: np.ndarray, pusher_vel: np.ndarray, targets: np.ndarray) -> np.ndarray:
        real = env.unwrapped.pusht
        sim = self._sim
        sim.block.position = tuple(real.block.position)
        sim.block.angle = real.block.angle
        sim.block.velocity = (0.0, 0.0)
        sim.block.angular_velocity = 0.0
        agent = sim.agent
        agent.position = (float(pusher[0]), float(pusher[1]))
        vx, vy = float(pusher_vel[0]), float(pusher_vel[1])
        agent.velocity = (vx, vy)
        dt, kp, kv = sim.dt, sim.k_p, sim.k_v
        n_sub = int(1 / (sim.dt * sim.control_hz))
        out = np.empty((len(targets), 3))
        for k, (tx, ty) in enumerate(targets):
            for _ in range(n_sub):
                px, py = agent.position
                vx += (kp * (tx - px) - kv * vx) * dt
                vy += (kp * (ty - py) - kv * vy) * dt
                agent.velocity = (vx, vy)
                sim.space.step(dt)
            b = sim.block
            out[k] = (b.position[0], b.position[1], b.angle)
        return out
