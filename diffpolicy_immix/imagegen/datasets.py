"""Image datasets for diffusion training and for the classifier metric.

Every dataset is an :class:`ImageDataset` (a ``torch.utils.data.Dataset``) whose items are
``{"image": Tensor (C, H, W) float32 in [-1, 1], "label": Tensor () int64}``; it also exposes
``num_classes``, ``image_shape`` (C, H, W), the whole ``labels`` tensor and :meth:`ImageDataset.images`
(a float batch in [-1, 1]) for metrics.

Sources (``make_image_dataset(name, ...)``; ``DATASETS`` lists them):

| name      | source                                                            | needs root | split            |
|-----------|-------------------------------------------------------------------|------------|------------------|
| `digits`  | scikit-learn's bundled ``load_digits()`` (1797 x 8x8, 10 classes) | no         | seeded, stratified |
| `faces`   | scikit-image's ``data.lfw_subset()`` (200 x 25x25; 1 = face)      | no         | seeded, stratified |
| `mnist`   | idx files (``train-images-idx3-ubyte[.gz]`` ...)                  | yes        | official         |
| `cifar10` | python pickle batches (``cifar-10-batches-py/data_batch_1..5``)   | yes        | official         |
| `folder`  | a folder of PNG/JPEG/BMP images, optional class subfolders        | yes        | seeded, stratified |

``split`` is ``"train"``, ``"test"`` or ``"all"``. ``image_size`` (optional) center-crops to a square
and resizes (antialiased) to ``image_size x image_size``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

SPLITS = ("train", "test", "all")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class ImageDataset(Dataset):
    """In-memory labelled images.

    Args:
        images: Tensor, shape (N, C, H, W): uint8 in [0, 255], or float already in [-1, 1].
        labels: Tensor, shape (N,), int64 in [0, num_classes).
        num_classes: number of classes.
        name: dataset name (used for cache keys and messages).
        class_names: optional names, one per class.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        name: str,
        class_names: list[str] | None = None,
    ):
        if images.ndim != 4:
            raise ValueError(f"{name}: images shape {tuple(images.shape)} must be (N, C, H, W)")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: labels shape {tuple(labels.shape)} must be ({images.shape[0]},)")
        if images.dtype != torch.uint8:
            images = images.float()
        self._images = images.contiguous()
        self.labels = labels.long().contiguous()
        self.num_classes = int(num_classes)
        self.name = name
        self.class_names = class_names or [str(i) for i in range(self.num_classes)]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self._images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def images(self, index: Tensor | slice | None = None) -> Tensor:
        """Float images in [-1, 1]: Tensor, shape (N', C, H, W) (all of them when index is None)."""
        raw = self._images if index is None else self._images[index]
        return to_unit_range(raw)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": to_unit_range(self._images[i]), "label": self.labels[i]}

    def fingerprint(self) -> str:
        """SHA-256 of the raw images and labels (for cache keys)."""
        h = hashlib.sha256()
        h.update(str(tuple(self._images.shape)).encode())
        h.update(str(self._images.dtype).encode())
        h.update(self._images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float tensors are returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images.float()


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """Center-crop to a square and resize (bilinear, antialiased).

    Args:
        images: Tensor, shape (N, C, H, W), uint8 or float.
        size: output side.
    Returns:
        Tensor, shape (N, C, size, size), the input dtype (uint8 is rounded and clamped).
    """
    if size < 1:
        raise ValueError(f"image_size={size} must be >= 1")
    _, _, h, w = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = images[:, :, top : top + side, left : left + side]
    if side == size:
        return x.contiguous()
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.clamp(-1.0, 1.0)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; valid: {', '.join(SPLITS)}")


def _seeded_split(labels: np.ndarray, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, stratified train/test split (sorted)."""
    _check_split(split)
    n = len(labels)
    if split == "all":
        return np.arange(n)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    if split == "test":
        return test_idx
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask)


def _finish(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    name: str,
    image_size: int | None,
    class_names: list[str] | None = None,
) -> ImageDataset:
    if image_size is not None:
        images = resize_center_crop(images, image_size)
    return ImageDataset(images, labels, num_classes, name, class_names)


# ---------------------------------------------------------------------------------------------- digits
def load_digits_dataset(
    split: str = "train", image_size: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (values 0..16 mapped linearly to [-1, 1]), no download.

    Args:
        split: "train" | "test" | "all"; a stratified split seeded by ``seed``.
        image_size: optional resize (default 8).
        test_fraction: fraction of each class held out for "test".
        seed: split seed.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)  # (N, 8, 8), 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    idx = _seeded_split(y, split, test_fraction, seed)
    images = torch.from_numpy(x[idx] / 8.0 - 1.0).unsqueeze(1)  # (N, 1, 8, 8) in [-1, 1]
    return _finish(images, torch.from_numpy(y[idx]), 10, "digits", image_size)


# ----------------------------------------------------------------------------------------------- faces
def load_faces_dataset(
    split: str = "train", image_size: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> ImageDataset:
    """scikit-image's bundled ``lfw_subset()``: 100 faces (label 1) and 100 non-faces (label 0), 25x25.

    Needs scikit-image (``pip install 'diffpolicy-immix[faces]'``).
    """
    try:
        from skimage import data as skdata
    except ImportError as err:
        raise ImportError(
            "the 'faces' dataset needs scikit-image; install the extra: pip install 'diffpolicy-immix[faces]'"
        ) from err
    x = np.asarray(skdata.lfw_subset(), dtype=np.float32)  # (200, 25, 25) in [0, 1]
    y = np.concatenate([np.ones(100, dtype=np.int64), np.zeros(len(x) - 100, dtype=np.int64)])
    idx = _seeded_split(y, split, test_fraction, seed)
    images = torch.from_numpy(np.clip(x[idx], 0.0, 1.0) * 2.0 - 1.0).unsqueeze(1)
    return _finish(images, torch.from_numpy(y[idx]), 2, "faces", image_size, ["non-face", "face"])


# ----------------------------------------------------------------------------------------------- mnist
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read an idx file (plain or gzip, detected by content) into a numpy array.

    The header is two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then
    one big-endian int32 per dimension. MNIST images are ``0x00000803`` (uint8, 3-D), labels
    ``0x00000801``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read idx file {path}: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"idx file {path} is too short ({len(raw)} bytes) to hold a header")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"idx file {path} has a wrong magic number 0x{magic:08x} (expected 0x000008NN, "
            "e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(
            f"idx file {path} has a wrong magic number 0x{magic:08x}: {ndim}-D data, expected "
            f"{expected_ndim}-D (0x{0x800 + expected_ndim:08x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"idx file {path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"idx file {path} holds {len(raw) - header} data bytes but its header {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, prefix: str, kind: str, ndim: int) -> Path:
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    candidates = [root / (n + gz) for n in names for gz in ("", ".gz")]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"MNIST file not found: {candidates[0]} (also tried .gz and '.idx' spellings)")


def load_mnist_dataset(root: str | Path, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """MNIST (or Fashion-MNIST, same format) from idx files in ``root``.

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``; ``root/raw`` is also searched).
    """
    _check_split(split)
    root = _existing_dir(root, "mnist")
    if not any(root.glob("*-idx*")) and (root / "raw").is_dir():
        root = root / "raw"
    prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    xs, ys = [], []
    for prefix in prefixes:
        img_path = _find_idx(root, prefix, "images", 3)
        lbl_path = _find_idx(root, prefix, "labels", 1)
        x = read_idx(img_path, expected_ndim=3)
        y = read_idx(lbl_path, expected_ndim=1)
        if x.dtype != np.uint8:
            raise ValueError(f"idx file {img_path} holds {x.dtype} pixels; expected uint8 (0x08)")
        if len(x) != len(y):
            raise ValueError(f"{img_path} has {len(x)} images but {lbl_path} has {len(y)} labels")
        xs.append(x)
        ys.append(y.astype(np.int64))
    y = np.concatenate(ys)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"MNIST labels in {root} must be 0..9; found {y.min()}..{y.max()}")
    images = torch.from_numpy(np.concatenate(xs)).unsqueeze(1)  # (N, 1, 28, 28) uint8
    return _finish(images, torch.from_numpy(y), 10, "mnist", image_size)


# --------------------------------------------------------------------------------------------- cifar10
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays and plain containers.

    CIFAR-10's python batches are pickled dicts of bytes keys, lists of ints and one uint8 numpy
    array. Loading them needs ``numpy``'s array reconstructor, ``ndarray`` and ``dtype`` (plus
    ``_codecs.encode``, which protocol-2 pickles written by Python 3 use to store bytes) and nothing
    else, so every other global (which a crafted pickle could use to run code) is refused.
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays allowed)")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        try:  # numpy >= 2 (numpy.core is a deprecated alias there)
            from numpy._core import multiarray
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray  # type: ignore[no-redef]

        return getattr(multiarray, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as err:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR-10 batch {path} holds a {type(obj).__name__}, expected a dict")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    for key in ("data", "labels"):
        if key not in d:
            raise ValueError(f"CIFAR-10 batch {path} has no key {key!r} (keys: {sorted(map(str, d))})")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR-10 batch {path}: 'data' shape {data.shape} must be (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR-10 batch {path}: {len(labels)} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 batch {path}: labels must be 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_cifar10_dataset(root: str | Path, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """CIFAR-10 from the python version's pickle batches.

    ``root`` is ``cifar-10-batches-py/`` or its parent. Train = ``data_batch_1..5``, test = ``test_batch``.
    """
    _check_split(split)
    root = _existing_dir(root, "cifar10")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "all": [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
    }[split]
    xs, ys = [], []
    for n in names:
        path = root / n
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 batch not found: {path}")
        x, y = _load_cifar_batch(path)
        xs.append(x)
        ys.append(y)
    images = torch.from_numpy(np.concatenate(xs))
    labels = torch.from_numpy(np.concatenate(ys))
    return _finish(images, labels, 10, "cifar10", image_size, list(CIFAR10_CLASSES))


# ---------------------------------------------------------------------------------------------- folder
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _file_channels(mode: str) -> int:
    return 1 if mode in _GRAY_MODES else 3


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _existing_dir(root: str | Path | None, name: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<path>; none was given")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"dataset path is not a folder: {path}")
    return path


def _open_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err
    return img


def _to_array(img: Any, channels: int, image_size: int | None) -> np.ndarray:
    """PIL image -> uint8 (C, S, S) (or native size when image_size is None)."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels over white rather than dropping alpha blindly.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if image_size is not None:
        w, h = img.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_folder_dataset(
    root: str | Path,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageDataset:
    """Any folder of images (PNG, JPEG, BMP), loaded into memory.

    Layout: either images directly in ``root`` (one class, label 0) or one subfolder per class
    (sorted folder names -> labels 0..K-1; images directly in ``root`` are then ignored with a warning).

    Args:
        root: the folder.
        split: "train" | "test" | "all" (a seeded, stratified split of the files).
        image_size: resize the shorter side to this and center-crop a square; None keeps the native
            size (all files must then have the same size).
        channels: 1 (grayscale) or 3 (RGB) converts every file; None requires every file to have the
            same channel count (grayscale vs colour) and keeps it.
        test_fraction: fraction of each class held out for "test".
        seed: split seed.
    """
    _check_split(split)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels} must be 1 (grayscale), 3 (RGB) or None (from the files)")
    root = _existing_dir(root, "folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in subdirs if _list_images(d)]
    loose = _list_images(root)
    if class_dirs:
        if loose:
            warnings.warn(
                f"{root}: ignoring {len(loose)} images outside the class subfolders (e.g. {loose[0].name})",
                stacklevel=2,
            )
        class_names = [d.name for d in class_dirs]
        files = [(p, i) for i, d in enumerate(class_dirs) for p in _list_images(d)]
    else:
        class_names = [root.name or "images"]
        files = [(p, 0) for p in loose]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root} or its subfolders")
    labels_all = np.array([lbl for _, lbl in files], dtype=np.int64)
    idx = _seeded_split(labels_all, split, test_fraction, seed)

    # Channel check over all files (so train and test agree), reading headers only.
    from PIL import Image, UnidentifiedImageError

    kinds: dict[int, Path] = {}
    sizes: dict[tuple[int, int], Path] = {}
    for p, _ in files:
        try:
            with Image.open(p) as img:
                kinds.setdefault(_file_channels(img.mode), p)
                sizes.setdefault(img.size, p)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"cannot read image file {p}: {err}") from err
    if channels is None:
        if len(kinds) > 1:
            raise ValueError(
                f"{root} mixes grayscale and colour images (grayscale: {kinds[1]}, colour: {kinds[3]}); "
                "set channels=1 or channels=3 to convert them"
            )
        channels = next(iter(kinds))
    if image_size is None and len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise ValueError(
            f"{root} has images of different sizes ({p1}: {s1[0]}x{s1[1]}, {p2}: {s2[0]}x{s2[1]}); "
            "set image_size to resize them"
        )
    arrays = []
    for i in idx:
        with _open_image(files[i][0]) as img:
            arrays.append(_to_array(img, channels, image_size))
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, channels, 1, 1, dtype=torch.uint8)
    name = f"folder:{root.name}"
    return ImageDataset(images, torch.from_numpy(labels_all[idx]), len(class_names), name, class_names)


# --------------------------------------------------------------------------------------------- factory
def _digits(root: Any, split: str, image_size: int | None, **opts: Any) -> ImageDataset:
    return load_digits_dataset(split=split, image_size=image_size, **opts)


def _faces(root: Any, split: str, image_size: int | None, **opts: Any) -> ImageDataset:
    return load_faces_dataset(split=split, image_size=image_size, **opts)


def _mnist(root: Any, split: str, image_size: int | None, **opts: Any) -> ImageDataset:
    return load_mnist_dataset(_existing_dir(root, "mnist"), split=split, image_size=image_size, **opts)


def _cifar10(root: Any, split: str, image_size: int | None, **opts: Any) -> ImageDataset:
    return load_cifar10_dataset(_existing_dir(root, "cifar10"), split=split, image_size=image_size, **opts)


def _folder(root: Any, split: str, image_size: int | None, **opts: Any) -> ImageDataset:
    return load_folder_dataset(_existing_dir(root, "folder"), split=split, image_size=image_size, **opts)


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": _digits,
    "faces": _faces,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "folder": _folder,
}


def make_image_dataset(
    name: str,
    root: str | Path | None = None,
    image_size: int | None = None,
    split: str = "train",
    **opts: Any,
) -> ImageDataset:
    """Build an image dataset by name.

    Args:
        name: one of ``DATASETS``: "digits", "faces", "mnist", "cifar10", "folder".
        root: local path (needed by mnist, cifar10, folder; ignored by the bundled ones).
        image_size: optional square output size (center crop + antialiased resize).
        split: "train" | "test" | "all".
        **opts: loader options (``test_fraction``, ``seed`` for seeded splits; ``channels`` for folder).
    Returns:
        An :class:`ImageDataset`.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; valid names: {', '.join(DATASETS)}")
    _check_split(split)
    return DATASETS[name](root, split, image_size, **opts)
