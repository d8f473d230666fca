"""Draw a PushBlock policy's rollouts beside the scripted expert's, from the same start states.

    python scripts/plot_push_rollouts.py CHECKPOINT OUT.png [--episodes 8] [--seed-offset 100000]

One panel per test seed: the expert's pusher path and block poses (green), the policy's (red; its
commanded targets as magenta dots) and the target footprint (dashed). Block footprints darken with time.
It shows *how* a policy fails (pushing past the target, into a wall, never reaching the block), which a
success rate does not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import diffpolicy_immix_envs as E  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffpolicy_immix_envs.push_block import TABLE_HALF, block_footprint  # noqa: E402

from diffpolicy_immix.app import load_model  # noqa: E402


def rollout(env_seed: int, policy: torch.nn.Module | None, generator: torch.Generator) -> dict[str, np.ndarray]:
    """Pusher positions, block poses and actions of one episode (the expert when ``policy`` is None)."""
    env = E.make_env("push_block")
    obs, info = env.reset(seed=env_seed)
    expert = E.make_expert("push_block", seed=env_seed) if policy is None else None
    if expert is not None:
        expert.reset(env)
    else:
        policy.reset()
    pusher, blocks, actions = [], [], []
    for _ in range(env.spec.max_episode_steps):
        if expert is not None:
            action = expert.act(env, obs)
        else:
            action = policy.select_action(torch.as_tensor(obs[None]), generator=generator).numpy()[0]
        pusher.append(obs[:2])
        blocks.append(env.unwrapped.block_pose)
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    env.close()
    return {
        "pusher": np.array(pusher),
        "blocks": np.array(blocks),
        "actions": np.array(actions),
        "success": np.array(info["success"]),
    }


def draw(ax: plt.Axes, run: dict[str, np.ndarray], color: str, label: str, show_actions: bool) -> None:
    path, blocks = run["pusher"], run["blocks"]
    ax.plot(
        path[:, 0],
        path[:, 1],
        "-",
        color=color,
        lw=0.8,
        label=f"{label}: {len(path)} steps, success {bool(run['success'])}",
    )
    if show_actions:
        ax.plot(run["actions"][:, 0], run["actions"][:, 1], ".", color="m", ms=2)
    for k in range(0, len(blocks), 10):
        corners = block_footprint(blocks[k])
        ax.fill(corners[:, 0], corners[:, 1], color=color, alpha=0.08 + 0.5 * k / len(blocks))
    corners = block_footprint(blocks[-1])
    ax.plot(*np.r_[corners, corners[:1]].T, "-", color=color)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a push_block run's checkpoints/latest.pt or .safetensors")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--seed-offset", type=int, default=100000, help="first env seed (100000: test seeds)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {args.checkpoint} does not exist")
    if args.episodes < 1:
        parser.error(f"--episodes={args.episodes} must be >= 1")
    torch.set_num_threads(1)
    policy, cfg = load_model(args.checkpoint)
    if cfg["task"].get("name") != "push_block":
        parser.error(f"{args.checkpoint} is a {cfg['task'].get('name')!r} policy; this script draws push_block")
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    cols = min(4, args.episodes)
    rows = -(-args.episodes // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    target = block_footprint(np.zeros(3))
    for i, ax in enumerate(axes.flat):
        if i >= args.episodes:
            ax.axis("off")
            continue
        seed = args.seed_offset + i
        draw(ax, rollout(seed, None, generator), "g", "expert", False)
        draw(ax, rollout(seed, policy, generator), "r", "policy", True)
        ax.plot(*np.r_[target, target[:1]].T, "k--", lw=1)
        ax.set(xlim=(-TABLE_HALF, TABLE_HALF), ylim=(-TABLE_HALF, TABLE_HALF), aspect="equal", title=f"seed {seed}")
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
