"""Denoisers behind DiffusionPolicy: shapes, conditioning, overfitting one batch, option errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpolicy_immix.data import LinearNormalizer
from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.policy import DENOISERS, DiffusionPolicy, MLPDenoiser, PolicyConfig, TransformerDenoiser

OBS_DIM, ACT_DIM, H, TO = 3, 2, 8, 2
SMALL = {
    "unet": dict(down_dims=(16, 32), diffusion_step_embed_dim=16),
    "mlp": dict(mlp=dict(width=64, n_blocks=2, time_embed_dim=16, cond_dim=32)),
    "transformer": dict(transformer=dict(n_emb=32, n_layers=2, n_heads=2)),
}


def _normalizer() -> LinearNormalizer:
    rng = np.random.default_rng(0)
    data = {
        "obs": rng.uniform(-1, 1, (256, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, (256, ACT_DIM)).astype(np.float32),
    }
    return LinearNormalizer().fit(data, mode="limits")


def _policy(denoiser: str, kind: str = "ddpm", prediction: str | None = None) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = PolicyConfig(horizon=H, n_obs_steps=TO, n_action_steps=4, denoiser=denoiser, **SMALL[denoiser])
    objective = DiffusionObjective(ObjectiveConfig(kind=kind, prediction_type=prediction, num_inference_steps=4))
    return DiffusionPolicy(cfg, OBS_DIM, ACT_DIM, _normalizer(), objective)


@pytest.mark.parametrize("denoiser", sorted(DENOISERS))
def test_shapes_and_observation_conditions_the_output(denoiser):
    policy = _policy(denoiser)
    net = policy.model
    for p in net.parameters():  # FiLM layers start at zero: perturb so the condition path is live
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(5, H, ACT_DIM)
    t = torch.tensor([0.0, 3.0, 10.5, 50.0, 99.0])
    g = policy.obs_encoder.out_dim
    c1, c2 = torch.randn(5, g), torch.randn(5, g)
    out1 = net(x, t, c1)
    assert out1.shape == (5, H, ACT_DIM)
    assert torch.isfinite(out1).all()
    assert (net(x, t, c2) - out1).abs().max() > 1e-3, "the observation does not reach the output"
    assert (net(x, t + 20.0, c1) - out1).abs().max() > 1e-3, "the diffusion time does not reach the output"
    # one sample's output does not depend on another sample's condition
    c3 = c1.clone()
    c3[0] += 1.0
    torch.testing.assert_close(net(x, t, c3)[1:], out1[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("denoiser", sorted(DENOISERS))
@pytest.mark.parametrize(("kind", "prediction"), [("ddpm", "epsilon"), ("ddpm", "sample"), ("flow_matching", None)])
def test_policy_trains_and_samples_with_every_objective(denoiser, kind, prediction):
    policy = _policy(denoiser, kind, prediction)
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.rand(4, H, OBS_DIM, generator=g), "action": torch.rand(4, H, ACT_DIM, generator=g)}
    loss, _ = policy.compute_loss(batch, generator=g)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)
    out = policy.predict_action({"obs": batch["obs"][:, :TO]}, generator=torch.Generator().manual_seed(1))
    assert out["action"].shape == (4, 4, ACT_DIM) and out["action_pred"].shape == (4, H, ACT_DIM)


@pytest.mark.parametrize("denoiser", ["mlp", "transformer"])
def test_overfits_one_batch(denoiser):
    """A few hundred steps on one fixed batch (fixed noise and times) drive the loss far below its start."""
    policy = _policy(denoiser)
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    g0 = torch.Generator().manual_seed(0)
    batch = {"obs": torch.rand(8, H, OBS_DIM, generator=g0), "action": torch.rand(8, H, ACT_DIM, generator=g0)}
    losses = []
    for _ in range(300):
        loss, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(123))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_transformer_causal_mask_blocks_future_actions():
    torch.manual_seed(0)
    from diffpolicy_immix.policy import TransformerConfig

    net = TransformerDenoiser(ACT_DIM, H, 6, TO, TransformerConfig(n_emb=32, n_layers=2, n_heads=2, causal=True))
    x = torch.randn(2, H, ACT_DIM)
    t, c = torch.tensor([5.0, 50.0]), torch.randn(2, 6)
    out = net(x, t, c)
    x2 = x.clone()
    x2[:, -1] += 3.0  # change only the last action token
    out2 = net(x2, t, c)
    torch.testing.assert_close(out2[:, :-1], out[:, :-1], atol=1e-5, rtol=1e-5)
    assert (out2[:, -1] - out[:, -1]).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(denoiser="resnet"), "denoiser='resnet' is unknown"),
        (dict(denoiser="mlp", mlp=dict(width=0)), "policy.mlp.width=0"),
        (dict(denoiser="mlp", mlp=dict(widht=64)), "unknown key 'widht'"),
        (dict(denoiser="mlp", mlp=dict(dropout=1.5)), "policy.mlp.dropout=1.5"),
        (dict(denoiser="transformer", transformer=dict(n_emb=30, n_heads=4)), "n_emb=30"),
        (dict(denoiser="transformer", transformer=dict(causal="yes")), "causal='yes'"),
        (dict(denoiser="mlp", mlp=[1, 2]), "must be a mapping"),
    ],
)
def test_bad_denoiser_options_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        PolicyConfig(horizon=H, n_obs_steps=TO, n_action_steps=4, **overrides)
    assert "\n" not in str(err.value)


def test_non_unet_denoisers_accept_any_horizon():
    cfg = PolicyConfig(horizon=10, n_obs_steps=2, n_action_steps=8, denoiser="mlp")
    assert cfg.horizon == 10
    with pytest.raises(ValueError, match="divisible"):
        PolicyConfig(horizon=10, n_obs_steps=2, n_action_steps=8, denoiser="unet")
    net = MLPDenoiser(ACT_DIM, 10, 4)
    assert net(torch.zeros(1, 10, ACT_DIM), torch.zeros(1), torch.zeros(1, 4)).shape == (1, 10, ACT_DIM)
