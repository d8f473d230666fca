"""The noise-assignment core: exactness, distributions, determinism and errors.

Statistical checks use fixed seeds; two-sample KS tests use alpha = 1e-3 (stated per test).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffpolicy_immix.immiscible import (
    ASSIGNERS,
    expected_gaussian_distance,
    knn_bruteforce,
    make_assigner,
    miscibility_stats,
    pairwise_cost,
    sample_chi2,
    solve_assignment,
)

KS_ALPHA = 1e-3
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def data(batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, dim, generator=gen(seed)) * 2 - 1


# --- lsa -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("solver", ["scipy", "lapjv"])
@pytest.mark.parametrize("batch", [2, 5, 7])
def test_assignment_is_optimal_over_all_permutations(metric: str, solver: str, batch: int) -> None:
    x = data(batch, 6, seed=batch)
    n = torch.randn(batch, 6, generator=gen(100 + batch))
    exact = torch.cdist(x.double(), n.double()) ** (1 if metric == "l2" else 2)
    col = solve_assignment(pairwise_cost(x, n, metric), solver)
    best = min(sum(float(exact[i, p[i]]) for i in range(batch)) for p in itertools.permutations(range(batch)))
    got = float(exact[torch.arange(batch), col].sum())
    assert got == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean"])
def test_lsa_output_is_a_permutation_of_the_drawn_noise(metric: str) -> None:
    x = data(64, 12)
    noise = make_assigner("lsa", cost=metric)(x, gen(3))
    drawn = make_assigner("none")(x, gen(3))  # the same draw, unpermuted
    key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
    torch.testing.assert_close(key(noise), key(drawn), rtol=0, atol=0)
    assert not torch.equal(noise, drawn)  # it did permute


def test_lsa_reduces_distance_more_than_random_and_costs_differ() -> None:
    x = data(128, 8)
    l2 = make_assigner("lsa", cost="l2")(x, gen(1))
    sq = make_assigner("lsa", cost="sqeuclidean")(x, gen(1))
    assert miscibility_stats(x, l2)["distance_reduction_pct"] > 15.0
    assert not torch.equal(l2, sq)  # the paper's L2 and the OT squared cost give different pairings


def test_pairwise_cost_matches_cdist_and_low_precision_is_close() -> None:
    x, n = data(50, 300), torch.randn(40, 300, generator=gen(2))
    torch.testing.assert_close(pairwise_cost(x, n, "l2"), torch.cdist(x, n), rtol=1e-4, atol=1e-3)
    bf16 = pairwise_cost(x, n, "l2", dtype="bfloat16")
    assert (bf16 - torch.cdist(x, n)).abs().max() < 0.5  # rounded, not wrong
    noise_bf16 = make_assigner("lsa", cost_dtype="bfloat16")(data(256, 300), gen(5))
    noise_fp32 = make_assigner("lsa")(data(256, 300), gen(5))
    red16 = miscibility_stats(data(256, 300), noise_bf16)["distance_reduction_pct"]
    red32 = miscibility_stats(data(256, 300), noise_fp32)["distance_reduction_pct"]
    assert red16 == pytest.approx(red32, abs=0.05)  # bf16 loses at most a sliver of the gain


# --- knn ---------------------------------------------------------------------------------------------


def _selection_stats(x: torch.Tensor, noise: torch.Tensor) -> dict[str, np.ndarray]:
    unit = x / x.norm(dim=1, keepdim=True)
    return {
        "distance": (x - noise).norm(dim=1).numpy(),
        "projection": (noise * unit).sum(1).numpy(),
        "norm": noise.norm(dim=1).numpy(),
    }


@pytest.mark.parametrize("dim", [2, 32, 3072])
@pytest.mark.parametrize("k", [2, 16, 64])
def test_knn_projection_matches_bruteforce_in_distribution(dim: int, k: int) -> None:
    """Two-sample KS (alpha = 1e-3) on selected distance, projection onto x_hat and noise norm."""
    n = 1500 if dim < 3072 else 600
    base = data(3, dim, seed=dim + k) * 1.5  # three distinct data points, each repeated
    x = base.repeat_interleave(n // 3, dim=0)
    proj = make_assigner("knn", k=k, method="projection")(x, gen(10 + k))
    brute = knn_bruteforce(x, k, gen(20 + k))
    sp, sb = _selection_stats(x, proj), _selection_stats(x, brute)
    for name in sp:
        p = stats.ks_2samp(sp[name], sb[name]).pvalue
        assert p > KS_ALPHA, f"{name}: KS p={p:.2e} at D={dim}, k={k}"


def test_ks_check_has_power_to_see_a_different_k() -> None:
    """The distribution test above is not vacuous: it separates k=2 from k=4 at D=32."""
    x = data(1, 32).repeat(3000, 1)
    d2 = (x - make_assigner("knn", k=2)(x, gen(1))).norm(dim=1).numpy()
    d4 = (x - make_assigner("knn", k=4)(x, gen(2))).norm(dim=1).numpy()
    assert stats.ks_2samp(d2, d4).pvalue < KS_ALPHA


def test_knn_k1_is_exactly_plain_gaussian_noise() -> None:
    x = data(33, 17)
    torch.testing.assert_close(make_assigner("knn", k=1)(x, gen(4)), make_assigner("none")(x, gen(4)))


@pytest.mark.parametrize("name,options", [("none", {}), ("knn", {"k": 1})])
def test_gaussianity(name: str, options: dict) -> None:
    """Coordinates are N(0, 1): KS p > 1e-3, mean within 0.01, variance within 0.01 (200k values)."""
    x = data(400, 500)
    noise = make_assigner(name, **options)(x, gen(7)).flatten().numpy()
    assert stats.kstest(noise, "norm").pvalue > KS_ALPHA
    assert abs(noise.mean()) < 0.01 and abs(noise.var() - 1) < 0.01


def test_knn_selected_noise_shrinks_more_in_low_dimension() -> None:
    """The paper-facing caveat: selected noise norm shrinks several % at D=32, ~1% at D=4096 (k=64)."""
    low = miscibility_stats(data(512, 32), make_assigner("knn", k=64)(data(512, 32), gen(1)))
    high = miscibility_stats(data(64, 4096), make_assigner("knn", k=64)(data(64, 4096), gen(1)))
    assert low["noise_norm_ratio"] < 0.95
    assert 0.97 < high["noise_norm_ratio"] < 1.0
    assert low["distance_reduction_pct"] > high["distance_reduction_pct"] > 0


def test_knn_zero_rows_and_one_dimension() -> None:
    x = torch.zeros(2000, 16)
    noise = make_assigner("knn", k=8)(x, gen(1))
    brute = knn_bruteforce(x, 8, gen(2))
    assert stats.ks_2samp(noise.norm(dim=1), brute.norm(dim=1)).pvalue > KS_ALPHA
    # direction is uniform: the mean direction is near zero (|mean| of 2000 unit vectors ~ 1/sqrt(2000))
    assert (noise / noise.norm(dim=1, keepdim=True)).mean(0).norm() < 0.1
    x1 = data(3000, 1)
    proj, ref = make_assigner("knn", k=4)(x1, gen(3)), knn_bruteforce(x1, 4, gen(4))
    assert stats.ks_2samp((proj - x1).flatten(), (ref - x1).flatten()).pvalue > KS_ALPHA


def test_knn_large_k_is_cheap_in_memory() -> None:
    """k in the thousands without materializing (B, k, D): 64 x 4096 x 3072 floats would be 3 GiB."""
    x = data(64, 3072)
    noise = make_assigner("knn", k=4096)(x, gen(1))
    assert noise.shape == x.shape
    assert miscibility_stats(x, noise)["distance_reduction_pct"] > 2.0


# --- all methods -----------------------------------------------------------------------------------


ALL = [("none", {}), ("lsa", {}), ("knn", {"k": 4}), ("sinkhorn", {})]


@pytest.mark.parametrize("name,options", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_shape_dtype_device_preserved(name: str, options: dict, dtype: torch.dtype) -> None:
    x = data(6, 48).to(dtype).reshape(6, 3, 4, 4)
    noise = make_assigner(name, **options)(x, gen(0))
    assert noise.shape == x.shape and noise.dtype == dtype and noise.device == x.device


@pytest.mark.parametrize("name,options", ALL)
def test_batch_of_one(name: str, options: dict) -> None:
    noise = make_assigner(name, **options)(data(1, 5), gen(0))
    assert noise.shape == (1, 5) and torch.isfinite(noise).all()


@pytest.mark.parametrize("name,options", ALL)
def test_determinism_and_no_global_rng(name: str, options: dict) -> None:
    x = data(16, 10)
    before = torch.random.get_rng_state()
    a = make_assigner(name, **options)(x, gen(5))
    b = make_assigner(name, **options)(x, gen(5))
    c = make_assigner(name, **options)(x, gen(6))
    seeded = make_assigner(name, seed=3, **options)
    d, e = seeded(x), make_assigner(name, seed=3, **options)(x)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(d, e)
    assert torch.equal(before, torch.random.get_rng_state())  # global state untouched


def test_assigners_can_be_deep_copied_after_use() -> None:
    import copy

    assign = make_assigner("knn", k=2, seed=1)
    assign(data(4, 3))
    clone = copy.deepcopy(assign)
    assert clone.options == assign.options


def test_sinkhorn_interpolates_between_exact_and_independent() -> None:
    x = data(512, 8)
    sharp = miscibility_stats(x, make_assigner("sinkhorn", reg=0.01, n_iters=2000)(x, gen(1)))
    blurry = miscibility_stats(x, make_assigner("sinkhorn", reg=100.0)(x, gen(1)))
    exact = miscibility_stats(x, make_assigner("lsa", cost="sqeuclidean")(x, gen(1)))
    assert sharp["sq_distance_reduction_pct"] > 0.8 * exact["sq_distance_reduction_pct"]
    # independent pairing: ~0; the batch mean of |x - n|^2 has a std of ~2% here, so allow 3 std
    assert abs(blurry["sq_distance_reduction_pct"]) < 6.5


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,x,message",
    [
        (lambda: make_assigner("knnn"), None, "unknown assigner 'knnn'; valid names: none, lsa, knn, sinkhorn"),
        (lambda: make_assigner("knn", k=0), None, "k=0"),
        (lambda: make_assigner("knn", kk=3), None, "unknown option 'kk' for assigner 'knn'"),
        (lambda: make_assigner("lsa", cost="l1"), None, "cost='l1'"),
        (lambda: make_assigner("sinkhorn", reg=0), None, "reg=0"),
        (lambda: make_assigner("knn", k=2), torch.ones(4, 3, dtype=torch.long), "floating-point"),
        (lambda: make_assigner("lsa"), torch.ones(0, 3), "at least one element"),
        (lambda: make_assigner("none"), torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), "row 1"),
        (lambda: make_assigner("knn"), torch.tensor([[float("inf"), 1.0]]), "non-finite"),
        (lambda: make_assigner("knn"), [[0.0, 1.0]], "torch.Tensor"),
    ],
)
def test_clear_errors(make, x, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        make()(x) if x is not None else make()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_assigner_is_in_the_table() -> None:
    assert set(ASSIGNERS) == {"none", "lsa", "knn", "sinkhorn"}
    for name, cls in ASSIGNERS.items():
        assert cls.name == name


# --- samplers and diagnostics ----------------------------------------------------------------------


@pytest.mark.parametrize("dof", [1, 2, 5, 31, 3071])
def test_chi2_sampler_is_exact(dof: int) -> None:
    s = sample_chi2(dof, (100_000,), generator=gen(dof)).numpy()
    assert stats.kstest(s, stats.chi2(dof).cdf).pvalue > KS_ALPHA
    assert torch.equal(sample_chi2(0, (3,), generator=gen(0)), torch.zeros(3))


def test_expected_distance_closed_form_matches_monte_carlo() -> None:
    g = gen(0)
    for dim, radius in [(2, 1.0), (32, 3.0), (3072, 32.0), (3072, 40.0)]:
        n = torch.randn(4000, dim, generator=g, dtype=torch.float64)
        x = torch.zeros(dim, dtype=torch.float64)
        x[0] = radius
        dist = (n - x).norm(dim=1)
        std_err = float(dist.std()) / math.sqrt(len(dist))
        closed = float(expected_gaussian_distance(np.array([radius]), dim)[0])
        assert abs(closed - float(dist.mean())) < 4 * std_err  # within 4 standard errors


def test_diagnostics_baseline_and_mixing() -> None:
    x = data(256, 16)
    plain = miscibility_stats(x, make_assigner("none")(x, gen(1)))
    lsa = miscibility_stats(x, make_assigner("lsa")(x, gen(1)))
    assert abs(plain["distance_reduction_pct"]) < 1.5  # random pairing: ~0 (std of the mean ~0.4%)
    assert plain["noise_norm_ratio"] == pytest.approx(1.0, abs=0.02)
    assert lsa["distance_reduction_pct"] > 10.0
    assert lsa["self_recovery@0.5"] > plain["self_recovery@0.5"] > plain["chance_recovery"]
    assert math.isclose(plain["chance_recovery"], 1 / 256)


# --- CUDA ------------------------------------------------------------------------------------------


@CUDA
@pytest.mark.parametrize("name,options", ALL + [("knn", {"k": 64, "method": "projection"})])
def test_cuda_matches_contract(name: str, options: dict) -> None:
    x = data(64, 96).cuda().half()
    noise = make_assigner(name, **options)(x, gen(0, "cuda"))
    assert noise.device.type == "cuda" and noise.dtype == torch.float16 and noise.shape == x.shape
    with pytest.raises(ValueError, match="generator is on cpu"):
        make_assigner(name, **options)(x, gen(0))


@CUDA
def test_cuda_projection_matches_bruteforce() -> None:
    x = data(1, 64).cuda().repeat(4000, 1)
    proj = make_assigner("knn", k=16, method="projection")(x, gen(1, "cuda"))
    brute = knn_bruteforce(x, 16, gen(2, "cuda"))
    assert stats.ks_2samp((x - proj).norm(dim=1).cpu(), (x - brute).norm(dim=1).cpu()).pvalue > KS_ALPHA
