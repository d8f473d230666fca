"""Fréchet distance (closed forms), the digits classifier and its cache, sample grids, sample_and_score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffpolicy_immix.imagegen import (
    ClassifierConfig,
    ClassifierFD,
    ImageDiffusionModel,
    ImageEvaluator,
    ImageModelConfig,
    feature_statistics,
    frechet_distance,
    inception_fid,
    load_or_train_classifier,
    make_grid,
    make_image_dataset,
    sample_and_score,
    save_image_grid,
    train_classifier,
)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# -------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_closed_form_shared_eigenbasis():
    # S1 = R diag(a) R^T, S2 = R diag(b) R^T  =>  FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(0)
    d = 6
    r = random_rotation(d, rng)
    a, b = rng.uniform(0.5, 3.0, d), rng.uniform(0.1, 2.0, d)
    s1, s2 = r @ np.diag(a) @ r.T, r @ np.diag(b) @ r.T
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(expected, rel=1e-9)  # symmetric
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_general_case_matches_eigen_formula():
    # non-commuting covariances: Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))
    rng = np.random.default_rng(1)
    d = 5
    x, y = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = x @ x.T + 0.1 * np.eye(d), y @ y.T + 0.1 * np.eye(d)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_from_gaussian_samples():
    # Features drawn from N(m1, S1) and N(m2, S2): the FD of the exact statistics is the closed form;
    # the FD of the sample statistics converges to it (n = 20000, d = 4: tolerance 0.05 absolute).
    rng = np.random.default_rng(2)
    d = 4
    m1, m2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.25, 2.0, 2.0, 1.0])
    r = random_rotation(d, rng)
    s1, s2 = r @ np.diag(a) @ r.T, r @ np.diag(b) @ r.T
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    f1 = rng.multivariate_normal(m1, s1, size=20000)
    f2 = rng.multivariate_normal(m2, s2, size=20000)
    mu1, sig1 = feature_statistics(torch.from_numpy(f1))
    mu2, sig2 = feature_statistics(f2)
    assert np.allclose(sig1, np.cov(f1, rowvar=False))
    assert frechet_distance(mu1, sig1, mu2, sig2) == pytest.approx(expected, abs=0.05)
    assert frechet_distance(mu1, sig1, mu1, sig1) < 1e-6  # FD(x, x) ~ 0


def test_frechet_distance_singular_and_errors():
    # rank-deficient features (fewer samples than dimensions): finite, non-negative
    rng = np.random.default_rng(3)
    f = rng.standard_normal((5, 16))
    mu, sig = feature_statistics(f)
    value = frechet_distance(mu, sig, mu + 1.0, sig)  # Tr(S + S - 2 (S S)^1/2) = 0 for PSD S
    assert np.isfinite(value) and value == pytest.approx(16.0, rel=1e-2)
    with pytest.raises(ValueError, match=r"mean shapes differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"must be \(N >= 2, F\)"):
        feature_statistics(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def digits_fd(tmp_path_factory) -> ClassifierFD:
    cache = tmp_path_factory.mktemp("cache")
    return ClassifierFD.from_dataset("digits", cache_dir=cache)


def test_classifier_reaches_97_percent_and_is_cached(digits_fd, tmp_path):
    info = digits_fd.info
    assert info["test_accuracy"] >= 0.97, info
    assert info["cached"] is False
    path = info["cache_path"]
    assert path.endswith(".pt") and "digits-" in path
    # reload from the cache: same predictions, flagged as cached
    train = make_image_dataset("digits", split="train")
    test = make_image_dataset("digits", split="test")
    again, info2 = load_or_train_classifier(train, test, cache_dir=str(Path(path).parent))
    assert info2["cached"] is True and info2["test_accuracy"] == info["test_accuracy"]
    assert torch.equal(again.predict(test.images()), digits_fd.classifier.predict(test.images()))
    # no temp files left next to the cache file
    assert not [p for p in Path(path).parent.iterdir() if p.suffix == ".tmp"]


def test_classifier_training_is_deterministic():
    train = make_image_dataset("digits", split="train")
    cfg = ClassifierConfig(epochs=1, max_shift=1, max_train=256)
    state = torch.get_rng_state()
    m1, _ = train_classifier(train, None, cfg)
    assert torch.equal(state, torch.get_rng_state())  # global random state untouched
    m2, _ = train_classifier(train, None, cfg)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_classifier_fd_behaviour(digits_fd):
    test = make_image_dataset("digits", split="test")
    train = make_image_dataset("digits", split="train")
    assert digits_fd.fd(test.images()) == pytest.approx(0.0, abs=1e-6)  # the reference itself
    real = digits_fd.fd(train.images()[:359])
    gen = torch.Generator().manual_seed(0)
    junk = torch.rand(359, 1, 8, 8, generator=gen) * 2 - 1  # uniform pixels, not digits
    assert digits_fd.fd(junk) > 10 * real
    assert digits_fd.class_accuracy(test.images(), test.labels) >= 0.97
    assert digits_fd.class_accuracy(test.images(), (test.labels + 1) % 10) < 0.05
    with pytest.raises(ValueError, match=r"must be \(N, 1, 8, 8\)"):
        digits_fd.fd(torch.zeros(4, 3, 8, 8))


def test_inception_fid_needs_local_weights_and_extra(tmp_path):
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        inception_fid(x, x, tmp_path / "missing.pth")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        weights = tmp_path / "w.pth"
        weights.write_bytes(b"")
        with pytest.raises(ImportError, match=r"diffpolicy-immix\[fid\]"):
            inception_fid(x, x, weights)


# ------------------------------------------------------------------------------------------ grids
def test_make_grid_layout():
    imgs = torch.full((5, 1, 8, 8), -1.0)
    imgs[1] = 1.0
    arr = make_grid(imgs, nrow=3, padding=1, upscale=2)
    assert arr.shape == (2 * 17 + 1, 3 * 17 + 1) and arr.dtype == np.uint8
    assert arr[1, 1] == 0 and arr[1, 18] == 255 and arr[0, 0] == 255  # black tile, white tile, padding
    rgb = make_grid(torch.zeros(4, 3, 4, 4), padding=0)
    assert rgb.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="must be"):
        make_grid(torch.zeros(2, 2, 4, 4))


def test_save_image_grid_atomic_png(tmp_path):
    from PIL import Image

    path = save_image_grid(torch.zeros(10, 1, 8, 8), tmp_path / "sub" / "g.png")  # auto upscale x4
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (4 * 33 + 1, 3 * 33 + 1)
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]


def test_sample_and_score_and_evaluator(digits_fd, tmp_path):
    model = ImageDiffusionModel(ImageModelConfig(base_channels=16))
    gen = torch.Generator().manual_seed(0)
    out = sample_and_score(
        model, 20, digits_fd, guidance_scale=2.0, generator=gen, num_steps=2, grid_path=tmp_path / "s.png"
    )
    assert {"fd", "score", "class_accuracy", "sample_mean", "sample_std", "saturated_frac"} <= set(out)
    assert out["score"] == -out["fd"] and out["fd"] > 0 and 0 <= out["class_accuracy"] <= 1
    assert (tmp_path / "s.png").is_file()
    evaluate = ImageEvaluator(digits_fd, n=12, num_steps=2, grid_dir=tmp_path / "ev")
    a, b = evaluate(model), evaluate(model)
    assert a["fd"] == b["fd"]  # same seed each call
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["samples_0000.png", "samples_0001.png"]
