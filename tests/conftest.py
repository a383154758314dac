"""Shared fixtures: tiny datasets written in each dataset's own on-disk format.

The images are not noise: each class has its own mean brightness pattern, so a few epochs
of training reach well above chance and accuracy-based assertions mean something.
"""
from __future__ import annotations

import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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


def write_mnist(root: Path, n_train: int = 600, n_test: int = 100) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = class_images(n, (28, 28), seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


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


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist_data"))


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory) -> Path:
    """150 images: enough for the end-to-end runs of the larger networks."""
    return write_mnist(tmp_path_factory.mktemp("small_mnist_data"), n_train=120, n_test=30)


@pytest.fixture
def accept_handmade_cifar10(monkeypatch) -> None:
    """torchvision verifies the official CIFAR-10 files' MD5 sums, which hand-made batches cannot
    match; only that check is replaced, by a presence check."""
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def cifar10_dir(tmp_path_factory, accept_handmade_cifar10) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar_data"))


@pytest.fixture
def small_cifar10_dir(tmp_path_factory, accept_handmade_cifar10) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("small_cifar_data"), per_batch=24, n_test=30)
