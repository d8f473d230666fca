"""Statistics of a comparison, as pure functions of arrays (no files, no global random state).

Shapes: ``S`` seeds, ``E`` evaluations, ``L`` logged training rows.

- Learning curves: mean over seeds and a bootstrap percentile band (seeds resampled with replacement).
- Time to threshold: the first evaluation whose metric reaches the target (``inf`` when none does). A
  seed that never reaches it is *censored* at its budget (its last evaluation): the summary statistic is
  the **restricted mean** (mean of min(time, budget) over seeds), a lower bound of the plain mean, and the
  number of censored seeds is reported next to it.
- Speed-up of a method over the baseline: ratio of restricted means (baseline / method), with a bootstrap
  interval; seeds are resampled *jointly* (paired) when both methods ran the same seeds, since a seed fixes
  the initial weights and the data order of both.
- Diffusion Policy's table: per seed, the best evaluation and the mean of the last ``k``; mean and
  standard deviation over seeds.

Every bootstrap draws from ``numpy.random.default_rng([seed, crc32(tag)])``, so an interval depends only on
its inputs, the seed and its tag (not on what was computed before it).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ComparisonSummary",
    "Estimate",
    "MethodCurves",
    "MethodSummary",
    "best_and_last_k",
    "best_setting",
    "bootstrap_band",
    "compute_threshold",
    "diff_ci",
    "first_reach_index",
    "mean_ci",
    "ratio_ci",
    "restricted_mean_ci",
    "summarize",
    "time_to_threshold",
]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap interval.

    ``bound`` says how censoring (seeds that never reached the threshold) biases ``value``: ``""`` (no
    censoring), ``"lower"`` (the true value is at least this), ``"upper"`` (at most this) or ``"unknown"``.
    """

    value: float
    lo: float
    hi: float
    n: int
    n_censored: int = 0
    bound: str = ""

    def covers(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "value": self.value,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "n_censored": self.n_censored,
            "bound": self.bound,
        }


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode())])


def _quantiles(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring NaN; order statistics (no interpolation) so +-inf is safe."""
    alpha = (1.0 - ci) / 2.0
    lo = np.nanquantile(samples, alpha, axis=0, method="lower")
    hi = np.nanquantile(samples, 1.0 - alpha, axis=0, method="higher")
    return lo, hi


def bootstrap_band(
    values: np.ndarray, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, tag: str = "band"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and its bootstrap percentile interval, per column.

    Args:
        values: ndarray, shape (S, E) (or (S,)); NaN marks a missing value (ignored).
    Returns:
        (mean, lo, hi), each of shape (E,) (or scalars for 1-D input). With one seed, lo = hi = mean.
    """
    x = np.asarray(values, dtype=float)
    one_d = x.ndim == 1
    if one_d:
        x = x[:, None]
    s = x.shape[0]
    if s == 0:
        nan = np.full(x.shape[1], np.nan)
        return (nan[0], nan[0], nan[0]) if one_d else (nan, nan.copy(), nan.copy())
    with np.errstate(invalid="ignore"), _quiet_nan():
        mean = np.nanmean(x, axis=0)
        idx = _rng(seed, tag).integers(0, s, size=(n_boot, s))  # (n_boot, S)
        boot = np.nanmean(x[idx], axis=1)  # (n_boot, E)
        lo, hi = _quantiles(boot, ci)
    if one_d:
        return float(mean[0]), float(lo[0]), float(hi[0])
    return mean, lo, hi


class _quiet_nan:
    """Silence numpy's 'Mean of empty slice' / 'All-NaN slice' warnings (NaN is the intended result)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def mean_ci(values: np.ndarray, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, tag: str = "mean") -> Estimate:
    """Mean of per-seed values (S,) with a bootstrap interval."""
    x = np.asarray(values, dtype=float)
    mean, lo, hi = bootstrap_band(x, n_boot, ci, seed, tag)
    return Estimate(float(mean), float(lo), float(hi), int(np.isfinite(x).sum()))


def first_reach_index(values: np.ndarray, target: float, higher_is_better: bool) -> int | None:
    """Index of the first value that reaches ``target`` (>= when higher is better, <= otherwise); None if none.

    Args:
        values: ndarray, shape (E,), in evaluation order; NaN never reaches.
    """
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        hit = v >= target if higher_is_better else v <= target
    hits = np.flatnonzero(hit)
    return int(hits[0]) if hits.size else None


def time_to_threshold(times: np.ndarray, values: np.ndarray, target: float, higher_is_better: bool) -> float:
    """``times[i]`` of the first evaluation ``i`` reaching ``target``; ``inf`` when never reached.

    Args:
        times: ndarray, shape (E,): steps or wall-clock seconds of the evaluations.
        values: ndarray, shape (E,): the metric at those evaluations.
    """
    i = first_reach_index(values, target, higher_is_better)
    return math.inf if i is None else float(np.asarray(times, dtype=float)[i])


def compute_threshold(baseline: np.ndarray, fraction: float, higher_is_better: bool, mode: str = "ratio") -> float:
    """The target level of the metric, from the baseline method's curves.

    Args:
        baseline: ndarray, shape (S, E): the baseline's metric per seed and evaluation.
        fraction: in (0, 1].
        mode: ``"ratio"``: ``fraction * final`` (higher is better) or ``final / fraction`` (lower is better),
            where ``final`` is the seed-mean of the last evaluation. ``"progress"``: ``first + fraction *
            (final - first)`` with ``first`` the seed-mean of the first evaluation (either direction).
            ``"absolute"``: ``fraction`` itself is the target level (a competence threshold).
    """
    x = np.asarray(baseline, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"baseline curves have shape {x.shape}; expected (seeds, evaluations)")
    with _quiet_nan():
        final = float(np.nanmean(x[:, -1]))
        first = float(np.nanmean(x[:, 0]))
    if mode == "ratio":
        return fraction * final if higher_is_better else final / fraction
    if mode == "progress":
        return first + fraction * (final - first)
    if mode == "absolute":
        return float(fraction)
    raise ValueError(f"threshold_mode={mode!r} is invalid; choose 'ratio', 'progress' or 'absolute'")


def restricted_mean_ci(
    times: np.ndarray, budgets: np.ndarray, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, tag: str = "rmean"
) -> Estimate:
    """Restricted mean of times to threshold: ``inf`` (never reached) counts as the seed's budget.

    Args:
        times: ndarray, shape (S,): per-seed time to threshold (``inf`` when not reached).
        budgets: ndarray, shape (S,) or scalar: the last evaluation's time of each seed.
    Returns:
        Estimate with ``n_censored`` seeds at their budget; ``bound="lower"`` when any is censored.
    """
    t = np.asarray(times, dtype=float)
    b = np.broadcast_to(np.asarray(budgets, dtype=float), t.shape)
    censored = ~np.isfinite(t)
    capped = np.where(censored, b, np.minimum(t, b))
    mean, lo, hi = bootstrap_band(capped, n_boot, ci, seed, tag)
    n_c = int(censored.sum())
    return Estimate(float(mean), float(lo), float(hi), int(t.size), n_c, "lower" if n_c else "")


def _resample_pair(
    a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int, seed: int, tag: str
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap means of ``a`` and ``b`` (each (n_boot,)); joint indices when ``paired``."""
    rng = _rng(seed, tag)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = ia if paired else rng.integers(0, b.size, size=(n_boot, b.size))
    return a[ia].mean(axis=1), b[ib].mean(axis=1)


def ratio_ci(
    numerator: np.ndarray,
    denominator: np.ndarray,
    paired: bool,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    tag: str = "ratio",
) -> Estimate:
    """``mean(numerator) / mean(denominator)`` with a bootstrap interval (e.g. baseline / method times).

    Args:
        numerator: ndarray, shape (S1,); denominator: ndarray, shape (S2,); both finite (censor first).
        paired: resample seed indices jointly (requires S1 == S2, entries aligned by seed).
    """
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if paired and a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs aligned seeds, got {a.shape} and {b.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(a.mean() / b.mean())
        ma, mb = _resample_pair(a, b, paired, n_boot, seed, tag)
        lo, hi = _quantiles(ma / mb, ci)
    return Estimate(value, float(lo), float(hi), int(min(a.size, b.size)))


def diff_ci(
    a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, tag: str = "diff"
) -> Estimate:
    """``mean(a) - mean(b)`` with a bootstrap interval (paired when the seeds are aligned)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired and x.shape != y.shape:
        raise ValueError(f"paired bootstrap needs aligned seeds, got {x.shape} and {y.shape}")
    ma, mb = _resample_pair(x, y, paired, n_boot, seed, tag)
    lo, hi = _quantiles(ma - mb, ci)
    return Estimate(float(x.mean() - y.mean()), float(lo), float(hi), int(min(x.size, y.size)))


def best_and_last_k(values: np.ndarray, k: int, higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: the best evaluation and the mean of the last ``k`` (Diffusion Policy's table).

    Args:
        values: ndarray, shape (S, E); NaN is ignored.
    Returns:
        (best, last_k_mean), each of shape (S,).
    """
    x = np.asarray(values, dtype=float)
    with _quiet_nan():
        best = np.nanmax(x, axis=1) if higher_is_better else np.nanmin(x, axis=1)
        last = np.nanmean(x[:, -k:], axis=1)
    return best, last


def best_setting(values: np.ndarray, higher_is_better: bool) -> int | None:
    """Index of the setting with the best mean over seeds (the first one on a tie).

    Only settings with a finite value for every seed compete, so every candidate's mean is taken over the
    same seeds.

    Args:
        values: ndarray, shape (P, S): a metric of P settings on S seeds (NaN: missing).
    Returns:
        The index in ``0..P-1``, or None when no setting has a value for every seed.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        return None
    complete = np.isfinite(x).all(axis=1)  # (P,)
    if not complete.any():
        return None
    worst = -math.inf if higher_is_better else math.inf
    means = np.where(complete, np.where(complete[:, None], x, 0.0).mean(axis=1), worst)  # (P,)
    return int(np.argmax(means) if higher_is_better else np.argmin(means))


# -- a whole comparison -----------------------------------------------------------------------------


@dataclass
class MethodCurves:
    """Everything measured for one method, aligned over its seeds.

    Attributes:
        seeds: ndarray, shape (S,), sorted.
        steps: ndarray, shape (E,): evaluation steps common to all seeds.
        values: ndarray, shape (S, E): the compared metric.
        wall: ndarray, shape (S, E): training wall-clock seconds at each evaluation.
        extra: table metrics, each ndarray (S, E).
        loss_steps: ndarray, shape (L,); loss: ndarray, shape (S, L) (NaN where a seed has no row).
        diagnostics: per-seed means of miscibility statistics, each ndarray (S,).
        samples_per_s: ndarray, shape (S,): training throughput (median of the logged rows).
    """

    label: str
    seeds: np.ndarray
    steps: np.ndarray
    values: np.ndarray
    wall: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    loss_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)
    samples_per_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.seeds = np.asarray(self.seeds, dtype=int)
        self.steps = np.asarray(self.steps, dtype=float)
        self.values = np.asarray(self.values, dtype=float).reshape(len(self.seeds), len(self.steps))
        self.wall = np.asarray(self.wall, dtype=float).reshape(self.values.shape)

    @property
    def n_seeds(self) -> int:
        return int(self.seeds.size)


@dataclass
class MethodSummary:
    """The statistics of one method (see ``summarize``)."""

    label: str
    n_seeds: int
    seeds: list[int]
    steps: np.ndarray
    band: tuple[np.ndarray, np.ndarray, np.ndarray]
    wall_x: np.ndarray
    steps_to: np.ndarray
    wall_to: np.ndarray
    step_budget: np.ndarray
    wall_budget: np.ndarray
    steps_est: Estimate | None = None
    wall_est: Estimate | None = None
    speedup_steps: Estimate | None = None
    speedup_wall: Estimate | None = None
    table: dict[str, dict[str, float]] = field(default_factory=dict)
    delta_last_k: Estimate | None = None
    final_loss: tuple[float, float] = (math.nan, math.nan)
    loss_band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    loss_steps: np.ndarray | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    samples_per_s: float = math.nan
    verdict: str = ""
    gain: str = ""


@dataclass
class ComparisonSummary:
    """All methods' statistics, the threshold and the notes that qualify them."""

    metric: str
    higher_is_better: bool
    baseline: str
    threshold: float | None
    threshold_fraction: float
    threshold_mode: str
    last_k: int
    ci: float
    methods: dict[str, MethodSummary]
    notes: list[str] = field(default_factory=list)


def _censor_bound(num_censored: int, den_censored: int) -> str:
    if num_censored and den_censored:
        return "unknown"
    if num_censored:
        return "lower"  # the baseline's restricted mean underestimates its time: the ratio is at least this
    if den_censored:
        return "upper"
    return ""


def _paired(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))


def summarize(
    curves: dict[str, MethodCurves],
    baseline: str,
    *,
    higher_is_better: bool,
    threshold: float = 0.9,
    threshold_mode: str = "ratio",
    last_k: int = 10,
    table_metrics: dict[str, bool] | None = None,
    metric: str = "metric",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> ComparisonSummary:
    """Every statistic of the comparison (curves with bands, times to threshold, speed-ups, DP table).

    Args:
        curves: label -> the method's curves (methods without seeds are skipped with a note).
        baseline: label of the vanilla method (defines the threshold and the speed-up denominator).
    """
    notes: list[str] = []
    boot = {"n_boot": n_boot, "ci": ci, "seed": seed}
    usable = {k: c for k, c in curves.items() if c.n_seeds and c.steps.size}
    for label in curves:
        if label not in usable:
            notes.append(f"{label}: no finished run with evaluations; left out of the tables")
    base = usable.get(baseline)
    target = _target(base, baseline, threshold, higher_is_better, threshold_mode, notes)
    metrics = {metric: higher_is_better, **dict(table_metrics or {})}
    out = {
        label: _method_summary(label, c, target, metric, metrics, higher_is_better, last_k, boot)
        for label, c in usable.items()
    }
    if base is not None:
        _compare_with_baseline(out, usable, baseline, target, higher_is_better, last_k, ci, boot)
    return ComparisonSummary(
        metric=metric,
        higher_is_better=higher_is_better,
        baseline=baseline,
        threshold=target,
        threshold_fraction=threshold,
        threshold_mode=threshold_mode,
        last_k=last_k,
        ci=ci,
        methods=out,
        notes=notes,
    )


def _target(
    base: MethodCurves | None, baseline: str, threshold: float, higher_is_better: bool, mode: str, notes: list[str]
) -> float | None:
    """The threshold from the baseline's curves (None when there is none); explains problems in ``notes``."""
    if base is None:
        notes.append(f"the baseline {baseline!r} has no finished run: no threshold, no speed-ups")
        return None
    target = compute_threshold(base.values, threshold, higher_is_better, mode)
    if not math.isfinite(target):
        notes.append(f"the threshold is not finite ({target}); steps to threshold are not computed")
        return None
    with _quiet_nan():
        first_mean = float(np.nanmean(base.values[:, 0]))
    reached_first = first_mean >= target if higher_is_better else first_mean <= target
    if reached_first:
        notes.append(
            f"the baseline's mean at its first evaluation ({first_mean:.4g}, step {base.steps[0]:g}) already "
            f"meets the threshold ({target:.4g}): steps to threshold cannot show a speed-up here; evaluate "
            "earlier (train.eval_every), use threshold_mode=progress, or a metric that starts low"
        )
    return target


def _method_summary(
    label: str,
    c: MethodCurves,
    target: float | None,
    metric: str,
    metrics: dict[str, bool],
    higher_is_better: bool,
    last_k: int,
    boot: dict[str, float | int],
) -> MethodSummary:
    """One method's band, times to threshold (restricted means), table, loss and diagnostics."""
    with _quiet_nan():
        wall_x = np.nanmean(c.wall, axis=0)
    step_budget = np.full(c.n_seeds, c.steps[-1])
    wall_budget = c.wall[:, -1].copy()
    if target is not None:
        steps_to = np.array([time_to_threshold(c.steps, v, target, higher_is_better) for v in c.values])
        wall_to = np.array([time_to_threshold(w, v, target, higher_is_better) for w, v in zip(c.wall, c.values)])
    else:
        steps_to = wall_to = np.full(c.n_seeds, math.nan)
    s = MethodSummary(
        label=label,
        n_seeds=c.n_seeds,
        seeds=[int(x) for x in c.seeds],
        steps=c.steps,
        band=bootstrap_band(c.values, tag=f"band/{label}", **boot),
        wall_x=wall_x,
        steps_to=steps_to,
        wall_to=wall_to,
        step_budget=step_budget,
        wall_budget=wall_budget,
    )
    if target is not None:
        s.steps_est = restricted_mean_ci(steps_to, step_budget, tag=f"steps/{label}", **boot)
        s.wall_est = restricted_mean_ci(wall_to, wall_budget, tag=f"wall/{label}", **boot)
    for name, hib in metrics.items():
        vals = c.values if name == metric else c.extra.get(name)
        if vals is None or not np.isfinite(vals).any():
            continue
        best, last = best_and_last_k(vals, last_k, hib)
        final = np.array([_last_finite(row) for row in vals])
        s.table[name] = {
            "final_mean": float(np.nanmean(final)),
            "final_std": _std(final),
            "best_mean": float(np.nanmean(best)),
            "best_std": _std(best),
            "last_mean": float(np.nanmean(last)),
            "last_std": _std(last),
        }
    if c.loss.size:
        s.loss_steps = c.loss_steps
        s.loss_band = bootstrap_band(c.loss, tag=f"loss/{label}", **boot)
        final = np.array([_last_finite(row) for row in c.loss])
        s.final_loss = (float(np.nanmean(final)), _std(final))
    s.diagnostics = {k: float(np.nanmean(v)) for k, v in c.diagnostics.items() if np.isfinite(v).any()}
    if c.samples_per_s.size and np.isfinite(c.samples_per_s).any():
        s.samples_per_s = float(np.nanmean(c.samples_per_s))
    return s


def _compare_with_baseline(
    out: dict[str, MethodSummary],
    usable: dict[str, MethodCurves],
    baseline: str,
    target: float | None,
    higher_is_better: bool,
    last_k: int,
    ci: float,
    boot: dict[str, float | int],
) -> None:
    """Fill each method's last-k difference, speed-ups (steps and wall time) and verdict, in place."""
    b, base = out[baseline], usable[baseline]
    for label, s in out.items():
        c = usable[label]
        paired = _paired(c.seeds, base.seeds)
        _, last_m = best_and_last_k(c.values, last_k, higher_is_better)
        _, last_b = best_and_last_k(base.values, last_k, higher_is_better)
        if label != baseline:
            s.delta_last_k = diff_ci(last_m, last_b, paired, tag=f"delta/{label}", **boot)
        if target is None:
            continue
        for kind, own, ref, own_budget, ref_budget in (
            ("steps", s.steps_to, b.steps_to, s.step_budget, b.step_budget),
            ("wall", s.wall_to, b.wall_to, s.wall_budget, b.wall_budget),
        ):
            num = np.where(np.isfinite(ref), np.minimum(ref, ref_budget), ref_budget)
            den = np.where(np.isfinite(own), np.minimum(own, own_budget), own_budget)
            est = ratio_ci(num, den, paired, tag=f"speedup-{kind}/{label}", **boot)
            bound = _censor_bound(int((~np.isfinite(ref)).sum()), int((~np.isfinite(own)).sum()))
            est = Estimate(est.value, est.lo, est.hi, est.n, int((~np.isfinite(own)).sum()), bound)
            if kind == "steps":
                s.speedup_steps = est
            else:
                s.speedup_wall = est
    for label, s in out.items():
        if label != baseline:
            s.verdict, s.gain = _verdict(s, baseline, higher_is_better, last_k, ci)


def _std(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def _last_finite(row: np.ndarray) -> float:
    finite = np.flatnonzero(np.isfinite(row))
    return float(row[finite[-1]]) if finite.size else math.nan


def _verdict(s: MethodSummary, baseline: str, higher_is_better: bool, last_k: int, ci: float) -> tuple[str, str]:
    """A plain sentence about a method against the baseline, and a one-word gain class.

    The gain class is ``faster``, ``better``, ``slower``, ``worse``, ``none`` (no detectable gain) or
    ``anecdotal`` (one seed: no interval).
    """
    pct = f"{100 * ci:g}%"
    parts: list[str] = []
    sp, d = s.speedup_steps, s.delta_last_k
    if s.n_seeds < 2 or (sp is not None and sp.n < 2):
        if s.steps_est is not None and s.steps_est.n_censored == s.steps_est.n:
            parts.append(f"never reached the threshold within {s.step_budget.max():g} steps")
        elif sp is not None:
            parts.append(f"reaches the threshold {_fmt_ratio(sp)} as fast as {baseline}")
        if d is not None:
            parts.append(f"last-{last_k} mean differs by {d.value:+.4g}")
        text = "; ".join(parts) or "no comparison possible"
        return (
            f"{s.label}: one seed only, no interval: {text} (anecdotal; run more seeds before concluding).",
            "anecdotal",
        )
    faster = sp is not None and sp.lo > 1.0 and sp.bound != "upper"
    slower = sp is not None and sp.hi < 1.0 and sp.bound != "lower"
    # the improvement interval: method - baseline when higher is better, baseline - method otherwise
    gain_lo, gain_hi = ((d.lo, d.hi) if higher_is_better else (-d.hi, -d.lo)) if d is not None else (0.0, 0.0)
    better, worse = gain_lo > 0, gain_hi < 0
    if s.steps_est is not None and s.steps_est.n_censored == s.steps_est.n:
        parts.append(f"no seed reached the threshold within {s.step_budget.max():g} steps")
    if sp is not None:
        interval = f"{pct} CI {sp.lo:.2f}-{sp.hi:.2f}"
        if faster:
            parts.append(f"reaches the threshold {_fmt_ratio(sp)} as fast as {baseline} ({interval})")
        elif slower:
            parts.append(f"is SLOWER than {baseline}: {_fmt_ratio(sp)} its speed to the threshold ({interval})")
        else:
            parts.append(f"no detectable speed-up over {baseline} ({_fmt_ratio(sp)}, {interval} includes 1)")
    w = s.speedup_wall
    if w is not None and sp is not None:
        clause = f"in wall time {_fmt_ratio(w)} ({pct} CI {w.lo:.2f}-{w.hi:.2f})"
        if w.hi < 1.0 and w.bound != "lower":
            clause += f", i.e. slower than {baseline} by the clock"
        parts.append(clause)
    if d is not None:
        interval = f"{pct} CI {d.lo:+.4g} to {d.hi:+.4g}"
        if better:
            parts.append(f"better final metric (last-{last_k} mean {d.value:+.4g}, {interval})")
        elif worse:
            parts.append(f"WORSE final metric (last-{last_k} mean {d.value:+.4g}, {interval})")
        else:
            parts.append(f"no detectable difference in the last-{last_k} mean ({d.value:+.4g}, {interval})")
    if slower or worse:
        gain = "slower" if slower else "worse"
    elif faster:
        gain = "faster"
    elif better:
        gain = "better"
    else:
        gain = "none"
    text = f"{s.label}: " + "; ".join(parts) + "."
    if gain == "none":
        text += f" No gain over {baseline} was measured on this task at this budget ({s.n_seeds} seeds)."
    return text, gain


def _fmt_ratio(e: Estimate) -> str:
    prefix = {"lower": ">= ", "upper": "<= ", "unknown": "~", "": ""}[e.bound]
    return f"{prefix}{e.value:.2f}x"
