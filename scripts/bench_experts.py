"""Benchmark of the simulated tasks: scripted-expert success and environment throughput.

For every task: the expert's success rate and mean per-episode max score (Diffusion Policy's protocol) over
seeded episodes (env seeds 0..N-1, expert seed 0), mean episode length, and env steps/s with random actions
and with the expert in the loop. The reference for throughput is the bare simulator underneath each task
(``mujoco.mj_step`` on the same model for our own MJCF tasks, the unwrapped ``PointMaze_Medium-v3`` and
``gym_pusht/PushT-v0`` for the wrapped ones), so the ratio column is the cost of this package's layer.

    python scripts/bench_experts.py                              # all tasks, 100 episodes each
    python scripts/bench_experts.py --tasks reach_around,push_block --episodes 20
    python scripts/bench_experts.py --tasks pusht --pusht-budget-s 600

PushT's expert plans by simulation and is slow, so PushT runs as many episodes as fit in
``--pusht-budget-s`` seconds (at most ``--episodes``); the table states the number.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import diffpolicy_immix_envs as E
import numpy as np
from tqdm import tqdm


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import gymnasium
    import mujoco

    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, mujoco {mujoco.__version__}, "
        f"gymnasium {gymnasium.__version__}"
    )


def reference_steps_per_s(task: str, steps: int) -> float:
    """Random-action steps/s of the simulator underneath a task (see the module docstring)."""
    rng = np.random.default_rng(0)
    if task in ("reach_around", "push_block"):
        import mujoco

        env = E.make_env(task).unwrapped
        env.reset(seed=0)
        model, data = env.model, env.data
        lo, hi = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
        ctrls = rng.uniform(lo, hi, size=(steps, len(lo)))
        for ctrl in ctrls[: steps // 10]:  # warm-up
            data.ctrl[:] = ctrl
            mujoco.mj_step(model, data, nstep=env.frame_skip)
        t = time.perf_counter()
        for ctrl in ctrls:
            data.ctrl[:] = ctrl
            mujoco.mj_step(model, data, nstep=env.frame_skip)
        return steps / (time.perf_counter() - t)
    if task == "point_maze":
        from diffpolicy_immix_envs.point_maze import _make_underlying

        inner = _make_underlying(continuing_task=False)
    else:
        from diffpolicy_immix_envs.pusht import _make_underlying

        inner = _make_underlying(obs_type="state")
    inner.reset(seed=0)
    actions = rng.uniform(inner.action_space.low, inner.action_space.high, size=(steps, 2)).astype(np.float32)
    for a in actions[: steps // 10]:  # warm-up
        inner.step(a)
    t = time.perf_counter()
    for a in actions:
        inner.step(a)
    return steps / (time.perf_counter() - t)


def random_steps_per_s(task: str, steps: int) -> float:
    env = E.make_env(task)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    for a in actions[: steps // 10]:  # warm-up
        if any(env.step(a)[2:4]):
            env.reset()
    t = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - t)
    env.close()
    return rate


def run_expert(task: str, episodes: int, budget_s: float, expert_seed: int) -> dict[str, Any]:
    env = E.make_env(task)
    expert = E.make_expert(task, seed=expert_seed)
    success, best, lengths, modes, coverage = [], [], [], [], []
    steps = 0
    t_start = time.perf_counter()
    bar = tqdm(range(episodes), desc=task, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
    for seed in bar:
        obs, info = env.reset(seed=seed)
        expert.reset(env)
        top = info["score"]
        top_cov = info.get("coverage", 0.0)
        length = 0
        while True:
            obs, reward, terminated, truncated, info = env.step(expert.act(env, obs))
            length += 1
            top = max(top, reward)
            top_cov = max(top_cov, info.get("coverage", 0.0))
            if terminated or truncated:
                break
        success.append(info["success"])
        best.append(top)
        lengths.append(length)
        coverage.append(top_cov)
        steps += length
        if task == "reach_around":
            modes.append(expert.mode)
        elif task == "point_maze":
            modes.append(tuple(expert.route))
        bar.set_postfix(success=f"{np.mean(success):.2f}", score=f"{np.mean(best):.3f}")
        if time.perf_counter() - t_start > budget_s:
            break
    elapsed = time.perf_counter() - t_start
    env.close()
    note = ""
    if task == "reach_around":
        note = f"left {modes.count('left') / len(modes):.2f}"
    elif task == "point_maze":
        note = f"{len(set(modes))} distinct routes"
    elif task == "pusht":
        note = f"mean max raw coverage {np.mean(coverage):.3f}"
    return {
        "episodes": len(success),
        "success": float(np.mean(success)),
        "score": float(np.mean(best)),
        "length": float(np.mean(lengths)),
        "expert_steps_per_s": steps / elapsed,
        "s_per_episode": elapsed / len(success),
        "note": note,
    }


# robosuite_lift runs in its own environment (scripts/setup_robosuite.sh); docs/tasks.md has its figures
BENCHED = [t for t in E.TASK_IDS if t != "robosuite_lift"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=100, help="expert episodes per task (seeds 0..N-1)")
    parser.add_argument("--tasks", default=",".join(BENCHED), help="comma-separated short names or ids")
    parser.add_argument("--pusht-budget-s", type=float, default=300.0, help="time budget for PushT episodes")
    parser.add_argument("--random-steps", type=int, default=3000, help="steps for the throughput measurements")
    parser.add_argument("--expert-seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.random_steps < 1:
        parser.error(f"--episodes={args.episodes} and --random-steps={args.random_steps} must be >= 1")
    ids = {v: k for k, v in E.TASK_IDS.items()}
    try:
        tasks = [ids[E.resolve_task(t.strip())] for t in args.tasks.split(",") if t.strip()]
    except ValueError as err:
        parser.error(str(err))
    if set(tasks) - set(BENCHED):
        parser.error(f"--tasks: {sorted(set(tasks) - set(BENCHED))} not benchmarked here (choose from {BENCHED})")

    print(f"machine: {machine()}")
    print(f"command: python scripts/bench_experts.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    rows = []
    for task in tasks:
        budget = args.pusht_budget_s if task == "pusht" else float("inf")
        res = run_expert(task, args.episodes, budget, args.expert_seed)
        res["random"] = random_steps_per_s(task, args.random_steps)
        res["reference"] = reference_steps_per_s(task, args.random_steps)
        rows.append((task, res))
        print(
            f"  {task}: {res['episodes']} episodes, success {res['success']:.3f}, mean max score {res['score']:.3f}",
            flush=True,
        )

    header = (
        f"{'task':<13} {'episodes':>8} {'success':>8} {'max score':>9} {'length':>7} "
        f"{'random st/s':>11} {'sim st/s':>9} {'ratio':>6} {'expert st/s':>11} {'s/episode':>9}  notes"
    )
    print()
    print(header)
    print("-" * len(header))
    for task, r in rows:
        print(
            f"{task:<13} {r['episodes']:>8d} {r['success']:>8.3f} {r['score']:>9.3f} {r['length']:>7.1f} "
            f"{r['random']:>11.0f} {r['reference']:>9.0f} {r['random'] / r['reference']:>6.2f} "
            f"{r['expert_steps_per_s']:>11.0f} {r['s_per_episode']:>9.2f}  {r['note']}"
        )
    print(
        "\nsuccess / max score: expert over env seeds 0..N-1; length: mean control steps per episode; "
        "random st/s: env.step with random actions (incl. gymnasium wrappers); sim st/s: the bare simulator "
        "underneath (reference); ratio = random / sim; expert st/s: env.step + expert.act."
    )


if __name__ == "__main__":
    main()
