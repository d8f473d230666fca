"""Gymnasium tasks of diffpolicy_immix, registered under the ``immix/`` namespace on import.

```python
import diffpolicy_immix_envs as E
env = E.make_env("reach_around")                  # or gym.make("immix/ReachAround-v0")
expert = E.make_expert("immix/ReachAround-v0", seed=0)
obs, info = env.reset(seed=0); expert.reset(env)
obs, reward, terminated, truncated, info = env.step(expert.act(env, obs))
```

| short name     | id                      | observation | action                  |
|----------------|-------------------------|-------------|-------------------------|
| reach_around   | immix/ReachAround-v0    | Box(6,)     | target xy, m            |
| push_block     | immix/PushBlock-v0      | Box(6,)     | target xy, m            |
| point_maze     | immix/PointMaze-v0      | Box(6,)     | force in [-1, 1]^2      |
| pusht          | immix/PushT-v0          | Box(20,)    | target xy in [0, 512]^2 |
| reach_around_image | immix/ReachAroundImage-v0 | {img: (96, 96, 3) uint8, state: (6,)} | target xy, m |
| push_block_image   | immix/PushBlockImage-v0   | {img: (96, 96, 3) uint8, state: (6,)} | target xy, m |
| pusht_image        | immix/PushTImage-v0       | {img: (96, 96, 3) uint8, state: (5,)}  | target xy in [0, 512]^2 |
| robosuite_lift     | immix/RobosuiteLift-v0    | {object: (10,), robot0_eef_pos, ...: 19 dims} | OSC delta, grip |

Every task reports ``info["success"]`` (bool) and ``info["score"]`` (float in [0, 1]) on every step; the
reward equals the score, and an episode terminates on success. See docs/tasks.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering by default

from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402

TASK_IDS: dict[str, str] = {
    "reach_around": "immix/ReachAround-v0",
    "push_block": "immix/PushBlock-v0",
    "point_maze": "immix/PointMaze-v0",
    "pusht": "immix/PushT-v0",
    "reach_around_image": "immix/ReachAroundImage-v0",
    "push_block_image": "immix/PushBlockImage-v0",
    "pusht_image": "immix/PushTImage-v0",
    "robosuite_lift": "immix/RobosuiteLift-v0",
}

# id -> (entry point, max_episode_steps)
_SPECS: dict[str, tuple[str, int]] = {
    "immix/ReachAround-v0": ("diffpolicy_immix_envs.reach_around:ReachAroundEnv", 60),
    "immix/PushBlock-v0": ("diffpolicy_immix_envs.push_block:PushBlockEnv", 200),
    "immix/PointMaze-v0": ("diffpolicy_immix_envs.point_maze:PointMazeEnv", 400),
    "immix/PushT-v0": ("diffpolicy_immix_envs.pusht:PushTKeypointEnv", 300),
    "immix/ReachAroundImage-v0": ("diffpolicy_immix_envs.reach_around:ReachAroundEnv", 60),
    "immix/PushBlockImage-v0": ("diffpolicy_immix_envs.push_block:PushBlockEnv", 200),
    "immix/PushTImage-v0": ("diffpolicy_immix_envs.pusht:PushTKeypointEnv", 300),
    "immix/RobosuiteLift-v0": ("diffpolicy_immix_envs.robosuite_tasks:RobosuiteLiftEnv", 100),
}

# id -> default constructor kwargs (the camera variants of the state tasks)
_KWARGS: dict[str, dict[str, Any]] = {
    "immix/ReachAroundImage-v0": {"obs_mode": "pixels_state"},
    "immix/PushBlockImage-v0": {"obs_mode": "pixels_state"},
    "immix/PushTImage-v0": {"obs_mode": "pixels_state"},
}


def register_envs() -> None:
    """Register every ``immix/`` id with gymnasium (idempotent; done on import)."""
    for env_id, (entry_point, max_steps) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id, entry_point=entry_point, max_episode_steps=max_steps, kwargs=dict(_KWARGS.get(env_id, {}))
            )


def resolve_task(task_or_id: str) -> str:
    """Map a short task name or a gymnasium id to the id; ValueError naming the input otherwise."""
    if task_or_id in _SPECS:
        return task_or_id
    if task_or_id in TASK_IDS:
        return TASK_IDS[task_or_id]
    valid = ", ".join([*TASK_IDS, *_SPECS])
    raise ValueError(f"unknown task {task_or_id!r}; valid names: {valid}")


def make_env(task_or_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` for a short task name or ``immix/`` id (registers the ids first)."""
    register_envs()
    return gym.make(resolve_task(task_or_id), **kwargs)


register_envs()

from .experts import Expert, make_expert  # noqa: E402

__all__ = ["TASK_IDS", "Expert", "make_env", "make_expert", "register_envs", "resolve_task"]
