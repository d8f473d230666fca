"""``immix/RobosuiteLift-v0``: robosuite's Lift (Panda arm, OSC_POSE controller) with robomimic's low-dim keys.

robosuite is imported when the env is made, never when this module is imported, so the toolkit works
without it. robosuite 1.5.2 runs only with mujoco 3.3.x, so it lives in its own environment made by
``scripts/setup_robosuite.sh``; making the env elsewhere raises a one-line ``ImportError`` naming it.

The underlying task: a Panda with its parallel gripper on a 0.8 x 0.8 m table lifts a red cube (half size
0.020-0.022 m, drawn once per env; placed uniformly in [-0.03, 0.03]^2 m around the table centre with a
uniformly random yaw) above the table. 20 Hz control (as robomimic's datasets), 500 Hz physics.

- **Observation** ``Dict`` of ``float32`` Boxes, robomimic's low-dim keys (:data:`OBS_DIMS`)::

      object               (10,)  robosuite's "object-state": cube_pos (3), cube_quat (4, xyzw),
                                  gripper_to_cube_pos (3) = cube_pos - eef_pos, m
      robot0_eef_pos       (3,)   end-effector (grip site) position, m, world frame
      robot0_eef_quat      (4,)   end-effector orientation, xyzw
      robot0_gripper_qpos  (2,)   finger joints, m (about +-0.04 open, 0 closed)

  gymnasium's ``Dict`` keeps its keys sorted, which is also this order, so ``FlattenObservation`` gives
  the same vector as concatenating the keys in this order (what a task's ``obs_keys`` list does).
- **Action** ``Box(7,)`` in [-1, 1]: OSC_POSE delta in the robot base frame (position x 0.05 m, axis-angle
  rotation x 0.5 rad per control step), then the gripper (-1 open, +1 close).
- **Success**: robosuite's own ``_check_success()`` (cube more than 0.04 m above the table top); the
  episode then terminates.
- **Score / reward**: 1 on success, else robosuite's shaped reward scaled to [0, 1]
  (``(1 - tanh(10 d) + 0.25 grasping) / 2.25``, d = gripper-cube distance), below 0.56.
- **Seeds**: ``reset(seed=s)`` re-seeds robosuite's generator (cube pose, the arm's initial joint noise)
  from the env's own, so the same seed gives the same start.
- **Rendering**: ``render_mode="rgb_array"`` renders robosuite's offscreen camera ``agentview`` at
  ``width`` x ``height`` (shadows and reflections off).
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .mujoco_base import check_render_args

SETUP_SCRIPT = "scripts/setup_robosuite.sh"
ROBOSUITE_VERSION = "1.5.2"
MUJOCO_SERIES = "3.3."
#: observation key -> dims; robosuite's name of each key in :data:`SOURCE_KEYS`
OBS_DIMS: dict[str, int] = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
SOURCE_KEYS: dict[str, str] = {
    "object": "object-state",
    "robot0_eef_pos": "robot0_eef_pos",
    "robot0_eef_quat": "robot0_eef_quat",
    "robot0_gripper_qpos": "robot0_gripper_qpos",
}
CAMERA = "agentview"
CONTROL_FREQ = 20


def import_robosuite() -> Any:
    """robosuite, imported quietly; a one-line ImportError naming the set-up script when it cannot run here."""
    hint = (
        f"robosuite Lift needs robosuite {ROBOSUITE_VERSION} with mujoco 3.3.x, in their own environment: "
        f"bash {SETUP_SCRIPT} && source .venv-robosuite/bin/activate"
    )
    try:
        import mujoco
    except ImportError as err:
        raise ImportError(f"{hint} (mujoco is not installed)") from err
    if not mujoco.__version__.startswith(MUJOCO_SERIES):
        raise ImportError(f"{hint} (this environment has mujoco {mujoco.__version__})")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # robosuite warns at import about optional robots and a private macro file
    try:
        import robosuite
    except ImportError as err:
        raise ImportError(f"{hint} ({err})") from err
    finally:
        logging.disable(previous)
    logging.getLogger("robosuite_logs").setLevel(logging.WARNING)  # no INFO line per controller load
    return robosuite


class RobosuiteLiftEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """robosuite's Lift as a gymnasium env (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    observation_space = spaces.Dict(
        {k: spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float32) for k, n in OBS_DIMS.items()}
    )
    action_space = spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)

    def __init__(self, render_mode: str | None = None, width: int = 96, height: int = 96, model_seed: int = 0) -> None:
        """``model_seed`` fixes robosuite's draw of the cube's size at construction (the same in every env)."""
        check_render_args(render_mode, width, height, self.metadata["render_modes"])
        self.render_mode, self.width, self.height = render_mode, width, height
        suite = import_robosuite()
        from robosuite.controllers import load_composite_controller_config

        self.sim_env = suite.make(
            "Lift",
            robots="Panda",
            controller_configs=load_composite_controller_config(robot="Panda"),  # BASIC: OSC_POSE arm + gripper
            has_renderer=False,
            has_offscreen_renderer=render_mode is not None,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=True,
            reward_scale=1.0,
            control_freq=CONTROL_FREQ,
            horizon=10**9,  # episode length is gymnasium's TimeLimit
            ignore_done=True,
            hard_reset=False,  # keep the compiled model between episodes (a hard reset rebuilds it: ~0.25 s)
            seed=model_seed,
        )
        self._render_ready = False

    def _observe(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(raw[src], dtype=np.float32) for k, src in SOURCE_KEYS.items()}

    def _info(self, reward: float) -> dict[str, Any]:
        success = bool(self.sim_env._check_success())
        return {"success": success, "score": 1.0 if success else float(np.clip(reward, 0.0, 1.0))}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        inner = np.random.default_rng(int(self.np_random.integers(2**32)))
        # robosuite's samplers hold a reference to its generator: re-seed that object in place
        self.sim_env.rng.bit_generator.state = inner.bit_generator.state
        raw = self.sim_env.reset()
        return self._observe(raw), self._info(self.sim_env.reward())

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(7), -1.0, 1.0)
        raw, reward, _, _ = self.sim_env.step(action)
        info = self._info(float(reward))
        return self._observe(raw), info["score"], info["success"], False, info

    def render(self) -> np.ndarray | None:
        """The ``agentview`` camera, ``ndarray uint8, shape (height, width, 3)``."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array' to gym.make")
            return None
        sim = self.sim_env.sim
        if not self._render_ready:  # software GL is much faster without shadows and reflections
            import mujoco

            scene = sim._render_context_offscreen.scn
            scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._render_ready = True
        frame = sim.render(camera_name=CAMERA, width=self.width, height=self.height)
        return np.ascontiguousarray(frame[::-1])  # OpenGL rows run bottom-up

    def close(self) -> None:
        if getattr(self, "sim_env", None) is not None:
            self.sim_env.close()
            self.sim_env = None
        super().close()


# The gripper pointing straight down with its x axis along the world's x axis (the arm's pose at reset).
_GRIPPER_DOWN = np.diag([1.0, -1.0, -1.0])


class LiftExpert:
    """Scripted Lift: above the cube, down, close, lift; a closed-loop function of the current observation.

    Every step the action is computed from the observation alone (no phase is remembered):

    - **holding** (fingers 0.02-0.05 m apart, grip site within 0.02 m of the cube centre): close and rise
      towards ``lift`` m above the cube;
    - **far** (grip site more than 0.02 m from the cube in xy): open and go to ``hover`` m above the cube;
    - **above**: open and descend to the cube centre; close once within ``grasp_tol`` m of it.

    Position action = ``clip(kp (target - eef), -1, 1)``. The orientation action turns the gripper to point
    straight down with its yaw on the cube's nearest face direction (the cube is symmetric under quarter
    turns): ``clip(kr rotvec(R_target R_eef^T), -1, 1)``. Deterministic, so (env seeds) fix a dataset; the
    variety of the demonstrations comes from the cube's pose and the arm's initial joint noise.
    """

    name = "robosuite_lift_scripted"

    def __init__(
        self,
        seed: int = 0,
        hover: float = 0.06,
        lift: float = 0.25,
        grasp_tol: float = 0.008,
        kp: float = 10.0,
        kr: float = 2.0,
    ) -> None:
        if min(hover, lift, grasp_tol, kp, kr) <= 0:
            raise ValueError(f"hover={hover}, lift={lift}, grasp_tol={grasp_tol}, kp={kp}, kr={kr} must all be > 0")
        self.seed = seed  # unused: the expert is deterministic
        self.hover, self.lift, self.grasp_tol, self.kp, self.kr = hover, lift, grasp_tol, kp, kr

    def reset(self, env: gym.Env) -> None:
        """Nothing to reset (no per-episode state)."""

    def _rotation_action(self, eef_quat: np.ndarray, cube_quat: np.ndarray) -> np.ndarray:
        """Axis-angle (3,) turning the gripper to point down with its yaw on the cube's nearest face."""
        from scipy.spatial.transform import Rotation

        eef = Rotation.from_quat(eef_quat).as_matrix()  # quaternions are xyzw, scipy's order
        cube_yaw = Rotation.from_quat(cube_quat).as_euler("xyz")[2]
        yaw = np.arctan2(eef[1, 0], eef[0, 0])
        target_yaw = cube_yaw + np.pi / 2 * np.round((yaw - cube_yaw) / (np.pi / 2))
        target = Rotation.from_euler("z", target_yaw).as_matrix() @ _GRIPPER_DOWN
        return Rotation.from_matrix(target @ eef.T).as_rotvec()

    def act(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        obj = np.asarray(obs["object"], dtype=np.float64)
        cube, cube_quat, to_cube = obj[:3], obj[3:7], obj[7:10]  # to_cube = cube - eef
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        fingers = np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64)
        width = float(fingers[0] - fingers[1])  # m between the fingers: 0.08 open, 0.042 on the cube
        holding = 0.02 < width < 0.05 and float(np.linalg.norm(to_cube)) < 0.02
        grip = -1.0
        if holding:
            target, grip = cube + [0.0, 0.0, self.lift], 1.0
        elif float(np.linalg.norm(to_cube[:2])) > 0.02:
            target = cube + [0.0, 0.0, self.hover]
        else:
            target = cube
            if float(np.linalg.norm(eef - target)) < self.grasp_tol:
                grip = 1.0
        move = np.clip(self.kp * (target - eef), -1.0, 1.0)
        turn = np.clip(self.kr * self._rotation_action(obs["robot0_eef_quat"], cube_quat), -1.0, 1.0)
        return np.array([*move, *turn, grip], dtype=np.float32)
