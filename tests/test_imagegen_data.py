"""Image datasets: bundled digits, idx (MNIST), CIFAR-10 pickle batches, image folders, and their errors."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from diffpolicy_immix.imagegen import (
    DATASETS,
    ImageDataset,
    load_faces_dataset,
    make_image_dataset,
    read_idx,
    resize_center_crop,
)


# ------------------------------------------------------------------------------------------ helpers
def write_idx(path, array: np.ndarray, gz: bool = False, magic: int | None = None) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = struct.pack(">I", magic if magic is not None else (code << 8) | array.ndim)
    header += b"".join(struct.pack(">I", s) for s in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_mnist(root, n_train=5, n_test=3, gz=False):
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255
        y = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", y, gz)
        out[prefix] = (x, y)
    return out


def write_cifar_batch(path, n, seed, py2_style=True):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    if py2_style:  # bytes keys, protocol 2, as the official python batches
        obj = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        path.write_bytes(pickle.dumps({"labels": labels, "data": data}, protocol=4))
    return data, labels


def save_img(path, size, mode="RGB", color=(200, 30, 30)):
    fill = color if mode == "RGB" else color[0]
    Image.new(mode, size, fill).save(path)


# ------------------------------------------------------------------------------------------- digits
def test_digits_split_is_seeded_stratified_and_in_range():
    train = make_image_dataset("digits", split="train")
    test = make_image_dataset("digits", split="test")
    full = make_image_dataset("digits", split="all")
    assert len(train) + len(test) == len(full) == 1797
    assert train.image_shape == (1, 8, 8) and train.num_classes == 10
    item = train[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 8, 8)
    assert item["label"].dtype == torch.int64
    x = full.images()
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # disjoint: no test image appears in train
    tr = {t.numpy().tobytes() for t in train.images()}
    overlap = sum(t.numpy().tobytes() in tr for t in test.images())
    assert overlap <= 5  # digits contains a handful of exact duplicates across classes/files
    # every class in both splits, ~20% held out per class
    counts = torch.bincount(test.labels, minlength=10).float() / torch.bincount(full.labels, minlength=10)
    assert torch.all((counts > 0.15) & (counts < 0.25))
    again = make_image_dataset("digits", split="test")
    assert torch.equal(again.images(), test.images())
    other = make_image_dataset("digits", split="test", seed=1)
    assert not torch.equal(other.labels, test.labels) or not torch.equal(other.images(), test.images())


def test_digits_resize():
    ds = make_image_dataset("digits", image_size=16, split="test")
    assert ds.image_shape == (1, 16, 16)
    assert ds.images().min() >= -1 and ds.images().max() <= 1


def test_resize_center_crop_non_square_uint8():
    x = torch.zeros(2, 3, 10, 20, dtype=torch.uint8)
    x[:, :, :, 5:15] = 255
    y = resize_center_crop(x, 5)
    assert y.shape == (2, 3, 5, 5) and y.dtype == torch.uint8
    assert int(y.min()) == 255  # the centre crop is the white part


# -------------------------------------------------------------------------------------------- faces
def test_faces_optional_dependency():
    try:
        import skimage  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"diffpolicy-immix\[faces\]"):
            load_faces_dataset()
        pytest.skip("scikit-image is not installed; checked the error names the extra")
    ds = make_image_dataset("faces", split="all")
    assert len(ds) == 200 and ds.image_shape == (1, 25, 25) and ds.num_classes == 2


# -------------------------------------------------------------------------------------------- mnist
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path, gz):
    ref = make_mnist(tmp_path, gz=gz)
    train = make_image_dataset("mnist", root=tmp_path, split="train")
    test = make_image_dataset("mnist", root=tmp_path, split="test")
    assert len(train) == 5 and len(test) == 3 and train.image_shape == (1, 28, 28)
    x = train.images()
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 1] == 1.0
    expected = torch.from_numpy(ref["train"][0]).float() / 127.5 - 1
    assert torch.allclose(x[:, 0], expected)
    assert train.labels.tolist() == [0, 1, 2, 3, 4]
    assert len(make_image_dataset("mnist", root=tmp_path, split="all")) == 8
    assert make_image_dataset("mnist", root=tmp_path, image_size=14).image_shape == (1, 14, 14)


def test_read_idx_wrong_magic(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    write_idx(p, np.zeros((2, 4, 4), np.uint8), magic=0x12345678)
    with pytest.raises(ValueError, match=r"wrong magic number 0x12345678"):
        read_idx(p)
    # an idx1 (labels) file where images are expected
    write_idx(p, np.zeros(4, np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte has a wrong magic number 0x00000801"):
        make_image_dataset("mnist", root=tmp_path)


def test_read_idx_truncated_and_mismatch(tmp_path):
    make_mnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds .* data bytes"):
        make_image_dataset("mnist", root=tmp_path)
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"has 5 images but .*train-labels-idx1-ubyte has 4 labels"):
        make_image_dataset("mnist", root=tmp_path)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST file not found: .*train-images-idx3-ubyte"):
        make_image_dataset("mnist", root=tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"dataset path does not exist: {missing}"):
        make_image_dataset("mnist", root=missing)
    with pytest.raises(ValueError, match=r"'mnist' needs root="):
        make_image_dataset("mnist")


# ------------------------------------------------------------------------------------------ cifar10
@pytest.mark.parametrize("py2_style", [True, False])
def test_cifar10_batches(tmp_path, py2_style):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = [write_cifar_batch(root / f"data_batch_{i}", 4, i, py2_style) for i in range(1, 6)]
    write_cifar_batch(root / "test_batch", 3, 99, py2_style)
    train = make_image_dataset("cifar10", root=tmp_path)  # parent folder works
    test = make_image_dataset("cifar10", root=root, split="test")
    assert len(train) == 20 and len(test) == 3 and train.image_shape == (3, 32, 32)
    d0, l0 = data[0]
    # channel-major rows: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    x = train.images()
    assert x[0, 1, 2, 3] == pytest.approx(d0[0, 1024 + 2 * 32 + 3] / 127.5 - 1)
    assert train.labels[:4].tolist() == l0
    assert train.class_names[0] == "airplane"


def test_cifar10_refuses_foreign_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(ValueError, match=r"test_batch: refusing to load global builtins.print"):
        make_image_dataset("cifar10", root=root, split="test")


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 batch not found: .*data_batch_1"):
        make_image_dataset("cifar10", root=tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"test_batch: 'data' shape \(2, 100\) must be \(N, 3072\)"):
        make_image_dataset("cifar10", root=tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"cannot read CIFAR-10 batch .*test_batch"):
        make_image_dataset("cifar10", root=tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"labels": [0]}))
    with pytest.raises(ValueError, match=r"has no key 'data'"):
        make_image_dataset("cifar10", root=tmp_path, split="test")


# ------------------------------------------------------------------------------------------- folder
def make_folder(root):
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    for i in range(5):
        save_img(root / "cat" / f"c{i}.png", (20 + i, 12), color=(250, 250, 250))
        save_img(root / "dog" / f"d{i}.jpg", (16, 30), color=(10, 10, 10))
    return root


def test_folder_with_class_subfolders(tmp_path):
    root = make_folder(tmp_path / "pets")
    full = make_image_dataset("folder", root=root, image_size=8, split="all")
    assert len(full) == 10 and full.image_shape == (3, 8, 8) and full.num_classes == 2
    assert full.class_names == ["cat", "dog"]  # sorted folder names -> labels
    x = full.images()
    cats, dogs = x[full.labels == 0], x[full.labels == 1]
    assert cats.min() > 0.9 and dogs.max() < -0.85  # PNG white cats, JPEG dark dogs
    train = make_image_dataset("folder", root=root, image_size=8, split="train", test_fraction=0.2)
    test = make_image_dataset("folder", root=root, image_size=8, split="test", test_fraction=0.2)
    assert len(train) == 8 and len(test) == 2 and sorted(test.labels.tolist()) == [0, 1]
    gray = make_image_dataset("folder", root=root, image_size=8, split="all", channels=1)
    assert gray.image_shape == (1, 8, 8)


def test_folder_flat_single_class(tmp_path):
    for i in range(3):
        save_img(tmp_path / f"{i}.png", (6, 6), mode="L", color=(128,))
    ds = make_image_dataset("folder", root=tmp_path, split="all")
    assert ds.num_classes == 1 and ds.image_shape == (1, 6, 6) and ds.labels.tolist() == [0, 0, 0]


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no images .* found in"):
        make_image_dataset("folder", root=tmp_path)
    save_img(tmp_path / "a.png", (8, 8), mode="L", color=(1,))
    save_img(tmp_path / "b.png", (8, 8), mode="RGB")
    mixed = r"mixes grayscale and colour images \(grayscale: .*a\.png, colour: .*b\.png\)"
    with pytest.raises(ValueError, match=mixed):
        make_image_dataset("folder", root=tmp_path, split="all")
    assert make_image_dataset("folder", root=tmp_path, split="all", channels=3).image_shape == (3, 8, 8)
    save_img(tmp_path / "c.png", (9, 8), mode="RGB")
    with pytest.raises(ValueError, match=r"images of different sizes .*set image_size"):
        make_image_dataset("folder", root=tmp_path, split="all", channels=3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.jpg"):
        make_image_dataset("folder", root=tmp_path, split="all", channels=3, image_size=8)
    with pytest.raises(ValueError, match=r"channels=2 must be 1"):
        make_image_dataset("folder", root=tmp_path, channels=2)


def test_factory_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown image dataset 'mnits'; valid names: digits, faces, mnist"):
        make_image_dataset("mnits")
    with pytest.raises(ValueError, match=r"split='val' is unknown; valid: train, test, all"):
        make_image_dataset("digits", split="val")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        make_image_dataset("folder", root=f)
    assert set(DATASETS) == {"digits", "faces", "mnist", "cifar10", "folder"}


def test_image_dataset_validation_and_loader():
    with pytest.raises(ValueError, match=r"labels shape \(3,\) must be \(2,\)"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3), 2, "x")
    ds = ImageDataset(torch.full((4, 1, 4, 4), 255, dtype=torch.uint8), torch.arange(4) % 2, 2, "x")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 4, 4) and torch.all(batch["image"] == 1.0)
    assert batch["label"].dtype == torch.int64
