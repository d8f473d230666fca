"""Image generation: a class-conditional 2-D UNet, image datasets and classifier-based metrics.

```python
from diffpolicy_immix.imagegen import (ImageDiffusionModel, ImageModelConfig, make_image_dataset,
                                       ClassifierFD, sample_and_score)
train = make_image_dataset("digits", split="train")       # 8x8, bundled with scikit-learn
model = ImageDiffusionModel(ImageModelConfig(), objective)
fd = ClassifierFD.from_dataset("digits")                  # classifier Fréchet distance (not Inception FID)
scores = sample_and_score(model, 500, fd, guidance_scale=2.0)
```
See docs/images.md.
"""

from .classifier import (
    ClassifierConfig,
    ImageClassifier,
    classifier_cache_path,
    load_or_train_classifier,
    train_classifier,
)
from .datasets import (
    DATASETS,
    ImageDataset,
    load_cifar10_dataset,
    load_digits_dataset,
    load_faces_dataset,
    load_folder_dataset,
    load_mnist_dataset,
    make_image_dataset,
    read_idx,
    resize_center_crop,
)
from .grid import ImageEvaluator, balanced_labels, make_grid, sample_and_score, save_image_grid
from .metrics import ClassifierFD, class_accuracy, feature_statistics, frechet_distance, inception_fid
from .model import IMAGE_MODEL_PRESETS, ImageDiffusionModel, ImageModelConfig
from .unet2d import UNet2D, sinusoidal_embedding

__all__ = [
    "DATASETS",
    "IMAGE_MODEL_PRESETS",
    "ClassifierConfig",
    "ClassifierFD",
    "ImageClassifier",
    "ImageDataset",
    "ImageDiffusionModel",
    "ImageEvaluator",
    "ImageModelConfig",
    "UNet2D",
    "balanced_labels",
    "class_accuracy",
    "classifier_cache_path",
    "feature_statistics",
    "frechet_distance",
    "inception_fid",
    "load_cifar10_dataset",
    "load_digits_dataset",
    "load_faces_dataset",
    "load_folder_dataset",
    "load_mnist_dataset",
    "load_or_train_classifier",
    "make_grid",
    "make_image_dataset",
    "read_idx",
    "resize_center_crop",
    "sample_and_score",
    "save_image_grid",
    "sinusoidal_embedding",
    "train_classifier",
]
