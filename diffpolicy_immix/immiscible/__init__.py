"""The noise-assignment core: immiscible noise for any diffusion trainer.

```python
from diffpolicy_immix.immiscible import make_assigner
assign = make_assigner("knn", k=8)      # "none" | "lsa" | "knn" | "sinkhorn"
noise = assign(x0, generator=g)         # x0: (B, *dims) -> noise (B, *dims), same dtype and device
```

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
    knn_bruteforce,
)
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
        **options: the assigner's options (e.g. ``k=8`` for knn, ``cost="sqeuclidean"`` for lsa,
            ``reg=0.05`` for sinkhorn, ``seed`` for all).
    Returns:
        A callable ``assign(x0, generator=None) -> noise``.
    """
    if name not in ASSIGNERS:
        raise ValueError(f"unknown assigner {name!r}; valid names: {', '.join(ASSIGNERS)}")
    cls = ASSIGNERS[name]
    valid = [f.name for f in fields(cls) if f.init]
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for assigner {name!r}; valid options: {', '.join(valid)}")
    return cls(**options)


__all__ = [
    "ASSIGNERS",
    "Assigner",
    "GaussianNoise",
    "LinearAssignment",
    "NearestOfK",
    "SinkhornAssignment",
    "available_solver",
    "check_batch",
    "expected_gaussian_distance",
    "expected_gaussian_norm",
    "knn_bruteforce",
    "make_assigner",
    "miscibility_stats",
    "orthogonal_unit",
    "pairwise_cost",
    "sample_chi2",
    "sample_gamma",
    "self_recovery",
    "solve_assignment",
]
