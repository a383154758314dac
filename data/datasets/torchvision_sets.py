"""Datasets read (and downloaded) by torchvision: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100,
SVHN, and CIFAR-10a/b, two disjoint halves of CIFAR-10.

torchvision checks the MD5 sums of the CIFAR and SVHN files; that check is kept, so files
that are truncated or not the official ones are reported as such instead of being trained on.

Statistics: per-channel mean and population standard deviation of all pixels of the official
training set, scaled to [0, 1], rounded to 4 decimals. They were not recomputed here (no
download is possible on the development machines); they are the widely published values
(e.g. CIFAR-100 0.50707516, SVHN 0.4376821, Fashion-MNIST 0.28604060 as first means).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision import datasets as tv_datasets

from data.datasets.core import DatasetSpec, OfficialImages, add_dataset
from utils import UserError, first_line

# CIFAR-10a and CIFAR-10b: one fixed permutation decides the halves for every run and seed,
# so a ticket found on one half can be tested on data it never saw.
CIFAR10_HALVES_SEED = 20190606


@dataclass(frozen=True)
class OfficialFiles:
    """Where torchvision keeps a dataset, for the message that tells an offline user what to do."""

    folder: str             # relative to --data_dir
    files: tuple[str, ...]  # what an offline user must put there
    url: str

    def missing_message(self, name: str, data_dir: Path, exc: BaseException) -> str:
        folder = data_dir / self.folder
        if all((folder / file).is_file() for file in self.files):
            return (f"the {name} files in {folder} cannot be read or are not the official ones "
                    f"({first_line(exc)}); replace them with the official ones from {self.url}")
        return (f"{name} is not in {folder} and could not be downloaded ({type(exc).__name__}); "
                f"download it from {self.url} on a connected machine and put "
                f"{', '.join(self.files)} in {folder}/, or pass --data_dir to the folder that holds them")

    def where(self) -> str:
        return f"{', '.join(self.files)} in DATA_DIR/{self.folder}/ (from {self.url})"


PartOpener = Callable[[Path, bool, bool], tuple[torch.Tensor, torch.Tensor]]  # (dir, train, download)


def read_official_sets(name: str, files: OfficialFiles, open_part: PartOpener,
                       data_dir: Path, download: bool) -> OfficialImages:
    """The official training set then the official test set, as uint8 N x C x H x W."""
    parts = []
    for train in (True, False):
        try:
            parts.append(open_part(data_dir, train, download))
        except Exception as exc:  # RuntimeError when missing or failing MD5, URLError/OSError offline
            raise UserError(files.missing_message(name, data_dir, exc)) from exc
    return OfficialImages(images=torch.cat([images for images, _ in parts]),
                          labels=torch.cat([labels for _, labels in parts]),
                          official_train_count=len(parts[0][1]))


def _labels(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


def _open_mnist_like(dataset_class) -> PartOpener:
    def open_part(data_dir: Path, train: bool, download: bool):
        dataset = dataset_class(root=str(data_dir), train=train, download=download)
        return dataset.data.unsqueeze(1), _labels(dataset.targets)   # N x H x W tensor
    return open_part


def _open_cifar(dataset_class) -> PartOpener:
    def open_part(data_dir: Path, train: bool, download: bool):
        dataset = dataset_class(root=str(data_dir), train=train, download=download)
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2), _labels(dataset.targets)  # NHWC
    return open_part


def _open_svhn(data_dir: Path, train: bool, download: bool):
    # SVHN keeps its files directly in its root: give it a folder of its own.
    dataset = tv_datasets.SVHN(root=str(data_dir / "svhn"), split="train" if train else "test",
                               download=download)
    return torch.from_numpy(dataset.data), _labels(dataset.labels)  # already N x C x H x W, 0-9


def add_official_dataset(name: str, files: OfficialFiles, open_part: PartOpener, in_channels: int,
                         image_size: int, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    def read(data_dir: Path, download: bool) -> OfficialImages:
        return read_official_sets(name, files, open_part, data_dir, download)

    add_dataset(DatasetSpec(name=name, in_channels=in_channels, image_size=image_size,
                            num_classes=num_classes, mean=mean, std=std, read=read, where=files.where()))


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = OfficialFiles(
    "cifar-10-batches-py",
    ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
     "batches.meta"),
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

add_official_dataset("mnist",
                     OfficialFiles("MNIST/raw", MNIST_FILES, "https://ossci-datasets.s3.amazonaws.com/mnist/"),
                     _open_mnist_like(tv_datasets.MNIST), 1, 28, 10, (0.1307,), (0.3081,))
add_official_dataset("cifar10", CIFAR10_FILES, _open_cifar(tv_datasets.CIFAR10), 3, 32, 10,
                     CIFAR10_MEAN, CIFAR10_STD)
add_official_dataset("fashionmnist",
                     OfficialFiles("FashionMNIST/raw", MNIST_FILES,
                                   "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
                     _open_mnist_like(tv_datasets.FashionMNIST), 1, 28, 10, (0.2860,), (0.3530,))
add_official_dataset("cifar100",
                     OfficialFiles("cifar-100-python", ("train", "test", "meta"),
                                   "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
                     _open_cifar(tv_datasets.CIFAR100), 3, 32, 100,
                     (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
add_official_dataset("svhn",
                     OfficialFiles("svhn", ("train_32x32.mat", "test_32x32.mat"),
                                   "http://ufldl.stanford.edu/housenumbers/"),
                     _open_svhn, 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


def half_indices(n: int, which: int) -> torch.Tensor:
    """Sorted indices of half ``which`` (0 or 1) of range(n) under the fixed halving permutation;
    the two halves are disjoint and together are range(n)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(CIFAR10_HALVES_SEED))
    half = order[:n // 2] if which == 0 else order[n // 2:]
    return half.sort().values


def _cifar10_half(which: int):
    read_cifar10 = _open_cifar(tv_datasets.CIFAR10)

    def open_part(data_dir: Path, train: bool, download: bool):
        images, labels = read_cifar10(data_dir, train, download)
        keep = half_indices(len(labels), which)
        return images[keep], labels[keep]
    return open_part


# Both the training and the test images are halved, so that the merged 70/15/15 split still
# trains the two datasets on disjoint images; with the official test split each half is tested
# on its 5,000 official test images. Statistics: CIFAR-10's; image means lie in [0, 1], so the
# standard error of a random half's mean is at most 0.5 / sqrt(25,000) = 0.003.
# Each name written out: data.names.declared_datasets reads them without importing torch.
add_official_dataset("cifar10a", CIFAR10_FILES, _cifar10_half(0), 3, 32, 10, CIFAR10_MEAN, CIFAR10_STD)
add_official_dataset("cifar10b", CIFAR10_FILES, _cifar10_half(1), 3, 32, 10, CIFAR10_MEAN, CIFAR10_STD)
