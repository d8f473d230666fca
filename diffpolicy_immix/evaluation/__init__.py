"""Policy evaluation: seeded vectorized rollouts, metrics and videos."""

from diffpolicy_immix.evaluation.envspec import EnvSpec, SuccessSpec, success_from_step
from diffpolicy_immix.evaluation.rollout import (
    EpisodeGuard,
    EpisodeResult,
    evaluate_policy,
    make_env,
    rollout_episodes,
    summarize_episodes,
)
from diffpolicy_immix.evaluation.video import write_video

__all__ = [
    "EnvSpec",
    "EpisodeGuard",
    "EpisodeResult",
    "SuccessSpec",
    "evaluate_policy",
    "make_env",
    "rollout_episodes",
    "success_from_step",
    "summarize_episodes",
    "write_video",
]
