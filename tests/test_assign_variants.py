"""Assignment variants for low-dimensional data (keep_norm, target_reduction, t_range), the single-process
side of the global LSA, Sinkhorn marginals, and the generator-only randomness of every assigner.

Statistical checks use fixed seeds; KS tests use alpha = 1e-3; other tolerances are stated per test.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from scipy import stats

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import (
    derangement,
    global_lsa_noise,
    local_assignment,
    make_assigner,
    miscibility_stats,
    pairwise_cost,
    resolve_process_group,
    sinkhorn_plan,
)

KS_ALPHA = 1e-3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, dim, generator=gen(seed)) * 2 - 1


# --- keep_norm -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [3, 32])
@pytest.mark.parametrize("method", ["projection", "bruteforce"])
def test_keep_norm_noise_norm_is_chi_and_direction_leans_toward_x(dim: int, method: str) -> None:
    """|n| ~ chi(D) exactly (KS, alpha 1e-3, 20000 rows); without keep_norm the same test rejects (the
    norm shrinks); the mean cosine with x stays positive by more than 5 standard errors."""
    x = data(20000, dim, seed=dim)
    kept = make_assigner("knn", k=8, method=method, keep_norm=True)(x, gen(1))
    plain_knn = make_assigner("knn", k=8, method=method)(x, gen(1))
    chi = stats.chi(dim)
    assert stats.kstest(kept.norm(dim=1).numpy(), chi.cdf).pvalue > KS_ALPHA
    assert stats.kstest(plain_knn.norm(dim=1).numpy(), chi.cdf).pvalue < KS_ALPHA
    cos = torch.nn.functional.cosine_similarity(kept, x, dim=1)
    assert float(cos.mean()) > 5 * float(cos.std()) / math.sqrt(len(cos))


def test_keep_norm_matches_between_projection_and_bruteforce() -> None:
    """Both paths give the same law: two-sample KS (alpha 1e-3) on |x - n| and on the cosine with x."""
    x = data(1, 16).repeat(20000, 1)
    proj = make_assigner("knn", k=4, method="projection", keep_norm=True)(x, gen(2))
    brute = make_assigner("knn", k=4, method="bruteforce", keep_norm=True)(x, gen(3))
    assert stats.ks_2samp((x - proj).norm(dim=1), (x - brute).norm(dim=1)).pvalue > KS_ALPHA
    cos = lambda n: torch.nn.functional.cosine_similarity(n, x, dim=1)  # noqa: E731
    assert stats.ks_2samp(cos(proj), cos(brute)).pvalue > KS_ALPHA


# --- shuffle_pairs (the pairing control) ------------------------------------------------------------


def test_derangement_moves_every_row() -> None:
    """No fixed point for n >= 2 (every seed tried), a permutation every time; n = 1 pairs the row with itself."""
    for n in (2, 3, 17, 256):
        for seed in range(20):
            partner = derangement(n, gen(seed), "cpu")
            assert sorted(partner.tolist()) == list(range(n))
            assert not bool((partner == torch.arange(n)).any())
    assert derangement(1, gen(0), "cpu").tolist() == [0]


def test_shuffle_pairs_keeps_the_noise_law_but_not_the_pairing() -> None:
    """At D = 32, k = 2, 20000 rows of one data distribution: the shuffled noise's norm has the law of
    KNN's (two-sample KS, alpha 1e-3; both shrunk: KS against chi(D) rejects), while its cosine with its own
    row is zero within 4 standard errors, where KNN's is positive by more than 20."""
    x = data(20000, 32, seed=4)
    paired = make_assigner("knn", k=2)(x, gen(1))
    shuffled = make_assigner("knn", k=2, shuffle_pairs=True)(x, gen(2))
    assert stats.ks_2samp(paired.norm(dim=1), shuffled.norm(dim=1)).pvalue > KS_ALPHA
    assert stats.kstest(shuffled.norm(dim=1).numpy(), stats.chi(32).cdf).pvalue < KS_ALPHA
    se = 1 / math.sqrt(len(x) * 32)  # std of the cosine of independent directions in D = 32, over the mean
    cos = lambda n: float(torch.nn.functional.cosine_similarity(n, x, dim=1).mean())  # noqa: E731
    assert abs(cos(shuffled)) < 4 * se
    assert cos(paired) > 20 * se


def test_none_scale_multiplies_plain_noise_and_nothing_else() -> None:
    """``none`` with scale s draws exactly s times the noise the default draws from the same generator
    (so scale 1 is bit-identical to before); at D = 32 its mean norm is 0.935 of N(0, I)'s within 0.5%
    (20000 rows: the norm's relative std is ~0.13, over the mean ~1e-3), and it is not paired with its row."""
    x = data(20000, 32, seed=4)
    plain = make_assigner("none")(x, gen(3))
    scaled = make_assigner("none", scale=0.935)(x, gen(3))
    assert torch.equal(make_assigner("none", scale=1)(x, gen(3)), plain)
    torch.testing.assert_close(scaled, 0.935 * plain, rtol=1e-6, atol=0)
    ratio = float(scaled.norm(dim=1).mean() / (math.sqrt(2) * math.exp(math.lgamma(16.5) - math.lgamma(16))))
    assert ratio == pytest.approx(0.935, rel=5e-3)
    se = 1 / math.sqrt(len(x) * 32)
    assert abs(float(torch.nn.functional.cosine_similarity(scaled, x, dim=1).mean())) < 4 * se


# --- target_reduction ------------------------------------------------------------------------------


def test_target_reduction_reaches_the_target_at_low_and_high_dimension() -> None:
    """Mean distance reduction (miscibility_stats) within 0.5 points of 5% at D = 32 (mean of 20 batches
    of 256; one batch has a std of ~1 point there) and within 0.25 points at D = 3072 (2 batches of 32;
    std ~0.05 points); the chosen k grows with D (~1.7 at D = 32, ~2.5e4 at D = 3072)."""
    chosen = {}
    for dim, batch, batches in ((32, 256, 20), (3072, 32, 2)):
        assign = make_assigner("knn", target_reduction=0.05, k_max=65536)
        achieved, ks = [], []
        for i in range(batches):
            x = data(batch, dim, seed=i)
            achieved.append(miscibility_stats(x, assign(x, gen(100 + i)))["distance_reduction_pct"])
            ks.append(assign.last_k)
        tolerance = 0.5 if dim == 32 else 0.25
        assert abs(sum(achieved) / batches - 5.0) < tolerance, (dim, achieved)
        chosen[dim] = sum(ks) / batches
    assert 1.0 < chosen[32] < 3.0 and chosen[3072] > 1000 * chosen[32]


def test_target_reduction_warns_when_k_max_is_too_small_and_is_logged_by_the_objective() -> None:
    x = data(16, 3072)
    assign = make_assigner("knn", target_reduction=0.05, k_max=64)
    with pytest.warns(RuntimeWarning, match="not reached with k_max=64"):
        assign(x, gen(0))
    assert assign.last_k == 64
    obj = DiffusionObjective(assigner=make_assigner("knn", target_reduction=0.05))
    _, s = obj.loss(lambda x_t, t, c: x_t, data(64, 32), generator=gen(1), with_stats=True)
    assert 1.0 <= s["assign_k"] <= 3.0
    _, s = DiffusionObjective(assigner=make_assigner("knn", k=3)).loss(
        lambda x_t, t, c: x_t, data(8, 4), generator=gen(1), with_stats=True
    )
    assert s["assign_k"] == 3.0


# --- t_range ---------------------------------------------------------------------------------------


def _flow_noise(obj: DiffusionObjective, x0: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, t in [0, 1)) the flow-matching loss used, recovered from x_t = (1 - t) x0 + t n."""
    seen = {}

    def capture(x_t, t, cond):
        seen["x_t"], seen["t"] = x_t, t / obj.cfg.num_train_timesteps
        return torch.zeros_like(x_t)

    obj.loss(capture, x0, generator=gen(seed))
    t = seen["t"][:, None].double()
    return ((seen["x_t"].double() - (1 - t) * x0.double()) / t).float(), seen["t"]


@pytest.mark.parametrize("name,options", [("knn", {"k": 64}), ("lsa", {})])
def test_t_range_assigns_inside_and_leaves_plain_noise_outside(name: str, options: dict) -> None:
    """Rows with t / T in [0, 0.5) are assigned (distance reduction > 10%), the others are not (|reduction|
    < 2 points, 4 standard errors) and get exactly the noise a ``none`` assigner with the same t_range and
    seed gives them, whatever the assigner; that noise is N(0, I) (KS of entries and of norms vs chi(D),
    alpha 1e-3)."""
    x0 = data(4096, 8)
    assigned = DiffusionObjective(
        ObjectiveConfig(kind="flow_matching"), make_assigner(name, t_range=(0.0, 0.5), **options)
    )
    plain = DiffusionObjective(ObjectiveConfig(kind="flow_matching"), make_assigner("none", t_range=(0.0, 0.5)))
    noise, t = _flow_noise(assigned, x0, seed=1)
    plain_noise, plain_t = _flow_noise(plain, x0, seed=1)
    assert torch.equal(t, plain_t)  # time drawn first, from the same stream
    inside, outside = t < 0.5, t >= 0.5
    assert 1500 < int(inside.sum()) < 2600
    torch.testing.assert_close(noise[outside], plain_noise[outside], atol=1e-4, rtol=1e-4)
    assert miscibility_stats(x0[inside], noise[inside])["distance_reduction_pct"] > 10.0
    assert abs(miscibility_stats(x0[outside], noise[outside])["distance_reduction_pct"]) < 2.0
    exact = make_assigner("none", t_range=(0.0, 0.5))  # the outside rows' noise, drawn directly
    direct = DiffusionObjective(ObjectiveConfig(kind="flow_matching"), exact).draw_noise_in_range(
        x0, torch.ones(len(x0)), (0.0, 0.5), gen(7)
    )
    assert torch.equal(direct, torch.randn(x0.shape, generator=gen(7)))  # nothing inside: plain randn
    assert stats.kstest(noise[outside].flatten().numpy(), stats.norm.cdf).pvalue > KS_ALPHA
    assert stats.kstest(noise[outside].norm(dim=1).numpy(), stats.chi(8).cdf).pvalue > KS_ALPHA


def test_t_range_uses_the_ddpm_step_fraction_and_stays_reproducible() -> None:
    """ddpm: rows with t_index / T in [0.5, 1) get the assigner's noise; the same seed gives the same loss."""
    obj = DiffusionObjective(ObjectiveConfig(num_train_timesteps=10), make_assigner("knn", k=64, t_range=(0.5, 1.0)))
    x0 = data(2048, 8)
    fraction = torch.arange(2048) % 10 / 10.0
    noise = obj.draw_noise_in_range(x0, fraction, (0.5, 1.0), gen(3))
    late, early = fraction >= 0.5, fraction < 0.5
    assert miscibility_stats(x0[late], noise[late])["distance_reduction_pct"] > 10.0
    assert abs(miscibility_stats(x0[early], noise[early])["distance_reduction_pct"]) < 2.0
    a, _ = obj.loss(lambda x_t, t, c: x_t, x0, generator=gen(4))
    b, _ = obj.loss(lambda x_t, t, c: x_t, x0, generator=gen(4))
    assert torch.equal(a, b)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("knn", {"k": 0}, "k=0"),
        ("knn", {"k_max": 0}, "k_max=0"),
        ("knn", {"target_reduction": 0.0}, "target_reduction=0.0"),
        ("knn", {"target_reduction": 1.0}, "target_reduction=1.0"),
        ("knn", {"target_reduction": -0.1}, "target_reduction=-0.1"),
        ("knn", {"target_reduction": 0.05, "method": "bruteforce"}, "target_reduction=0.05"),
        ("knn", {"keep_norm": "yes"}, "keep_norm='yes'"),
        ("knn", {"shuffle_pairs": 1}, "shuffle_pairs=1"),
        ("lsa", {"shuffle_pairs": True}, "shuffle_pairs=True"),
        ("none", {"scale": 0.0}, "scale=0.0"),
        ("none", {"scale": "small"}, "scale='small'"),
        ("knn", {"scale": 0.9}, "scale=0.9"),
        ("knn", {"t_range": (0.5, 0.5)}, "t_range=[0.5, 0.5]"),
        ("lsa", {"t_range": [-0.1, 0.5]}, "t_range=[-0.1, 0.5]"),
        ("sinkhorn", {"t_range": [0.0, 1.5]}, "t_range=[0.0, 1.5]"),
        ("none", {"t_range": [0.2]}, "t_range=[0.2]"),
        ("lsa", {"keep_norm": True}, "keep_norm=True"),
        ("sinkhorn", {"target_reduction": 0.05}, "target_reduction=0.05"),
        ("lsa", {"process_group": "world"}, "process_group='world'"),
    ],
)
def test_bad_variant_options_are_one_line_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make_assigner(name, **options)
    text = str(info.value)
    assert message in text and "\n" not in text


# --- the global LSA in one process ---------------------------------------------------------------------


def test_lsa_without_a_process_group_is_the_local_lsa() -> None:
    """With no process group running, ``process_group="auto"`` resolves to a local solve: identical to
    ``process_group=None`` and to ``global_lsa_noise`` on the same draw; copies keep the option."""
    x = data(16, 6).reshape(16, 3, 2)
    assert resolve_process_group("auto") is None and not make_assigner("lsa").requires_all_ranks()
    for cost in ("l2", "sqeuclidean"):
        auto = make_assigner("lsa", cost=cost)(x, gen(9))
        local = make_assigner("lsa", cost=cost, process_group=None)(x, gen(9))
        drawn = make_assigner("none")(x, gen(9))
        assert torch.equal(auto, local)
        assert torch.equal(global_lsa_noise(x, drawn, "auto", cost=cost), local)
    with local_assignment(), local_assignment():
        assert torch.equal(make_assigner("lsa", cost="sqeuclidean")(x, gen(9)), local)
    assert copy.deepcopy(make_assigner("lsa", process_group=None)).options["process_group"] is None


# --- Sinkhorn marginals ----------------------------------------------------------------------------


@pytest.mark.parametrize("reg", [0.05, 0.5])
def test_sinkhorn_plan_meets_the_uniform_marginals(reg: float) -> None:
    """Row sums within 1e-3 of 1/B in L1 relative error (the stopping rule: sum_i |B r_i - 1| / B < tol);
    column sums within 1e-4 relative (exact after each column update, up to float32 rounding); total 1.
    One iteration at a sharp reg does not meet the row marginals (the test can fail)."""
    x, n = data(128, 8), torch.randn(128, 8, generator=gen(1))
    cost = pairwise_cost(x, n, "sqeuclidean")
    cost = (cost - cost.mean()) / cost.std()
    plan, error = sinkhorn_plan(cost, reg, n_iters=2000, tol=1e-3)
    batch = len(x)
    rows, cols = plan.sum(dim=1) * batch, plan.sum(dim=0) * batch
    assert float((rows - 1).abs().mean()) < 1e-3 and error < 1e-3
    assert float((cols - 1).abs().max()) < 1e-4
    assert float(plan.sum()) == pytest.approx(1.0, abs=1e-4)
    _, rough = sinkhorn_plan(cost, 0.05, n_iters=1)
    assert rough > 1e-3
    assign = make_assigner("sinkhorn", reg=reg, n_iters=2000)
    assign(x, gen(2))
    assert assign.last_marginal_error < 1e-3


# --- randomness comes from the generator only ------------------------------------------------------


VARIANTS = [
    ("none", {}),
    ("none", {"scale": 0.935}),
    ("lsa", {}),
    ("lsa", {"t_range": (0.0, 0.5)}),
    ("knn", {"k": 4}),
    ("knn", {"k": 4, "method": "bruteforce", "keep_norm": True}),
    ("knn", {"k": 64, "keep_norm": True}),
    ("knn", {"k": 2, "shuffle_pairs": True}),
    ("knn", {"target_reduction": 0.05}),
    ("sinkhorn", {}),
]


@pytest.mark.parametrize("name,options", VARIANTS)
@pytest.mark.parametrize("kind", ["ddpm", "flow_matching"])
def test_seeded_noise_is_identical_and_global_rng_untouched(name: str, options: dict, kind: str) -> None:
    """The same seed gives identical noise and loss, another seed different ones; neither the assigner
    nor the objective's loss moves torch's global random state."""
    x = data(32, 12)
    obj = DiffusionObjective(ObjectiveConfig(kind=kind), make_assigner(name, **options))
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b, c = (obj.assigner(x, gen(s)) for s in (5, 5, 6))
        la, lb, lc = (obj.loss(lambda x_t, t, cond: x_t.sin(), x, generator=gen(s))[0] for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    assert torch.equal(before, torch.random.get_rng_state())
