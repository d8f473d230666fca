"""Noise assigners: given a batch of data, return Gaussian noise paired with it.

Every assigner is a callable ``assign(x0, generator=None) -> noise`` with ``noise`` of the shape, dtype
and device of ``x0`` (shape (B, *dims)). ``x0`` is never reordered: the noise moves to the data.

- ``none``: independent ``N(0, I)`` noise (the baseline); ``scale`` multiplies it (a control).
- ``lsa``: Immiscible Diffusion's batch linear assignment. B noises are drawn and permuted so that the
  total data-noise distance is minimal (exact Hungarian / Jonker-Volgenant solve). The batch of noise is
  a permutation of i.i.d. Gaussians, so it stays exactly Gaussian as a set.
- ``knn``: Improved Immiscible Diffusion's nearest-of-k selection, computed exactly in O(B D + B k)
  by sampling each candidate's two sufficient statistics (see ``NearestOfK``). The selected noise is
  *not* Gaussian given the sample (its norm shrinks, more so in low dimension).
- ``sinkhorn``: entropic minibatch OT; each sample's noise is drawn from its row of the Sinkhorn plan.

With ``generator=None`` an assigner draws from its own private generator (seeded by ``seed``, or from
the operating system's entropy when ``seed`` is None) and never from torch's global random state.
"""

from __future__ import annotations

import copy
import math
import random
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .collective import check_process_group, global_lsa_noise, resolve_process_group
from .cost import COST_DTYPES, COST_METRICS, SOLVERS, pairwise_cost, solve_assignment
from .diagnostics import expected_gaussian_distance
from .sampling import combine_with_orthogonal, sample_chi2

__all__ = [
    "Assigner",
    "GaussianNoise",
    "LinearAssignment",
    "NearestOfK",
    "SinkhornAssignment",
    "knn_bruteforce",
    "check_batch",
    "derangement",
    "sinkhorn_plan",
]

# Rows of x0 with a norm at or below this are treated as the origin (any direction is nearest-equivalent).
_TINY_NORM = 1e-30


def check_batch(x0: Any, check_finite: bool = True) -> None:
    """Raise a one-line ``ValueError`` unless ``x0`` is a non-empty floating tensor of shape (B, *dims)."""
    if not isinstance(x0, Tensor):
        raise ValueError(f"x0 must be a torch.Tensor of shape (B, *dims), got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")
    if x0.dim() < 1 or x0.numel() == 0:
        raise ValueError(f"x0 must have shape (B, *dims) with at least one element, got shape {tuple(x0.shape)}")
    if check_finite:
        # Row norms are one fast reduction and are non-finite for any row holding NaN/inf; only then (or
        # on overflow of huge finite values) is the exact element-wise test run.
        if bool(torch.isfinite(torch.linalg.vector_norm(x0.reshape(x0.shape[0], -1), dim=1)).all()):
            return
        finite_rows = torch.isfinite(x0.reshape(x0.shape[0], -1)).all(dim=1)  # (B,)
        if not bool(finite_rows.all()):
            row = int((~finite_rows).nonzero()[0, 0])
            raise ValueError(f"x0 has non-finite values (NaN or inf) in row {row} of {x0.shape[0]}")


def _plain(value: Any) -> Any:
    """A config value as a plain Python object for error messages (e.g. a Hydra list as a list)."""
    if isinstance(value, (str, bytes, Tensor)) or not hasattr(value, "__iter__"):
        return value
    return list(value)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic precision for an input dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Assigner:
    """Base class: input checks, generator handling and the ``options`` record.

    Subclasses are dataclasses whose fields are their options, and implement ``_assign``.
    """

    name: ClassVar[str] = ""
    seed: int | None = None
    """Seed of the private generator used when a call passes no generator (None: OS entropy)."""
    check_finite: bool = True
    """Reject x0 holding NaN/inf (one pass over the batch)."""
    t_range: tuple[float, float] | None = None
    """``(lo, hi)`` with 0 <= lo < hi <= 1: assign only to rows whose diffusion time t satisfies
    ``lo <= t / T < hi`` (T: the objective's time scale; t near T is almost pure noise); the other rows
    get plain N(0, I) noise. None: every row. The assigner cannot see the diffusion time, so this option
    is read and applied by ``DiffusionObjective`` (which draws t first and calls the assigner on the rows
    inside the range only); calling the assigner directly assigns every row it is given. It is an
    assigner option rather than an objective option because it says which rows get assigned noise: it
    belongs with the assignment's other settings (the ``assign`` config group, the run label), and
    ``none`` has nothing to restrict."""
    _generators: dict[str, torch.Generator] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.t_range is not None:
            value = self.t_range
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                lo, hi = math.nan, math.nan
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(
                    f"{self.name} option t_range={_plain(value)!r} is invalid; "
                    "it must be [lo, hi] with 0 <= lo < hi <= 1"
                )
            self.t_range = (lo, hi)

    def requires_all_ranks(self) -> bool:
        """True when a call makes collective calls now, so every rank must call it (even with B = 0)."""
        return False

    @property
    def options(self) -> dict[str, Any]:
        """The assigner's options (its dataclass fields), for logs and configs."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def __call__(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noise paired with ``x0``.

        Args:
            x0: Tensor, shape (B, *dims), any floating dtype, CPU or CUDA.
            generator: a ``torch.Generator`` on x0's device, or None for the private one.
        Returns:
            Tensor, shape (B, *dims), dtype and device of ``x0``.
        """
        if not (isinstance(x0, Tensor) and x0.dim() >= 1 and x0.shape[0] == 0 and self.requires_all_ranks()):
            check_batch(x0, self.check_finite)  # an empty batch is allowed only where the call is collective
        gen = self.default_generator(x0.device) if generator is None else generator
        if gen.device.type != x0.device.type:
            raise ValueError(f"generator is on {gen.device} but x0 is on {x0.device}; pass a generator on x0's device")
        with torch.no_grad():
            noise = self._assign(x0.detach(), gen)
        return noise.to(x0.dtype)

    def _assign(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def default_generator(self, device: torch.device | str) -> torch.Generator:
        """The private generator used on ``device`` when a call passes none (created on first use)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            seed = self.seed if self.seed is not None else random.SystemRandom().getrandbits(63)
            self._generators[key] = torch.Generator(device=device).manual_seed(seed)
        return self._generators[key]

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator cannot be pickled or deep-copied; a copy starts a fresh private generator.
        state = self.__dict__.copy()
        state["_generators"] = {}
        return state

    def _draw(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        """i.i.d. N(0, I) of x0's shape in the working precision."""
        return torch.randn(x0.shape, dtype=_work_dtype(x0.dtype), device=x0.device, generator=generator)


@dataclass
class GaussianNoise(Assigner):
    """``none``: plain independent Gaussian noise, ``torch.randn`` of x0's shape."""

    name: ClassVar[str] = "none"
    scale: float = 1.0
    """A control, not a method: the noise is ``scale * N(0, I)``. KNN k=2 at D = 32 selects noise whose
    norm is about 6.5% below that of N(0, I); ``scale=0.935`` shrinks plain noise by that much on average,
    with neither KNN's pairing nor its law of the norm. Sampling still starts from N(0, I) (its own
    temperature is the objective's ``init_noise_scale``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.scale
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 10.0:
            raise ValueError(f"none option scale={value!r} is invalid; it must lie in (0, 10]")
        self.scale = float(value)

    def _assign(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        noise = self._draw(x0, generator)
        return noise if self.scale == 1.0 else noise.mul_(self.scale)


@dataclass
class LinearAssignment(Assigner):
    """``lsa``: permute a batch of Gaussian noise to minimize the total data-noise cost (exact).

    The (B, B) cost comes from one GEMM (``pairwise_cost``); the solve runs on the CPU.
    """

    name: ClassVar[str] = "lsa"
    cost: str = "l2"
    """``"l2"`` (Immiscible Diffusion) or ``"sqeuclidean"`` (minibatch OT); they give different pairings."""
    cost_dtype: str = "float32"
    """GEMM precision: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (ties from rounding change pairings)."""
    solver: str = "auto"
    """``"auto"`` (``lap``'s Jonker-Volgenant when installed, else scipy), ``"lapjv"``, ``"scipy"``."""
    process_group: Any = "auto"
    """Ranks whose batches are assigned together: ``"auto"`` (all ranks of the default group when
    ``torch.distributed`` is initialized with more than one rank, else this batch alone), None (always
    this batch alone) or a ``torch.distributed.ProcessGroup``. A global assignment is one exact solve over
    the concatenated batch of the group (see ``collective.global_lsa_noise``): every rank of the group must
    make the same calls; inside ``local_assignment()`` the solve is local."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_process_group(self.process_group, "lsa")
        if self.cost not in COST_METRICS:
            raise ValueError(f"lsa option cost={self.cost!r} is invalid; choose one of {COST_METRICS}")
        if self.cost_dtype not in COST_DTYPES:
            raise ValueError(
                f"lsa option cost_dtype={self.cost_dtype!r} is invalid; choose one of {tuple(COST_DTYPES)}"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"lsa option solver={self.solver!r} is invalid; choose one of {SOLVERS}")

    def requires_all_ranks(self) -> bool:
        return resolve_process_group(self.process_group) is not None

    def _assign(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        noise = self._draw(x0, generator)  # (B, *dims)
        group = resolve_process_group(self.process_group)
        if group is not None:
            return global_lsa_noise(
                x0, noise, group, cost=self.cost, cost_dtype=self.cost_dtype, solver=self.solver
            )  # (B, *dims)
        if x0.shape[0] == 1:
            return noise
        cost = pairwise_cost(x0, noise, self.cost, self.cost_dtype)  # (B, B)
        col = solve_assignment(cost, self.solver).to(x0.device)  # (B,)
        return noise[col]

    def __deepcopy__(self, memo: dict[int, Any]) -> LinearAssignment:
        # A ProcessGroup cannot be copied: a copy shares it (and starts a fresh private generator).
        options = {
            key: (value if key == "process_group" else copy.deepcopy(value, memo))
            for key, value in self.options.items()
        }
        return type(self)(**options)


@dataclass
class NearestOfK(Assigner):
    """``knn``: for each sample, the nearest of ``k`` i.i.d. Gaussian candidates -- exactly.

    Since N(0, I) is isotropic, a candidate ``n`` matters to the selection only through
    ``a = <n, x>/|x| ~ N(0, 1)`` and ``c = |n - a x_hat|^2 ~ chi^2(D - 1)``, which are independent, with
    ``|x - n|^2 = (|x| - a)^2 + c``. So the projection method draws k pairs (a, c) per sample, keeps the
    argmin, and builds ``n* = a* x_hat + sqrt(c*) u`` with u uniform on the unit sphere orthogonal to
    x_hat (one Gaussian row, projected and normalized). The result has exactly the distribution of the
    brute-force selection at O(B D + B k) cost, so k can be in the thousands. Rows with x = 0 get a random
    direction (every direction is equally near). ``k = 1`` returns plain Gaussian noise.

    ``method="bruteforce"`` materializes the candidates in chunks (the reference); ``"auto"`` uses it
    only on CUDA for small ``k * D``, where one fused draw beats the projection's several small kernels.
    """

    name: ClassVar[str] = "knn"
    k: int = 8
    """Candidates per sample (>= 1)."""
    method: str = "auto"
    """``"auto"``, ``"projection"`` or ``"bruteforce"``."""
    max_elements: int = 2**25
    """Brute force only: candidate elements materialized at once (bounds memory; 2**25 floats = 128 MiB)."""
    keep_norm: bool = False
    """Keep the nearest candidate's direction but give it an independent norm ``r ~ chi(D)``, the norm of
    N(0, I_D): ``n = r (a* x_hat + sqrt(c*) u) / sqrt(a*^2 + c*)``. The noise norm is then exactly
    chi(D) and independent of x (not shrunk); only the direction is biased toward x."""
    target_reduction: float | None = None
    """In (0, 1): choose k per batch so that the pairing brings the batch's mean data-noise distance this
    fraction below that of independent Gaussian pairing (``miscibility_stats``'s
    ``distance_reduction_pct`` / 100, closed-form baseline). k is the smallest in [1, ``k_max``] whose
    estimated reduction reaches the target, decided from the candidates' (a, c) statistics alone (a pool
    of K <= 2 k candidates per row, O(B K log K), never touching D before the final build); each row
    then takes the nearest of k candidates with probability p and of k - 1 otherwise, p chosen so the
    expected reduction equals the target (at low dimension one step of k is several percent). ``k`` is
    then ignored; the effective k (k - 1 + p) is ``last_k``. Uses the projection method. With
    ``keep_norm`` the target applies to the selection before the norm is replaced. None: fixed ``k``."""
    k_max: int = 4096
    """Largest k ``target_reduction`` may choose (a warning says when it is not enough)."""
    shuffle_pairs: bool = False
    """A control, not a method: select each row's noise for *another* row of the batch (partners from a
    random cyclic derangement, so no row keeps its own sample). Over the batch the selected noise has the
    distribution it has without this option (the same norm shrinkage), but it is independent of the row it
    is added to: the shrinkage without the pairing. A batch of one row has no other row and is paired
    with itself."""
    last_k: float | None = field(default=None, init=False, compare=False)
    """The k used by the last call (None before the first); with ``target_reduction`` the effective k,
    ``k - 1 + p`` (see ``target_reduction``)."""

    _METHODS: ClassVar[tuple[str, ...]] = ("auto", "projection", "bruteforce")
    # Crossovers: CPU measured with scripts/bench_assign.py (2-core EPYC: brute force wins up to about
    # 64k candidate elements); the CUDA bound is an untuned estimate.
    _CUDA_BRUTEFORCE_MAX_KD: ClassVar[int] = 32768
    _CPU_BRUTEFORCE_MAX_ELEMENTS: ClassVar[int] = 65536

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in ("k", "k_max"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"knn option {option}={value!r} is invalid; {option} must be an integer >= 1")
        if self.method not in self._METHODS:
            raise ValueError(f"knn option method={self.method!r} is invalid; choose one of {self._METHODS}")
        if self.max_elements < 1:
            raise ValueError(f"knn option max_elements={self.max_elements} is invalid; it must be >= 1")
        for option in ("keep_norm", "shuffle_pairs"):
            value = getattr(self, option)
            if not isinstance(value, bool):
                raise ValueError(f"knn option {option}={value!r} is invalid; it must be true or false")
        target = self.target_reduction
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, int | float) or not 0.0 < target < 1.0:
                raise ValueError(f"knn option target_reduction={target!r} is invalid; it must lie in (0, 1)")
            if self.method == "bruteforce":
                raise ValueError(
                    f"knn option target_reduction={target!r} needs method 'auto' or 'projection', "
                    "not method='bruteforce'"
                )
            self.target_reduction = float(target)

    def resolve_method(self, x0: Tensor) -> str:
        """The path ``auto`` takes for this batch: brute force where materializing the candidates is
        cheaper than the projection's fixed cost of several small kernels (tiny CPU batches; small
        ``k * D`` on CUDA), the projection everywhere else."""
        if self.method != "auto":
            return self.method
        if self.target_reduction is not None:
            return "projection"
        dim = math.prod(x0.shape[1:])
        if x0.device.type == "cuda":
            small = self.k * dim <= self._CUDA_BRUTEFORCE_MAX_KD
        else:
            small = x0.shape[0] * self.k * dim <= self._CPU_BRUTEFORCE_MAX_ELEMENTS
        return "bruteforce" if small else "projection"

    def _assign(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        if self.shuffle_pairs:
            x0 = x0[derangement(x0.shape[0], generator, x0.device)]
        if self.target_reduction is not None:
            noise, self.last_k = _knn_projection(
                x0, self.k, generator, self.keep_norm, self.target_reduction, self.k_max
            )
            return noise
        self.last_k = self.k
        if self.k == 1:  # plain noise (its norm is already chi(D), so keep_norm changes nothing)
            return self._draw(x0, generator)
        if self.resolve_method(x0) == "bruteforce":
            return _knn_bruteforce(x0, self.k, generator, self.max_elements, self.keep_norm)
        return _knn_projection(x0, self.k, generator, self.keep_norm)[0]


def derangement(n: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """A random permutation of ``range(n)`` without fixed points for n >= 2 (one random cycle through all
    n indices); ``[0]`` for n = 1.

    Returns:
        Tensor, shape (n,), int64: ``partner[i]`` is the row that row i is paired with.
    """
    order = torch.randperm(n, generator=generator, device=device)  # (n,)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # each element of the cycle points at the next one
    return partner


def _choose_k(
    r: Tensor, dim: int, target: float, k_max: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Choose k for a batch from candidates' (a, c) statistics alone, and the nearest of k per row.

    A pool of K candidates per row is drawn, doubling K (from 8) until the estimated reduction at
    k = K / 2 reaches ``target`` or K reaches ``k_max``. For each k <= K the expected nearest-of-k
    distance of a row is estimated without bias from its pool by the U-statistic over all k-subsets
    (``_expected_nearest``), which is non-increasing in k; bisection finds the smallest k whose batch mean
    reduction reaches the target. Each row then takes the nearest of its first k_i pool columns (k_i
    i.i.d. candidates), k_i = k with probability p and k - 1 otherwise, p interpolating the estimated
    reductions at k - 1 and k to the target. Cost O(B K log K) with K <= 2 k (or ``k_max``).
    Args: r (B, 1) float32 radii. Returns (a (B, K), c (B, K), best (B, 1) column of each row's nearest,
    effective k = k - 1 + p, a float).
    """
    batch = r.shape[0]
    baseline = float(expected_gaussian_distance(r[:, 0], dim).mean())  # mean E|x - n|, n ~ N(0, I)
    a_parts: list[Tensor] = []
    c_parts: list[Tensor] = []
    drawn, size = 0, min(8, k_max)
    while True:
        add = size - drawn
        a_parts.append(torch.randn(batch, add, device=r.device, generator=generator))  # (B, add)
        c_parts.append(sample_chi2(dim - 1, (batch, add), generator=generator, device=r.device))  # (B, add)
        drawn = size
        a, c = torch.cat(a_parts, dim=1), torch.cat(c_parts, dim=1)  # (B, K)
        dist = (r - a).square().add_(c).double().sqrt_()  # (B, K) = |x - n|
        ordered = dist.sort(dim=1).values  # (B, K)

        def reduction(k: int, ordered: Tensor = ordered) -> float:
            return 1.0 - float(_expected_nearest(ordered, k).mean()) / baseline

        if drawn >= k_max or reduction(drawn // 2) >= target:
            break
        size = min(2 * drawn, k_max)
    if reduction(drawn) < target:
        k = drawn
        warnings.warn(
            f"knn target_reduction={target} not reached with k_max={k_max} candidates (reduction "
            f"{reduction(drawn):.4f} at dimension {dim}); raise k_max",
            RuntimeWarning,
            stacklevel=4,
        )
        return a, c, dist.argmin(dim=1, keepdim=True), float(k)
    lo, hi = 1, drawn
    while lo < hi:  # smallest k with reduction(k) >= target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reduction(mid) >= target else (mid + 1, hi)
    k = lo
    if k == 1:
        return a, c, dist[:, :1].argmin(dim=1, keepdim=True), 1.0
    # Integer k moves the reduction in coarse steps at low dimension (D = 32: 0% at k = 1, ~7% at k = 2),
    # so each row takes k with probability p and k - 1 otherwise, p chosen to meet the target exactly.
    below, above = reduction(k - 1), reduction(k)
    p = min(max((target - below) / max(above - below, 1e-12), 0.0), 1.0)
    use_k = (k - 1) + (torch.rand(batch, 1, device=r.device, generator=generator) < p).long()  # (B, 1)
    columns = torch.arange(drawn, device=r.device)[None, :]  # (1, K)
    best = dist.masked_fill(columns >= use_k, math.inf)[:, :k].argmin(dim=1, keepdim=True)  # (B, 1)
    return a, c, best, (k - 1) + p


def _expected_nearest(ordered: Tensor, k: int) -> Tensor:
    """E[min of k of a row's K values drawn without replacement], exactly, from the row sorted ascending:
    ``sum_j d_(j) C(K - j, k - 1) / C(K, k)``. Args: ordered (B, K) float64, 1 <= k <= K. Returns (B,)."""
    size = ordered.shape[1]
    j = torch.arange(1, size + 1, dtype=torch.float64, device=ordered.device)  # (K,)
    valid = j <= size - k + 1
    rest = torch.where(valid, size - j - k + 2, torch.ones_like(j))
    log_w = (
        math.log(k)
        + torch.lgamma(size - j + 1)
        + math.lgamma(size - k + 1)
        - torch.lgamma(rest)
        - math.lgamma(size + 1)
    )
    weights = torch.where(valid, log_w.exp(), torch.zeros_like(j))  # (K,), sums to 1
    return ordered @ weights


def _knn_projection(
    x0: Tensor,
    k: int,
    generator: torch.Generator,
    keep_norm: bool = False,
    target: float | None = None,
    k_max: int = 4096,
) -> tuple[Tensor, float]:
    """Nearest-of-k by the projection method; returns the noise (B, *dims) and the (effective) k used."""
    work = _work_dtype(x0.dtype)
    batch = x0.shape[0]
    x = x0.reshape(batch, -1).to(work)  # (B, D)
    dim = x.shape[1]
    radius = x.norm(dim=1, keepdim=True)  # (B, 1)
    at_origin = radius[:, 0] <= _TINY_NORM
    if bool(at_origin.any()):
        # Every direction is equally near the origin: give those rows a random unit direction.
        x, radius = x.clone(), radius.clone()
        g0 = torch.randn(int(at_origin.sum()), dim, dtype=work, device=x.device, generator=generator)
        x[at_origin] = g0 / g0.norm(dim=1, keepdim=True).clamp_min(_TINY_NORM)
        radius[at_origin] = 1.0
    # Sufficient statistics of k candidates per sample (float32: ties closer than float32's resolution of
    # |x - n|^2 are broken arbitrarily, as any float32 distance computation would).
    r = torch.where(at_origin[:, None], 0.0, radius).float()  # (B, 1)
    if target is None:
        a = torch.randn(batch, k, device=x.device, generator=generator)  # (B, k)
        c = sample_chi2(dim - 1, (batch, k), generator=generator, device=x.device)  # (B, k)
        dist2 = (r - a).square_().add_(c)  # (B, k) = |x - n|^2
        best = dist2.argmin(dim=1, keepdim=True)  # (B, 1)
    else:
        a, c, best, k = _choose_k(r, dim, target, k_max, generator)
    a_star = a.gather(1, best).to(work)  # (B, 1)
    c_star = c.gather(1, best).to(work)  # (B, 1)
    if keep_norm:
        # |n*|^2 = a*^2 + c*; rescale to an independent chi(D) norm: r_new^2 ~ chi^2(D).
        norm_sq = sample_chi2(dim, (batch, 1), generator=generator, device=x.device).to(work)  # (B, 1)
        ratio = norm_sq / (a_star.square() + c_star).clamp_min(_TINY_NORM)  # (B, 1)
        a_star, c_star = a_star * ratio.sqrt(), c_star * ratio
    g = torch.randn(batch, dim, dtype=work, device=x.device, generator=generator)  # (B, D)
    # n* = a* x_hat + sqrt(c*) u, u uniform on the sphere orthogonal to x_hat (c* = 0 when D == 1).
    noise = combine_with_orthogonal(g, x, radius, a_star, c_star)  # (B, D)
    return noise.reshape(x0.shape), k


def _knn_bruteforce(
    x0: Tensor, k: int, generator: torch.Generator, max_elements: int, keep_norm: bool = False
) -> Tensor:
    work = _work_dtype(x0.dtype)
    batch = x0.shape[0]
    x = x0.reshape(batch, -1).to(work)  # (B, D)
    dim = x.shape[1]
    rows = max(1, max_elements // (k * dim))
    out = torch.empty_like(x)
    for start in range(0, batch, rows):
        xs = x[start : start + rows]  # (b, D)
        cand = torch.randn(xs.shape[0], k, dim, dtype=work, device=x.device, generator=generator)  # (b, k, D)
        dist2 = (cand - xs[:, None, :]).square().sum(dim=2)  # (b, k)
        best = dist2.argmin(dim=1)  # (b,)
        out[start : start + rows] = cand[torch.arange(xs.shape[0], device=x.device), best]
    if keep_norm:  # same law as the projection's: direction kept, norm replaced by an independent chi(D)
        norm_sq = sample_chi2(dim, (batch, 1), generator=generator, device=x.device).to(work)  # (B, 1)
        out.mul_((norm_sq / out.square().sum(dim=1, keepdim=True).clamp_min(_TINY_NORM)).sqrt_())
    return out.reshape(x0.shape)


def knn_bruteforce(x0: Tensor, k: int, generator: torch.Generator | None = None, max_elements: int = 2**25) -> Tensor:
    """Reference nearest-of-k: materialize k candidates per sample (in chunks) and take the nearest.

    Args:
        x0: Tensor, shape (B, *dims).
    Returns:
        Tensor, shape (B, *dims), dtype of x0.
    """
    return NearestOfK(k=k, method="bruteforce", max_elements=max_elements)(x0, generator)


@dataclass
class SinkhornAssignment(Assigner):
    """``sinkhorn``: entropic minibatch OT between the batch and B Gaussian noises.

    The cost is standardized (minus its mean, divided by its standard deviation) so that ``reg`` is in
    units of the cost's spread: distances in high dimension concentrate, and a raw or max-normalized cost
    with a small ``reg`` gives an almost uniform plan (no pairing at all). Each sample's noise is drawn
    from its row of the plan (with replacement: two samples may receive the same noise). Small ``reg``
    approaches the exact assignment; large ``reg`` approaches independent pairing. ``last_marginal_error``
    records how far the last plan's row sums were from uniform.
    """

    name: ClassVar[str] = "sinkhorn"
    reg: float = 0.05
    """Entropic regularization, relative to the standardized cost (> 0)."""
    cost: str = "sqeuclidean"
    """``"sqeuclidean"`` (minibatch OT, as torchcfm) or ``"l2"``."""
    n_iters: int = 500
    """Maximum Sinkhorn iterations."""
    tol: float = 1e-3
    """Stop when the L1 error of the row marginals (relative to 1) falls below this."""
    last_marginal_error: float = field(default=float("nan"), init=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reg > 0:
            raise ValueError(f"sinkhorn option reg={self.reg!r} is invalid; it must be > 0")
        if self.cost not in COST_METRICS:
            raise ValueError(f"sinkhorn option cost={self.cost!r} is invalid; choose one of {COST_METRICS}")
        if self.n_iters < 1:
            raise ValueError(f"sinkhorn option n_iters={self.n_iters} is invalid; it must be >= 1")

    def _assign(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        noise = self._draw(x0, generator)  # (B, *dims)
        batch = x0.shape[0]
        if batch == 1:
            return noise
        cost = pairwise_cost(x0, noise, self.cost)  # (B, B)
        cost = (cost - cost.mean()) / cost.std().clamp_min(1e-12)
        log_k = -cost / self.reg  # (B, B)
        _, g, self.last_marginal_error, converged = _sinkhorn_potentials(log_k, self.n_iters, self.tol)
        if not converged:
            warnings.warn(
                f"sinkhorn did not converge in {self.n_iters} iterations (row-marginal error "
                f"{self.last_marginal_error:.2e} > tol {self.tol}); raise n_iters or reg",
                RuntimeWarning,
                stacklevel=3,
            )
        conditional = torch.softmax(log_k + g[None, :], dim=1)  # (B, B): row i = plan(i, .) / sum
        col = torch.multinomial(conditional, 1, generator=generator).squeeze(1)  # (B,)
        return noise[col]


def _sinkhorn_potentials(log_k: Tensor, n_iters: int, tol: float) -> tuple[Tensor, Tensor, float, bool]:
    """Log-domain Sinkhorn between uniform marginals: potentials f (B,), g (B,) of the plan
    ``exp(log_k + f[:, None] + g[None, :])``, its row-marginal L1 error (relative to 1) and whether it
    fell below ``tol``. Columns are exact after every iteration (g is updated last)."""
    batch = log_k.shape[0]
    log_marginal = -math.log(batch)
    f = torch.zeros(batch, dtype=log_k.dtype, device=log_k.device)
    g = torch.zeros_like(f)
    error = math.nan
    for it in range(n_iters):
        f = log_marginal - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_marginal - torch.logsumexp(log_k + f[:, None], dim=0)
        if it % 10 == 9 or it == n_iters - 1:
            rows = torch.logsumexp(log_k + f[:, None] + g[None, :], dim=1).exp()  # (B,)
            error = float((rows * batch - 1.0).abs().sum() / batch)
            if error < tol:
                return f, g, error, True
    return f, g, error, False


def sinkhorn_plan(cost: Tensor, reg: float, n_iters: int = 500, tol: float = 1e-3) -> tuple[Tensor, float]:
    """Entropic optimal-transport plan between two uniform marginals (1/B each), as the ``sinkhorn``
    assigner computes it (the cost is used as given; the assigner standardizes it first).

    Args:
        cost: Tensor, shape (B, B).
        reg: entropic regularization (> 0), in the cost's units.
        n_iters: maximum iterations; tol: stop when the row-marginal L1 error (relative to 1) is below it.
    Returns:
        (plan, error): Tensor, shape (B, B), summing to 1, columns summing to 1/B; and the row error.
    """
    if not reg > 0:
        raise ValueError(f"sinkhorn reg={reg!r} is invalid; it must be > 0")
    log_k = -cost / reg  # (B, B)
    f, g, error, _ = _sinkhorn_potentials(log_k, n_iters, tol)
    return (log_k + f[:, None] + g[None, :]).exp(), error
