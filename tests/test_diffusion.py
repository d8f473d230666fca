"""The diffusion objective: closed-form marginals, exact recovery with a perfect denoiser, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig, alphas_cumprod, make_betas
from diffpolicy_immix.immiscible import make_assigner


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cosine_schedule_matches_closed_form() -> None:
    ab = alphas_cumprod(make_betas("squaredcos_cap_v2", 100))
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 10, 50, 90]:  # uncapped region: alpha_bar_t = f((t + 1) / T) / f(0)
        assert float(ab[t]) == pytest.approx(f((t + 1) / 100) / f(0), rel=1e-9)
    assert float(make_betas("squaredcos_cap_v2", 100).max()) <= 0.999


def test_forward_marginals_are_closed_form() -> None:
    """x_t | x0 ~ N(sqrt(ab_t) x0, (1 - ab_t) I): mean within 4 standard errors, variance within 5%."""
    obj = DiffusionObjective(ObjectiveConfig(num_train_timesteps=10))
    x0 = torch.tensor([0.7, -0.3]).repeat(20000, 1)
    seen: dict[str, torch.Tensor] = {}

    def capture(x_t, t, cond):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    obj.loss(capture, x0, generator=gen(0))
    for t in [0, 4, 9]:
        rows = seen["x_t"][seen["t"] == t]
        ab = float(obj.alphas_cumprod[t])
        std_err = math.sqrt((1 - ab) / len(rows))
        assert (rows.mean(0) - math.sqrt(ab) * x0[0]).abs().max() < 4 * std_err
        assert rows.var(0).sub(1 - ab).abs().max() < 0.05 * (1 - ab)


def test_flow_matching_interpolates_linearly() -> None:
    obj = DiffusionObjective(ObjectiveConfig(kind="flow_matching", num_train_timesteps=1000))
    x0 = torch.rand(64, 3, generator=gen(0))
    noise = make_assigner("none")(obj.cfg.data_scale * x0, gen(1))
    seen = {}

    def capture(x_t, t, cond):
        seen["x_t"], seen["t"] = x_t, t / 1000
        return noise - x0  # the exact velocity

    loss, _ = obj.loss(capture, x0, generator=gen(1))
    t = seen["t"][:, None]
    torch.testing.assert_close(seen["x_t"], (1 - t) * x0 + t * noise)
    assert float(loss) < 1e-10


def oracle(obj: DiffusionObjective, x0: torch.Tensor):
    """A perfect denoiser for a one-point data distribution x0 (in the objective's scaled units)."""
    target = x0 * obj.cfg.data_scale

    def model_fn(x_t, t, cond):
        if obj.cfg.kind == "flow_matching":
            tt = (t / obj.cfg.num_train_timesteps).reshape(-1, *([1] * (x_t.dim() - 1)))
            return (x_t - target) / tt  # velocity n - x0 with n = (x_t - (1 - t) x0) / t
        ab = obj.alphas_cumprod[t.long()].float().reshape(-1, *([1] * (x_t.dim() - 1)))
        eps = (x_t - ab.sqrt() * target) / (1 - ab).sqrt()
        return {
            "epsilon": eps,
            "sample": target.expand_as(x_t),
            "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * target,
        }[obj.cfg.prediction_type]

    return model_fn


@pytest.mark.parametrize(
    "cfg",
    [
        dict(prediction_type="epsilon", sampler="ddim"),
        dict(prediction_type="sample", sampler="ddim"),
        dict(prediction_type="v_prediction", sampler="ddim"),
        dict(prediction_type="epsilon", sampler="ddpm", num_inference_steps=100),
        dict(prediction_type="v_prediction", sampler="ddpm", num_inference_steps=20),
        dict(prediction_type="sample", sampler="ddim", num_inference_steps=7, timestep_spacing="trailing"),
        dict(prediction_type="epsilon", sampler="ddpm", num_inference_steps=30, timestep_spacing="trailing"),
        dict(prediction_type="epsilon", sampler="ddim", data_scale=2.5),
        dict(kind="flow_matching", num_inference_steps=7),
        dict(kind="flow_matching", data_scale=3.0),
    ],
)
def test_perfect_denoiser_recovers_x0(cfg: dict) -> None:
    obj = DiffusionObjective(ObjectiveConfig(**cfg))
    x0 = torch.tensor([[0.5, -0.25, 0.9]])
    out = obj.sample(oracle(obj, x0), (16, 3), generator=gen(3))
    torch.testing.assert_close(out, x0.expand(16, 3), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "spacing,steps,expected",
    [
        ("leading", 10, [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]),
        ("trailing", 10, [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]),
        ("leading", 100, list(range(99, -1, -1))),
        ("trailing", 100, list(range(99, -1, -1))),
    ],
)
def test_timestep_spacings(spacing: str, steps: int, expected: list[int]) -> None:
    obj = DiffusionObjective(ObjectiveConfig(timestep_spacing=spacing))
    assert obj.inference_timesteps(steps) == expected


@pytest.mark.parametrize("steps", [3, 7, 30, 40, 99])
def test_trailing_spacing_always_starts_at_the_last_training_step(steps: int) -> None:
    """Leading spacing starts low when n does not divide T (40 of 100 steps start at t = 78); trailing
    always starts at T - 1 and visits n distinct, strictly decreasing steps."""
    obj = DiffusionObjective(ObjectiveConfig(timestep_spacing="trailing"))
    ts = obj.inference_timesteps(steps)
    assert ts[0] == 99 and len(ts) == steps and all(a > b >= 0 for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_perfect_model_has_zero_loss(prediction: str) -> None:
    obj = DiffusionObjective(ObjectiveConfig(prediction_type=prediction))
    x0 = torch.tensor([[0.3, 0.1]]).repeat(32, 1)
    loss, _ = obj.loss(oracle(obj, x0[:1]), x0, generator=gen(0))
    assert float(loss) < 1e-8


def test_mask_restricts_the_loss() -> None:
    obj = DiffusionObjective()
    x0 = torch.zeros(4, 5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, :2] = True
    loss_masked, _ = obj.loss(lambda x, t, c: torch.where(mask, 0.0, 100.0) + 0 * x, x0, mask=mask, generator=gen(0))
    loss_full, _ = obj.loss(lambda x, t, c: torch.where(mask, 0.0, 100.0) + 0 * x, x0, generator=gen(0))
    assert float(loss_full) > 1000 > float(loss_masked)


def test_training_noise_comes_from_the_assigner_and_stats_are_reported() -> None:
    x0 = torch.rand(256, 8, generator=gen(0)) * 2 - 1
    plain = DiffusionObjective(assigner=make_assigner("none"))
    knn = DiffusionObjective(assigner=make_assigner("knn", k=16))
    _, s_plain = plain.loss(lambda x, t, c: x, x0, generator=gen(1), with_stats=True)
    _, s_knn = knn.loss(lambda x, t, c: x, x0, generator=gen(1), with_stats=True)
    assert s_knn["distance_reduction_pct"] > 10 > abs(s_plain["distance_reduction_pct"])
    a, _ = knn.loss(lambda x, t, c: x, x0, generator=gen(2))
    b, _ = knn.loss(lambda x, t, c: x, x0, generator=gen(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="score"), "kind='score'"),
        (dict(prediction_type="velocity"), "prediction_type='velocity' is invalid for kind='ddpm'"),
        (dict(kind="flow_matching", sampler="ddim"), "sampler='ddim' is invalid for kind='flow_matching'"),
        (dict(beta_schedule="cosine"), "beta_schedule='cosine'"),
        (dict(num_inference_steps=200), "exceeds num_train_timesteps=100"),
        (dict(data_scale=0.0), "data_scale=0.0"),
        (dict(timestep_spacing="linspace"), "timestep_spacing='linspace' is invalid"),
        (dict(init_noise_scale=0.0), "init_noise_scale=0.0"),
        (dict(init_noise_scale="hot"), "init_noise_scale='hot'"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ObjectiveConfig(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("kind", ["ddpm", "flow_matching"])
def test_init_noise_scale_scales_where_sampling_starts(kind: str) -> None:
    """With a model linear in x_t and no clamp, the sampler is linear in its starting noise, so a run
    started from 0.8 N(0, I) ends at exactly 0.8 times the run from N(0, I) with the same generator (rtol
    1e-5); the scale never enters the training loss."""

    def model(x, t, c):  # noqa: ANN001, ANN202
        return 0.5 * x

    cfg = dict(kind=kind, clip_sample=False, num_inference_steps=10)
    base = DiffusionObjective(ObjectiveConfig(**cfg))
    cold = DiffusionObjective(ObjectiveConfig(**cfg, init_noise_scale=0.8))
    a, b = base.sample(model, (64, 3), generator=gen(3)), cold.sample(model, (64, 3), generator=gen(3))
    assert torch.allclose(b, 0.8 * a, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, b)
    x0 = torch.rand(32, 3, generator=gen(4))
    assert torch.equal(base.loss(model, x0, generator=gen(5))[0], cold.loss(model, x0, generator=gen(5))[0])


class TinyDenoiser(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, dim)

    def forward(self, x, t, cond=None):
        return self.out(self.net(torch.cat([x, t[:, None] / 100.0], dim=1)))


@pytest.mark.parametrize("kind,assign", [("ddpm", "none"), ("ddpm", "knn"), ("flow_matching", "lsa")])
def test_trained_model_samples_the_two_modes(kind: str, assign: str) -> None:
    """A small MLP trained for 1500 steps on two points: >= 90% of 200 samples land within 0.25 of one."""
    torch.manual_seed(0)  # model init only
    modes = torch.tensor([[-0.6, 0.4], [0.6, -0.4]])
    opts = {"k": 4} if assign == "knn" else {}
    obj = DiffusionObjective(ObjectiveConfig(kind=kind, num_inference_steps=20), assigner=make_assigner(assign, **opts))
    model = TinyDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(1500):
        x0 = modes[torch.randint(0, 2, (128,), generator=g)]
        loss, _ = obj.loss(model, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = obj.sample(model, (200, 2), generator=gen(1))
    nearest = torch.cdist(samples, modes).min(dim=1).values
    assert float((nearest < 0.25).float().mean()) >= 0.9
    assert 0.2 < float((samples[:, 0] > 0).float().mean()) < 0.8  # both modes present
