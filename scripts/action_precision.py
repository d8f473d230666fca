"""How precisely must a policy act, and how precisely does it? Two measurements on a demonstration store.

    python scripts/action_precision.py replay STORE [--episodes 60] [--noise 0 0.001 0.003 0.01]
    python scripts/action_precision.py error CHECKPOINT STORE [--first 0] [--episodes 100] [--unit cm|px]
                                             [--split trained|held_out]

``replay`` replays the first episodes' recorded actions open loop from their reset seeds (the store's
``episode_seeds``), with Gaussian noise of each standard deviation (in the action's units, per action
dimension: metres on PushBlock, pixels on PushT) added to every action, and prints the success rate and
the mean max score: how sensitive the task is to errors that nobody corrects.
Without noise the replay reproduces the demonstration (the simulation is deterministic).

``error`` feeds each step's true observation history (the store's) to a trained policy and compares
its sampled chunk with the demonstration's next actions (the distance between the commanded positions,
in cm for actions in metres, ``--unit px`` for PushT's pixels): the first executed action, and all Ta
executed ones. ``--split trained`` keeps only the episodes (among ``--first``.. ``--first + --episodes``)
that the checkpoint's run trained on, ``held_out`` the others (the run's ``task.max_train_episodes``,
``val_ratio`` and ``split_seed`` decide which; with the same store the run trained on). It
measures imitation precision on the states the demonstrations visit, free of compounding errors.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from diffpolicy_immix.data import ReplayBuffer


def replay(store: str, episodes: int, noise: list[float], task: str) -> None:
    import diffpolicy_immix_envs as E

    buf = ReplayBuffer.open(store, in_memory=True)
    seeds = buf.attrs.get("episode_seeds")
    if not seeds or len(seeds) != buf.n_episodes:
        sys.exit(f"error: {store}: attribute episode_seeds is missing; replay needs each episode's reset seed")
    env = E.make_env(task or buf.attrs["task"])
    n = min(episodes, buf.n_episodes)
    for sigma in noise:
        rng = np.random.default_rng(0)
        wins, scores = 0, []
        for i in range(n):
            env.reset(seed=int(seeds[i]))
            best = 0.0
            for action in buf.get_episode(i)["action"]:
                noisy = action + sigma * rng.standard_normal(action.shape)
                _, reward, terminated, truncated, info = env.step(noisy.astype(np.float32))
                best = max(best, float(info.get("score", reward)))
                if info.get("success"):
                    wins += 1
                    break
                if terminated or truncated:
                    break
            scores.append(best)
        print(
            f"open-loop replay of {n} episodes, action noise std {sigma:g}: success {wins / n:.2f}, "
            f"mean max score {np.mean(scores):.3f}"
        )


def error(checkpoint: str, store: str, first: int, episodes: int, unit: str, split: str | None) -> None:
    from diffpolicy_immix.app import load_model
    from diffpolicy_immix.data.sampler import split_episodes

    model, cfg = load_model(checkpoint)
    task = cfg["task"]
    to = int(task["n_obs_steps"])
    buf = ReplayBuffer.open(store, in_memory=True)
    chosen = list(range(first, min(first + episodes, buf.n_episodes)))
    if split is not None:
        trained, _ = split_episodes(
            buf.n_episodes, float(task.get("val_ratio", 0.0)), int(task.get("split_seed", 42)),
            task.get("max_train_episodes"),
        )  # fmt: skip
        chosen = [i for i in chosen if bool(trained[i]) == (split == "trained")]
    if not chosen:
        sys.exit(f"error: no episode of {store} in {first}..{first + episodes - 1} is {split}")
    generator = torch.Generator().manual_seed(0)
    first_err, all_err = [], []
    for i in chosen:
        episode = buf.get_episode(i)
        obs, action = episode["obs"], episode["action"]  # (T, Do), (T, Da)
        steps = np.arange(len(obs))
        history = np.stack([obs[np.maximum(steps - to + 1 + k, 0)] for k in range(to)], axis=1)  # (T, To, Do)
        with torch.no_grad():
            chunk = model.predict_action({"obs": torch.as_tensor(history)}, generator=generator)["action"].numpy()
        first_err.append(np.linalg.norm(chunk[:, 0] - action, axis=1))
        for k in range(chunk.shape[1]):
            inside = steps + k < len(obs)
            all_err.append(np.linalg.norm(chunk[inside, k] - action[steps[inside] + k], axis=1))
    scale = 100.0 if unit == "cm" else 1.0
    e1, ea = np.concatenate(first_err) * scale, np.concatenate(all_err) * scale
    print(
        f"{checkpoint} on {store}, {len(chosen)} episodes in {first}-{first + episodes - 1}"
        f"{'' if split is None else ' (' + split + ')'}: first executed action off by "
        f"median {np.median(e1):.2f} {unit} (mean {e1.mean():.2f}, 90th percentile {np.percentile(e1, 90):.2f}); "
        f"all {chunk.shape[1]} executed: median {np.median(ea):.2f} {unit} (mean {ea.mean():.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay")
    rp.add_argument("store")
    rp.add_argument("--episodes", type=int, default=60)
    rp.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.001, 0.003, 0.01])
    rp.add_argument("--task", default=None, help="env id or task name (default: the store's task attribute)")
    ep = sub.add_parser("error")
    ep.add_argument("checkpoint")
    ep.add_argument("store")
    ep.add_argument("--first", type=int, default=0)
    ep.add_argument("--episodes", type=int, default=100)
    ep.add_argument("--unit", choices=["cm", "px"], default="cm", help="cm: actions in metres; px: in pixels")
    ep.add_argument("--split", choices=["trained", "held_out"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "replay":
        replay(args.store, args.episodes, args.noise, args.task)
    else:
        error(args.checkpoint, args.store, args.first, args.episodes, args.unit, args.split)


if __name__ == "__main__":
    main()
