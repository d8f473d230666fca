"""The application layer: runs wired from a composed configuration.

It builds what the model-agnostic trainer trains (data sets, policies, image models, evaluation
callbacks, demonstration collection) and rebuilds trained models from checkpoints. The command-line
tools and the comparison sweeps call it; ``training/`` never imports it.
"""

from .config import (
    SAMPLING_KEYS,
    TASK_KINDS,
    apply_sampling,
    assign_label,
    check_sampling,
    default_out_dir,
    make_objective,
    resume_target,
    sampling_key,
    train_config,
)
from .images import ImageRunEvaluator, build_image_model, check_image_task, image_metric, open_image_train_set
from .policy import (
    PolicyEvalConfig,
    PolicyEvaluator,
    TakeoverPolicy,
    apply_task_overrides,
    build_policy,
    check_env,
    ensure_demonstrations,
    open_policy_datasets,
    policy_config,
    unreadable_store_error,
)
from .run import RunParts, build_run, load_model, run_training

__all__ = [
    "SAMPLING_KEYS",
    "TASK_KINDS",
    "ImageRunEvaluator",
    "PolicyEvalConfig",
    "PolicyEvaluator",
    "RunParts",
    "TakeoverPolicy",
    "apply_sampling",
    "apply_task_overrides",
    "assign_label",
    "build_image_model",
    "build_policy",
    "build_run",
    "check_env",
    "check_image_task",
    "check_sampling",
    "default_out_dir",
    "ensure_demonstrations",
    "image_metric",
    "load_model",
    "make_objective",
    "open_image_train_set",
    "open_policy_datasets",
    "policy_config",
    "resume_target",
    "run_training",
    "sampling_key",
    "train_config",
    "unreadable_store_error",
]
