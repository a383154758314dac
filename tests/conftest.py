"""Shared fixtures: tiny datasets written in each dataset's own on-disk format.

The images are not noise: each class has its own mean brightness pattern, so a few epochs
of training reach well above chance and accuracy-based assertions mean something.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]   # the repository; tests/ is a package, so pytest puts ROOT on the path


def class_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class (0-9) decides which horizontal band is bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, *shape)).astype(np.uint8)
    height = shape[0] if len(shape) == 2 else shape[0]
    band = max(height // 10, 1)
    for i, label in enumerate(labels):
        images[i, label * band:(label + 1) * band] = 200
    return images, labels


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 600, n_test: int = 100, folder: str = "MNIST",
                seed: int = 1) -> Path:
    """IDX files as MNIST has them (Fashion-MNIST too, with folder="FashionMNIST")."""
    write_idx_pair(root, n_train, n_test, folder, seed)
    return root


def write_idx_pair(root: Path, n_train: int, n_test: int, folder: str,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Writes the IDX files; returns the images (N x 1 x 28 x 28, train then test) and labels."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = []
    for prefix, n, part_seed in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = class_images(n, (28, 28), part_seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written.append((images[:, None], labels))
    return np.concatenate([w[0] for w in written]), np.concatenate([w[1] for w in written])


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100's pickles train, test, meta in cifar-100-python/: 'data' (N x 3072, channel-major),
    'fine_labels' (0-99) and 'coarse_labels'. Returns the images (N x 3 x 32 x 32) and fine labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, n, seed in (("train", n_train, 30), ("test", n_test, 31)):
        images, bands = class_images(n, (32, 32, 3), seed)
        fine = bands.astype(np.int64) + 10 * np.random.default_rng(seed).integers(0, 10, size=n)
        chw = images.transpose(0, 3, 1, 2)
        with open(folder / name, "wb") as f:
            pickle.dump({"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": name,
                         "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                         "data": chw.reshape(n, 3 * 32 * 32)}, f)
        written.append((chw, fine))
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)],
                     "coarse_label_names": [f"superclass_{i}" for i in range(20)]}, f)
    return np.concatenate([w[0] for w in written]), np.concatenate([w[1] for w in written])


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's MATLAB files svhn/train_32x32.mat and test_32x32.mat: 'X' is H x W x C x N uint8,
    'y' is N x 1 with the digit 0 labelled 10. Returns the images (N x 3 x 32 x 32) and labels 0-9."""
    from scipy.io import savemat

    folder = root / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, n, seed in (("train", n_train, 40), ("test", n_test, 41)):
        images, labels = class_images(n, (32, 32, 3), seed)
        savemat(folder / f"{name}_32x32.mat",
                {"X": images.transpose(1, 2, 3, 0), "y": np.where(labels == 0, 10, labels)[:, None]})
        written.append((images.transpose(0, 3, 1, 2), labels))
    return np.concatenate([w[0] for w in written]), np.concatenate([w[1] for w in written])


def write_cifar10(root: Path, per_batch: int = 100, n_test: int = 100) -> Path:
    """CIFAR-10's python pickle batches: dicts with 'data' (N x 3072, channel-major) and 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        images, labels = class_images(n, (32, 32, 3), seed=10 + k)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3 * 32 * 32)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels.tolist(),
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"], "num_cases_per_batch": per_batch}, f)
    return root


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Auto's kernel timings go to a temporary cache, never the user's (subprocesses inherit it)."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def ieee_denormals():
    """The replay (and a run with --flush_denormal) switch the process to flushing denormals;
    every test starts from IEEE arithmetic, as a fresh process does."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist_data"))


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory) -> Path:
    """150 images: enough for the end-to-end runs of the larger networks."""
    return write_mnist(tmp_path_factory.mktemp("small_mnist_data"), n_train=120, n_test=30)


@pytest.fixture
def accept_handmade_cifar10(monkeypatch) -> None:
    """torchvision verifies the official CIFAR-10 and CIFAR-100 files' MD5 sums, which hand-made
    files cannot match; only that check is replaced, by a presence check."""
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def accept_handmade_svhn(monkeypatch) -> None:
    """As for CIFAR-10: torchvision's SVHN reader checks the official files' MD5 sums."""
    import os

    import torchvision.datasets.svhn as svhn

    monkeypatch.setattr(svhn, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture(scope="session")
def fashionmnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("fashionmnist_data"), n_train=40, n_test=20,
                       folder="FashionMNIST", seed=20)


@pytest.fixture
def cifar100_dir(tmp_path_factory, accept_handmade_cifar10) -> Path:
    root = tmp_path_factory.mktemp("cifar100_data")
    write_cifar100(root)
    return root


@pytest.fixture
def svhn_dir(tmp_path_factory, accept_handmade_svhn) -> Path:
    root = tmp_path_factory.mktemp("svhn_data")
    write_svhn(root)
    return root


@pytest.fixture
def cifar10_dir(tmp_path_factory, accept_handmade_cifar10) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar_data"))


@pytest.fixture
def small_cifar10_dir(tmp_path_factory, accept_handmade_cifar10) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("small_cifar_data"), per_batch=24, n_test=30)
