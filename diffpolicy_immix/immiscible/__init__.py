"""The noise-assignment core: immiscible noise for any diffusion trainer.

```python
from diffpolicy_immix.immiscible import make_assigner
assign = make_assigner("knn", k=8)      # "none" | "lsa" | "knn" | "sinkhorn"
noise = assign(x0, generator=g)         # x0: (B, *dims) -> noise (B, *dims), same dtype and device
```

Variants for low-dimensional data (docs/assigners.md): ``knn`` with ``keep_norm=True`` (chi(D) norm) or
``target_reduction=0.05`` (k chosen per batch), ``shuffle_pairs=True`` (a control: KNN's noise without the
pairing); ``none`` with ``scale=0.935`` (a control: plain noise as short as KNN k=2's at D = 32, on average);
``t_range=(lo, hi)`` on any assigner (read by the
objective). Under ``torch.distributed``, ``lsa`` solves over all ranks' batches (``process_group``).

Depends on torch, numpy and scipy only (``lap`` optionally, for a faster exact solver).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .assigners import (
    Assigner,
    GaussianNoise,
    LinearAssignment,
    NearestOfK,
    SinkhornAssignment,
    check_batch,
    derangement,
    knn_bruteforce,
    sinkhorn_plan,
)
from .collective import global_lsa_noise, local_assignment, resolve_process_group
from .cost import available_solver, pairwise_cost, solve_assignment
from .diagnostics import expected_gaussian_distance, expected_gaussian_norm, miscibility_stats, self_recovery
from .sampling import orthogonal_unit, sample_chi2, sample_gamma

ASSIGNERS: dict[str, type[Assigner]] = {
    "none": GaussianNoise,
    "lsa": LinearAssignment,
    "knn": NearestOfK,
    "sinkhorn": SinkhornAssignment,
}


def make_assigner(name: str, **options: Any) -> Assigner:
    """Build a noise assigner by name.

    Args:
        name: one of ``ASSIGNERS`` ("none", "lsa", "knn", "sinkhorn").
        **options: the assigner's options (e.g. ``k=8``, ``keep_norm=True``, ``target_reduction=0.05`` for
            knn; ``cost="sqeuclidean"``, ``process_group=None`` for lsa; ``reg=0.05`` for sinkhorn;
            ``scale=0.935`` for none; ``seed``, ``t_range`` for all). An option of another assigner is a
            one-line ValueError.
    Returns:
        A callable ``assign(x0, generator=None) -> noise``.
    """
    if name not in ASSIGNERS:
        raise ValueError(f"unknown assigner {name!r}; valid names: {', '.join(ASSIGNERS)}")
    cls = ASSIGNERS[name]
    valid = _init_fields(cls)
    for key, value in options.items():
        if key in valid:
            continue
        owners = [other for other, other_cls in ASSIGNERS.items() if key in _init_fields(other_cls)]
        if owners:
            raise ValueError(
                f"option {key}={value!r} is not available for assigner {name!r} (only for {', '.join(owners)})"
            )
        raise ValueError(f"unknown option {key!r} for assigner {name!r}; valid options: {', '.join(valid)}")
    return cls(**options)


def _init_fields(cls: type[Assigner]) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


__all__ = [
    "ASSIGNERS",
    "Assigner",
    "GaussianNoise",
    "LinearAssignment",
    "NearestOfK",
    "SinkhornAssignment",
    "available_solver",
    "check_batch",
    "derangement",
    "expected_gaussian_distance",
    "expected_gaussian_norm",
    "global_lsa_noise",
    "local_assignment",
    "knn_bruteforce",
    "make_assigner",
    "miscibility_stats",
    "orthogonal_unit",
    "pairwise_cost",
    "resolve_process_group",
    "sample_chi2",
    "sample_gamma",
    "self_recovery",
    "sinkhorn_plan",
    "solve_assignment",
]
