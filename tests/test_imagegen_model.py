"""UNet2D shapes and conditioning, ImageDiffusionModel loss/sampling/guidance, a tiny end-to-end run."""

from __future__ import annotations

import pytest
import torch

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.imagegen import (
    IMAGE_MODEL_PRESETS,
    ImageDiffusionModel,
    ImageModelConfig,
    UNet2D,
    make_image_dataset,
    save_image_grid,
)
from diffpolicy_immix.immiscible import make_assigner


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ UNet2D
@pytest.mark.parametrize(
    "channels, size, mults, attn",
    [
        (1, 8, (1, 2), ()),  # digits default
        (1, 8, (1, 2), (4,)),  # attention at 4x4 (and in the middle)
        (1, 28, (1, 2, 2), (7,)),  # MNIST: 28 -> 14 -> 7
        (1, 28, (1, 2, 2, 2), (8,)),  # MNIST padded to 32 -> 16 -> 8 -> 4
        (3, 32, (1, 2, 2), (8,)),  # CIFAR-10
        (1, 25, (1, 2), ()),  # odd size, padded to 26
    ],
)
def test_unet_shapes(channels, size, mults, attn):
    torch.manual_seed(0)
    net = UNet2D(
        channels, base_channels=16, channel_mults=mults, attention_resolutions=attn, num_classes=10, image_size=size
    )
    x = torch.randn(3, channels, size, size)
    out = net(x, torch.tensor([0.0, 50.0, 99.5]), torch.tensor([0, 9, -1]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert net(x, torch.tensor(3.0)).shape == x.shape  # scalar t, no labels (null class)


def test_unet_conditioning_effect():
    torch.manual_seed(0)
    net = UNet2D(1, base_channels=16, num_classes=10, image_size=8).eval()
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 10.0)
    y0 = net(x, t, torch.zeros(4, dtype=torch.long))
    y1 = net(x, t, torch.ones(4, dtype=torch.long))
    null = net(x, t, None)
    assert (y0 - y1).abs().mean() > 1e-3  # the label changes the prediction
    assert (y0 - null).abs().mean() > 1e-3
    assert torch.allclose(net(x, t, torch.full((4,), -1)), null)  # negative label = null class
    assert torch.allclose(net(x, t, torch.full((4,), 10)), null)  # index num_classes = null class
    assert (net(x, t + 40.0, None) - null).abs().mean() > 1e-3  # the timestep matters
    # per-sample conditioning: changing sample 0's label leaves sample 1 untouched
    labels = torch.zeros(4, dtype=torch.long)
    labels2 = labels.clone()
    labels2[0] = 5
    a, b = net(x, t, labels), net(x, t, labels2)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])


def test_unet_errors():
    with pytest.raises(ValueError, match=r"attention_resolutions=\(3,\) has \[3\].*valid sizes: \[8, 4\]"):
        UNet2D(1, channel_mults=(1, 2), attention_resolutions=(3,), image_size=8)
    net = UNet2D(1, base_channels=8, image_size=8)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be \(B, 1, H, W\)"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    cond = UNet2D(1, base_channels=8, num_classes=3, image_size=8)
    with pytest.raises(ValueError, match="class label 4 out of range"):
        cond(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 4]))


# -------------------------------------------------------------------------------- ImageModelConfig
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=0), r"image_size=0 must be a positive integer"),
        (dict(num_classes=0), r"num_classes=0 must be a positive integer or None"),
        (dict(channel_mults=(1, 2, 2, 2, 2)), r"too often for image_size=8"),
        (dict(attention_resolutions=(2,)), r"attention_resolutions=\(2,\) has \[2\]"),
        (dict(cfg_dropout=1.0), r"cfg_dropout=1.0 must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout=-0.1"),
        (dict(guidance_scale=-1.0), r"guidance_scale=-1.0 must be >= 0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageModelConfig(**kwargs)


def test_presets_build():
    for name in IMAGE_MODEL_PRESETS:
        cfg = ImageModelConfig.from_preset(name)
        assert cfg.image_shape[1] == cfg.image_size
    with pytest.raises(ValueError, match="unknown image model preset 'svhn'; valid: digits"):
        ImageModelConfig.from_preset("svhn")
    with pytest.raises(ValueError, match="has no field 'colour'"):
        ImageModelConfig.from_preset("digits", colour=3)


# --------------------------------------------------------------------------- ImageDiffusionModel
def digits_batch(n: int = 32) -> dict[str, torch.Tensor]:
    ds = make_image_dataset("digits", split="test")
    return {"image": ds.images()[:n], "label": ds.labels[:n]}


@pytest.mark.parametrize(
    "objective",
    [
        ObjectiveConfig(kind="ddpm"),
        ObjectiveConfig(kind="ddpm", prediction_type="v_prediction", sampler="ddpm"),
        ObjectiveConfig(kind="flow_matching", data_scale=2.0),
    ],
    ids=["ddpm-eps-ddim", "ddpm-v-ddpm", "flow-scaled"],
)
def test_loss_backprop_and_sample(objective):
    torch.manual_seed(0)
    model = ImageDiffusionModel(ImageModelConfig(base_channels=16), DiffusionObjective(objective))
    loss, stats = model(digits_batch(), generator=seeded(), with_stats=False)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.unet.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    x = model.sample(6, labels=torch.arange(6), generator=seeded(1), guidance_scale=2.0, num_steps=3)
    assert x.shape == (6, 1, 8, 8) and x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()


def test_loss_is_reproducible_and_uses_the_assigner():
    torch.manual_seed(0)
    obj = DiffusionObjective(ObjectiveConfig(), assigner=make_assigner("knn", k=8))
    model = ImageDiffusionModel(ImageModelConfig(base_channels=16), obj)
    start = {k: v.clone() for k, v in model.state_dict().items()}  # also rewinds the label-dropout stream
    batch = digits_batch(64)
    l1, stats = model.compute_loss(batch, generator=seeded(3), with_stats=True)
    model.load_state_dict(start)
    l2, _ = model.compute_loss(batch, generator=seeded(3))
    model.load_state_dict(start)
    l3, _ = model.compute_loss(batch, generator=seeded(4))
    assert l1.item() == l2.item() != l3.item()
    assert stats and all(isinstance(v, float) for v in stats.values())


def test_label_dropout_has_its_own_stream_so_cfg_dropout_leaves_the_noise_unchanged():
    batch = digits_batch(32)
    after = []
    for p in (0.0, 0.1, 0.5):
        torch.manual_seed(0)
        model = ImageDiffusionModel(ImageModelConfig(base_channels=8, cfg_dropout=p))
        gen = seeded(7)
        model.compute_loss(batch, generator=gen)
        after.append((torch.rand(4, generator=gen), torch.rand(4)))  # the noise stream, torch's global state
    assert all(torch.equal(a[0], after[0][0]) and torch.equal(a[1], after[0][1]) for a in after[1:])


def dropped_labels(model: ImageDiffusionModel, batch: dict, steps: int) -> list[torch.Tensor]:
    """The labels the UNet saw in ``steps`` training losses (10 = the null class)."""
    seen: list[torch.Tensor] = []
    original = model.unet.forward
    model.unet.forward = lambda x, t, y=None: (seen.append(y.clone()), original(x, t, y))[1]
    with torch.no_grad():
        for i in range(steps):
            model.compute_loss(batch, generator=seeded(i))
    model.unet.forward = original
    return seen


def test_label_dropout_stream_follows_the_run_seed_and_resumes_from_the_state_dict():
    batch = {"image": torch.zeros(64, 1, 8, 8), "label": torch.randint(0, 10, (64,), generator=seeded(1))}
    cfg = ImageModelConfig(base_channels=8, cfg_dropout=0.5)
    torch.manual_seed(0)
    a = dropped_labels(ImageDiffusionModel(cfg, label_seed=3), batch, 3)
    torch.manual_seed(123)  # torch's global state plays no part
    b = dropped_labels(ImageDiffusionModel(cfg, label_seed=3), batch, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])  # a new mask at every step
    other = dropped_labels(ImageDiffusionModel(cfg, label_seed=4), batch, 1)
    assert not torch.equal(a[0], other[0])  # another run seed, another stream
    # a model restored from the state dict after two steps draws the third step's mask
    model = ImageDiffusionModel(cfg, label_seed=3)
    dropped_labels(model, batch, 2)
    resumed = ImageDiffusionModel(cfg, label_seed=3)
    resumed.load_state_dict(model.state_dict())
    assert int(resumed.label_dropout_draws) == 2
    assert torch.equal(dropped_labels(resumed, batch, 1)[0], a[2])
    # weights saved before the count existed still load (the stream starts at 0)
    old = {k: v for k, v in model.state_dict().items() if k != "label_dropout_draws"}
    fresh = ImageDiffusionModel(cfg, label_seed=3)
    fresh.load_state_dict(old)
    assert torch.equal(dropped_labels(fresh, batch, 1)[0], a[0])


def test_label_dropout_rate_and_eval_mode():
    torch.manual_seed(0)
    model = ImageDiffusionModel(ImageModelConfig(base_channels=8, cfg_dropout=0.3))
    seen: list[torch.Tensor] = []
    original = model.unet.forward
    model.unet.forward = lambda x, t, y=None: (seen.append(y), original(x, t, y))[1]
    batch = {"image": torch.zeros(2000, 1, 8, 8), "label": torch.randint(0, 10, (2000,))}
    with torch.no_grad():
        model.compute_loss(batch, generator=seeded())
    frac = float((seen[-1] == 10).float().mean())
    assert abs(frac - 0.3) < 0.035  # binomial sd ~0.01; 3.5 sd tolerance
    kept = seen[-1] != 10
    assert torch.equal(seen[-1][kept], batch["label"][kept])
    model.eval()
    with torch.no_grad():
        model.compute_loss(batch, generator=seeded())
    assert torch.equal(seen[-1], batch["label"])  # no dropout in eval mode
    # unconditional sampling and guidance 0 both use the null class only
    model.sample(2, generator=seeded())
    assert seen[-1] is None
    model.sample(2, labels=[1, 2], guidance_scale=0.0, num_steps=1)
    assert torch.equal(seen[-1], torch.full((2,), 10))
    model.sample(2, labels=[1, 2], guidance_scale=3.0, num_steps=1)
    assert torch.equal(seen[-1], torch.tensor([1, 2, 10, 10]))  # conditional and null, one batch


def test_guided_model_fn_combines_predictions(monkeypatch):
    torch.manual_seed(0)
    model = ImageDiffusionModel(ImageModelConfig(base_channels=8)).eval()
    captured = {}

    def fake_sample(model_fn, shape, cond=None, generator=None, num_steps=None, device=None):
        captured.update(fn=model_fn, cond=cond)
        return torch.zeros(shape)

    monkeypatch.setattr(model.objective, "sample", fake_sample)
    model.sample(3, labels=[4, 5, 6], guidance_scale=2.5)
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 7.0)
    labels = torch.tensor([4, 5, 6])
    with torch.no_grad():
        c, u = model.unet(x, t, labels), model.unet(x, t, None)
        guided = captured["fn"](x, t, captured["cond"])
    assert torch.equal(captured["cond"], labels)
    assert torch.allclose(guided, u + 2.5 * (c - u), atol=1e-5)


def test_sample_is_seeded_and_validates():
    torch.manual_seed(0)
    model = ImageDiffusionModel(ImageModelConfig(base_channels=8))
    a = model.sample(4, labels=3, generator=seeded(5), num_steps=2)
    b = model.sample(4, labels=3, generator=seeded(5), num_steps=2)
    assert torch.equal(a, b) and model.training  # train mode restored
    with pytest.raises(ValueError, match=r"labels must be in 0..9; got 0..10"):
        model.sample(2, labels=[0, 10])
    with pytest.raises(ValueError, match=r"labels shape \(3,\) must be \(2,\)"):
        model.sample(2, labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"batch\['image'\] shape \(2, 1, 9, 9\) must be \(B, 1, 8, 8\)"):
        model.compute_loss({"image": torch.zeros(2, 1, 9, 9)})
    with pytest.raises(KeyError, match="no key 'image'"):
        model.compute_loss({"img": torch.zeros(2, 1, 8, 8)})
    uncond = ImageDiffusionModel(ImageModelConfig(base_channels=8, num_classes=None))
    loss, _ = uncond.compute_loss(digits_batch(8), generator=seeded())  # labels ignored
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(2, labels=[0, 1])


# ---------------------------------------------------------------------------------- end to end
def test_tiny_end_to_end_training_and_sampling(tmp_path):
    """A plain loop: 60 AdamW steps on digits lower the loss; the samples are images in range."""
    torch.manual_seed(0)
    train = make_image_dataset("digits", split="train")
    obj = DiffusionObjective(
        ObjectiveConfig(num_train_timesteps=100, num_inference_steps=10), assigner=make_assigner("knn", k=4)
    )
    model = ImageDiffusionModel(ImageModelConfig(base_channels=16), obj)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=seeded(0))
    gen = seeded(1)
    losses = []
    step = 0
    while step < 60:
        for batch in loader:
            loss, _ = model.compute_loss(batch, generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step == 60:
                break
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    images = model.sample(20, labels=torch.arange(20) % 10, generator=seeded(2), guidance_scale=2.0)
    assert images.shape == (20, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert float(images.std()) > 0.2  # not collapsed to a constant
    path = save_image_grid(images, tmp_path / "samples.png", nrow=10)
    assert path.stat().st_size > 0
