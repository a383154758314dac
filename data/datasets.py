"""MNIST and CIFAR-10: download and parse with torchvision, merge, split 70/15/15, hold as tensors.

The original merged the official train and test sets and split the union at random
(seeded) into 70% train, 15% validation and 15% test; that is kept. Unlike the original,
each dataset is normalised with its own statistics, and every split is held as one
normalised float tensor so batches are drawn by indexing (per-image PIL transforms were
most of the original's training time).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torchvision import datasets as tv_datasets

from utils import UserError, first_line

SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: Callable
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str            # where torchvision keeps the files, relative to --data_dir
    files: tuple[str, ...]  # what an offline user must put there
    url: str


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist", torchvision_class=tv_datasets.MNIST, in_channels=1, image_size=28,
        num_classes=10, mean=(0.1307,), std=(0.3081,), folder="MNIST/raw",
        files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        url="https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "cifar10": DatasetSpec(
        name="cifar10", torchvision_class=tv_datasets.CIFAR10, in_channels=3, image_size=32,
        num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        folder="cifar-10-batches-py",
        files=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch", "batches.meta"),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


@dataclass
class Split:
    images: torch.Tensor   # float32, normalised, N x C x H x W
    labels: torch.Tensor   # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> "DataSplits":
        return DataSplits(self.train.to(device), self.val.to(device), self.test.to(device))


def _as_uint8_nchw(images) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(images))
    if tensor.ndim == 3:                     # MNIST: N x H x W
        return tensor.unsqueeze(1)
    return tensor.permute(0, 3, 1, 2)        # CIFAR-10: N x H x W x C


def read_official_sets(spec: DatasetSpec, data_dir: Path | str, download: bool = True):
    """Uint8 images (N x C x H x W) and int64 labels of the official train set then test set."""
    data_dir = Path(data_dir)
    parts = []
    for train in (True, False):
        try:
            dataset = spec.torchvision_class(root=str(data_dir), train=train, download=download)
        except Exception as exc:  # RuntimeError when missing, URLError/OSError when offline
            folder = data_dir / spec.folder
            if all((folder / name).is_file() for name in spec.files):
                raise UserError(
                    f"the {spec.name} files in {folder} cannot be read ({first_line(exc)}); "
                    f"replace them with the official ones from {spec.url}") from exc
            raise UserError(
                f"{spec.name} is not in {folder} and could not be downloaded "
                f"({type(exc).__name__}); download it from {spec.url} on a connected machine and "
                f"put {', '.join(spec.files)} in {data_dir / spec.folder}/, or pass --data_dir "
                "to the folder that holds them") from exc
        parts.append((_as_uint8_nchw(dataset.data), torch.as_tensor(dataset.targets, dtype=torch.int64)))
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return images, labels


def split_indices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random 70/15/15 partition of range(n) into train, validation and test."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(n * SPLIT_FRACTIONS[0])   # round: 0.7 * 700 is 489.99999... in floating point
    n_val = round(n * SPLIT_FRACTIONS[1])
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def normalise(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)  # in place: CIFAR-10 is 737 MB as floats


def load_dataset(name: str, data_dir: Path | str, download: bool = True) -> Split:
    """The merged official train and test sets, normalised, as one :class:`Split`."""
    spec = get_spec(name)
    images, labels = read_official_sets(spec, data_dir, download)
    return Split(normalise(images, spec), labels)


def make_splits(dataset: Split, seed: int) -> DataSplits:
    """The seeded 70/15/15 train/validation/test splits of a merged dataset."""
    train, val, test = split_indices(len(dataset), seed)
    return DataSplits(*(Split(dataset.images[i], dataset.labels[i]) for i in (train, val, test)))


def iterate_batches(split: Split, batch_size: int,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches by indexing; shuffled when a (CPU) generator is given, in order otherwise."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.images.device)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        yield split.images.index_select(0, index), split.labels.index_select(0, index)


def make_test_split(dataset: Split, seed: int) -> Split:
    """The test part of :func:`make_splits`, copying only its images (15 %), not the whole dataset."""
    _, _, test = split_indices(len(dataset), seed)
    return Split(dataset.images[test], dataset.labels[test])
