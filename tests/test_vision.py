"""Image encoders: spatial-softmax keypoints, seeded crops, encoder shapes, and the camera path of
DiffusionPolicy (loss, sampling, receding-horizon control from dict observations)."""

from __future__ import annotations

import pytest
import torch

from diffpolicy_immix.diffusion import DiffusionObjective, ObjectiveConfig
from diffpolicy_immix.immiscible import make_assigner
from diffpolicy_immix.policy import ENCODERS, DiffusionPolicy, PolicyConfig, make_obs_encoder
from diffpolicy_immix.policy.vision import (
    MultiModalEncoder,
    ResNet18GN,
    SmallCNN,
    SpatialSoftmax,
    VisionConfig,
    crop_images,
    normalize_images,
)


def test_spatial_softmax_finds_a_bright_blob_where_it_is():
    h, w = 21, 31
    heat = torch.zeros(2, 1, h, w)
    heat[0, 0, 5, 20] = 50.0  # row 5, column 20
    heat[1, 0, 0, 0] = 50.0
    kp = SpatialSoftmax(1, n_keypoints=None)(heat)  # (2, 1, 2) as (x, y)
    assert kp.shape == (2, 1, 2)
    expected = torch.tensor([[-1 + 2 * 20 / (w - 1), -1 + 2 * 5 / (h - 1)], [-1.0, -1.0]])
    torch.testing.assert_close(kp[:, 0], expected, atol=1e-4, rtol=0)
    flat = SpatialSoftmax(1, n_keypoints=None)(torch.zeros(1, 1, h, w))  # uniform heat -> the centre
    torch.testing.assert_close(flat[0, 0], torch.zeros(2), atol=1e-5, rtol=0)


def test_crops_are_identical_under_the_same_seed_and_differ_under_another():
    images = torch.arange(6 * 3 * 20 * 20, dtype=torch.float32).reshape(6, 3, 20, 20)
    a = crop_images(images, 12, torch.Generator().manual_seed(1))
    b = crop_images(images, 12, torch.Generator().manual_seed(1))
    c = crop_images(images, 12, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 12, 12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every crop is a contiguous window of its own image
    top = int(a[0, 0, 0, 0].item()) // 20
    left = int(a[0, 0, 0, 0].item()) % 20
    assert torch.equal(a[0], images[0, :, top : top + 12, left : left + 12])
    centre = crop_images(images, 12, random=False)
    assert torch.equal(centre, images[:, :, 4:16, 4:16])
    with pytest.raises(ValueError, match="crop_size=24 exceeds the image size 20 x 20"):
        crop_images(images, 24, random=False)
    with pytest.raises(ValueError, match="need a torch.Generator"):
        crop_images(images, 12, None)


def test_pixels_are_normalized_on_the_fly():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    torch.testing.assert_close(normalize_images(x)[0, :, 0], torch.tensor([[-1.0, 1.0]] * 3))
    net = normalize_images(x, "imagenet")
    assert net.shape == (1, 3, 1, 2) and net[0, 0, 0, 0] < -2


def test_backbone_feature_maps_and_small_cnn_size():
    assert ResNet18GN()(torch.zeros(1, 3, 84, 84)).shape == (1, 512, 3, 3)
    cnn = SmallCNN()
    assert cnn(torch.zeros(1, 3, 84, 84)).shape == (1, 64, 11, 11)
    assert 80_000 < sum(p.numel() for p in cnn.parameters()) < 120_000
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ResNet18GN().modules())


@pytest.mark.parametrize("cameras", [1, 2])
def test_encoder_output_shapes_for_one_and_two_cameras(cameras):
    keys = {f"cam{i}": 3 for i in range(cameras)}
    cfg = VisionConfig(crop_size=28, feature_dim=16, n_keypoints=8)
    enc = make_obs_encoder("small_cnn", 5, 2, image_channels=keys, vision=cfg)
    assert isinstance(enc, MultiModalEncoder)
    obs = {k: torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8) for k in keys}
    obs["obs"] = torch.randn(4, 2, 5)
    out = enc(obs, generator=torch.Generator().manual_seed(0))
    assert enc.out_dim == 2 * (cameras * 16 + 5) and out.shape == (4, enc.out_dim)
    # per step: camera features then the low-dim vector, flattened over To
    torch.testing.assert_close(out.view(4, 2, -1)[:, :, -5:], obs["obs"])
    shared = make_obs_encoder("small_cnn", 5, 2, image_channels=keys, vision=VisionConfig(shared=True, crop_size=28))
    per_camera = make_obs_encoder("small_cnn", 5, 2, image_channels=keys, vision=VisionConfig(crop_size=28))
    n_shared = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in per_camera.parameters()) == cameras * n_shared


def test_training_crops_follow_the_generator_and_evaluation_is_deterministic():
    enc = ENCODERS["small_cnn"](0, 1, image_channels={"img": 3}, vision=VisionConfig(crop_size=24))
    obs = {"img": torch.randint(0, 256, (3, 1, 3, 32, 32), dtype=torch.uint8)}
    a = enc(obs, generator=torch.Generator().manual_seed(5))
    b = enc(obs, generator=torch.Generator().manual_seed(5))
    c = enc(obs, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    enc.eval()
    assert torch.equal(enc(obs), enc(obs, generator=torch.Generator().manual_seed(9)))


def test_vision_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"policy.vision.crop_size=4 must be"):
        VisionConfig(crop_size=4)
    with pytest.raises(ValueError, match=r"policy.vision.image_norm='zero_one' must be one of"):
        VisionConfig(image_norm="zero_one")
    with pytest.raises(ValueError, match=r"obs_encoder='lowdim' cannot read the cameras"):
        PolicyConfig(image_keys=("img",), obs_encoder="lowdim")
    with pytest.raises(ValueError, match=r"obs_encoder='small_cnn' needs camera keys"):
        PolicyConfig(obs_encoder="small_cnn")
    with pytest.raises(ValueError, match=r"policy.vision: unknown key 'crop'"):
        PolicyConfig(image_keys=("img",), vision={"crop": 3})


def _camera_policy(obs_dim: int = 2) -> DiffusionPolicy:
    from diffpolicy_immix.data import LinearNormalizer

    torch.manual_seed(0)
    cfg = PolicyConfig(
        image_keys=("img",),
        obs_keys=("state:0:2",),
        down_dims=(16, 32),
        horizon=8,
        n_action_steps=4,
        vision={"crop_size": 28, "feature_dim": 16, "n_keypoints": 8},
    )
    data = {"obs": torch.randn(50, obs_dim), "action": torch.randn(50, 2)}
    normalizer = LinearNormalizer().fit(data)
    objective = DiffusionObjective(
        ObjectiveConfig(kind="ddpm", num_train_timesteps=20, num_inference_steps=3), make_assigner("knn", k=2)
    )
    return DiffusionPolicy(cfg, obs_dim, 2, normalizer, objective)


def test_camera_policy_loss_is_a_function_of_the_generator_and_control_takes_dict_observations():
    policy = _camera_policy()
    assert policy.cfg.obs_encoder == "small_cnn"  # picked automatically for camera tasks
    batch = {
        "img": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8),
        "obs": torch.randn(4, 8, 2),
        "action": torch.randn(4, 8, 2),
    }
    l1, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(3))
    l2, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(3))
    l3, _ = policy.compute_loss(batch, generator=torch.Generator().manual_seed(4))
    assert torch.equal(l1, l2) and not torch.equal(l1, l3)
    l1.backward()
    assert policy.obs_encoder.cameras["img"].head.weight.grad is not None

    policy.eval()
    policy.reset()
    env_obs = {"img": torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8), "state": torch.randn(3, 6)}
    actions = [policy.select_action(env_obs, generator=torch.Generator().manual_seed(0)) for _ in range(5)]
    assert all(a.shape == (3, 2) for a in actions)
    out = policy.predict_action({"img": batch["img"][:3], "obs": batch["obs"][:3, :2]})
    assert out["action"].shape == (3, 4, 2) and out["action_pred"].shape == (3, 8, 2)
    with pytest.raises(KeyError, match="no image key 'img'"):
        policy.predict_action({"obs": batch["obs"][:3, :2]})
