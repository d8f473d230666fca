"""Image-generation metrics: a classifier Fréchet distance and class-conditional sample accuracy.

**What "FD" means here.** ``ClassifierFD`` fits a Gaussian to the penultimate-layer features
(``ClassifierConfig.feature_dim`` = 64 numbers, post-ReLU) of a small CNN trained *on the dataset
itself* (:mod:`diffpolicy_immix.imagegen.classifier`), once for generated images and once for a
reference split of real images, and returns the Fréchet (2-Wasserstein) distance between the two
Gaussians::

    FD = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))

This is the formula of FID, but it is **not** the Inception FID of the literature: the features come
from a different, dataset-specific network, so its values are comparable only between runs that use
the same dataset, the same cached classifier (same data, config and seed), the same reference split
and the same number of generated samples (the estimate is biased upward for small sample counts).
It is a relative measure for comparing training runs (e.g. assigners) on one dataset.

The standard Inception FID is available through :func:`inception_fid` only when torch-fidelity is
installed (extra ``diffpolicy-immix[fid]``) **and** the user supplies the Inception weights file
locally; no download is ever attempted.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from diffpolicy_immix.imagegen.classifier import (
    DEFAULT_CACHE_DIR,
    ClassifierConfig,
    ImageClassifier,
    load_or_train_classifier,
)
from diffpolicy_immix.imagegen.datasets import ImageDataset, make_image_dataset


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features.

    Args:
        features: Tensor or array, shape (N, F), N >= 2.
    Returns:
        (mu (F,), sigma (F, F)), float64 numpy arrays.
    """
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_statistics: features shape {x.shape} must be (N >= 2, F)")
    if not np.isfinite(x).all():
        raise ValueError("feature_statistics: features contain NaN or inf")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))``, with the matrix square
    root from ``scipy.linalg.sqrtm``. Safeguards: when the product is singular (non-finite root) both
    covariances get ``eps * I`` added; an imaginary part from round-off is dropped (an error if it is
    large, > 1e-3 on the diagonal); a result that is negative by round-off is clipped to 0.

    Args:
        mu1, mu2: arrays, shape (F,).
        sigma1, sigma2: arrays, shape (F, F), symmetric positive semi-definite.
        eps: diagonal offset used when the product is singular.
    Returns:
        The distance (a float >= 0).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mean shapes differ: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: covariance shapes {sigma1.shape}, {sigma2.shape} must be ({d}, {d})")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular products are common (e.g. dead ReLU features); finiteness is checked below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: covariance product is singular; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(d) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: matrix square root has a large imaginary part "
                f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are not valid"
            )
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def class_accuracy(classifier: ImageClassifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of generated images that the classifier assigns to their conditioning class.

    Args:
        images: Tensor, shape (N, C, H, W) in [-1, 1].
        labels: Tensor, shape (N,), the classes the images were sampled for.
    """
    if labels.shape != (images.shape[0],):
        raise ValueError(f"class_accuracy: labels shape {tuple(labels.shape)} must be ({images.shape[0]},)")
    return classifier.accuracy(images, labels)


class ClassifierFD:
    """Fréchet distance in the features of a dataset-specific classifier (see the module docstring).

    Args:
        classifier: a trained :class:`ImageClassifier`.
        reference: real images, Tensor (N, C, H, W) in [-1, 1], or an :class:`ImageDataset`; their
            feature statistics are computed once.
        batch_size: feature-extraction batch size.
        info: optional facts about the classifier (e.g. its ``test_accuracy``), kept in ``self.info``.
    """

    def __init__(
        self,
        classifier: ImageClassifier,
        reference: Tensor | ImageDataset,
        batch_size: int = 512,
        info: dict[str, Any] | None = None,
    ):
        self.classifier = classifier.eval()
        ref = reference.images() if isinstance(reference, ImageDataset) else reference
        if ref.ndim != 4:
            raise ValueError(f"ClassifierFD: reference shape {tuple(ref.shape)} must be (N, C, H, W)")
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in ref.shape[1:])  # type: ignore[assignment]
        self.batch_size = batch_size
        self.num_reference = int(ref.shape[0])
        self.mu, self.sigma = feature_statistics(self.features(ref))
        self.info: dict[str, Any] = dict(info or {})

    @classmethod
    def from_dataset(
        cls,
        name: str,
        root: str | Path | None = None,
        image_size: int | None = None,
        reference_split: str = "test",
        classifier_cfg: ClassifierConfig | None = None,
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        progress: bool = False,
        **dataset_opts: Any,
    ) -> ClassifierFD:
        """Train (or load from the cache) the classifier of a dataset and use one split as reference.

        The classifier is trained on the "train" split and its accuracy measured on "test";
        ``reference_split`` ("test" or "train") picks the real images the FD compares against.
        Arguments as for :func:`~diffpolicy_immix.imagegen.datasets.make_image_dataset` and
        :func:`~diffpolicy_immix.imagegen.classifier.load_or_train_classifier`.
        """
        if reference_split not in ("train", "test"):
            raise ValueError(f"reference_split={reference_split!r} must be 'train' or 'test'")
        train = make_image_dataset(name, root=root, image_size=image_size, split="train", **dataset_opts)
        test = make_image_dataset(name, root=root, image_size=image_size, split="test", **dataset_opts)
        classifier, info = load_or_train_classifier(train, test, classifier_cfg, cache_dir, progress)
        info = {**info, "dataset": name, "reference_split": reference_split}
        return cls(classifier, test if reference_split == "test" else train, info=info)

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"ClassifierFD: images shape {tuple(images.shape)} must be (N, {', '.join(map(str, self.image_shape))})"
            )

    def features(self, images: Tensor) -> Tensor:
        """images: Tensor (N, C, H, W) in [-1, 1] -> classifier features, Tensor (N, F) (CPU)."""
        return self.classifier.extract(images, self.batch_size)[0]

    def fd(self, images: Tensor) -> float:
        """FD between the generated ``images`` (Tensor (N >= 2, C, H, W) in [-1, 1]) and the reference."""
        self._check(images)
        mu, sigma = feature_statistics(self.features(images))
        return frechet_distance(mu, sigma, self.mu, self.sigma)

    __call__ = fd

    def class_accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of ``images`` (N, C, H, W) classified as their conditioning ``labels`` (N,)."""
        self._check(images)
        return class_accuracy(self.classifier, images, labels)


# ------------------------------------------------------------------------------ optional Inception FID
def inception_fid(
    images1: Tensor, images2: Tensor, weights_path: str | Path, batch_size: int = 64, device: str = "cpu"
) -> float:
    """Standard Inception FID (2048-d pool features of the TF-compatible InceptionV3), offline only.

    Needs torch-fidelity (``pip install 'diffpolicy-immix[fid]'``) and the FID Inception weights file
    (``weights-inception-2015-12-05-6726825d.pth``) already on disk: no download is attempted.
    Grayscale images are repeated to 3 channels; images are resized to 299x299 by the extractor.

    Args:
        images1, images2: Tensors, shape (N, C, H, W) in [-1, 1], C in {1, 3}.
        weights_path: local path of the Inception weights.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}; inception_fid never downloads them, pass a local file"
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError(
            "inception_fid needs torch-fidelity; install the extra: pip install 'diffpolicy-immix[fid]' "
            "(no weights are downloaded: pass weights_path)"
        ) from err
    extractor = (
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        .to(device)
        .eval()
    )

    def feats(images: Tensor) -> Tensor:
        out = []
        for chunk in images.split(batch_size):
            if chunk.shape[1] == 1:
                chunk = chunk.expand(-1, 3, -1, -1)
            u8 = ((chunk.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
            with torch.no_grad():
                out.append(extractor(u8.to(device))[0].reshape(len(u8), -1).double().cpu())
        return torch.cat(out)

    mu1, s1 = feature_statistics(feats(images1))
    mu2, s2 = feature_statistics(feats(images2))
    return frechet_distance(mu1, s1, mu2, s2)
