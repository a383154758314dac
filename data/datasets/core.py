"""The dataset registry, loading, the seeded splits and batching.

A dataset is a :class:`DatasetSpec` in :data:`DATASETS`: its shape, its statistics and a
reader that returns uint8 images with the official training images first. The original
merged the official train and test sets and split the union at random (seeded) into 70%
train, 15% validation and 15% test; that stays the default. With ``official_test=True`` the
official test set is the test split instead (results comparable with papers) and the
official training set is split train/validation in the same 70:15 proportion.

Every split is held as one normalised float tensor so batches are drawn by indexing
(per-image PIL transforms were most of the original's training time).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from utils import UserError, first_line

SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass(frozen=True)
class OfficialImages:
    """What a reader returns: the official training images first, then the official test images."""

    images: torch.Tensor   # uint8, N x C x H x W
    labels: torch.Tensor   # int64, N
    official_train_count: int | None  # leading images from the official training set; None: no test set


Reader = Callable[[Path, bool], OfficialImages]  # (data_dir, download) -> images


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    in_channels: int
    image_size: int
    num_classes: int
    # Per-channel mean and standard deviation of the pixels scaled to [0, 1]; None: computed
    # from the official training images at every load (user datasets that state none).
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    read: Reader
    where: str = ""        # one line for the offline user: which files, in which folder


DATASETS: dict[str, DatasetSpec] = {}

# Run files are named ..._{dataset}.pt and parsed back with [a-z0-9]+ (data/runs.py).
_NAME = re.compile(r"[a-z0-9]+")


def add_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Put ``spec`` in the registry; the name becomes a ``--dataset`` choice and a folder name."""
    if not _NAME.fullmatch(spec.name):
        raise UserError(f"dataset name {spec.name!r} must be lower-case letters and digits only "
                        "(it names the results files)")
    if spec.name in DATASETS:
        raise UserError(f"a dataset named {spec.name!r} is already registered; choose another name")
    for what, stats in (("mean", spec.mean), ("std", spec.std)):
        if stats is not None and len(stats) != spec.in_channels:
            raise UserError(f"dataset {spec.name!r}: {what} has {len(stats)} values for "
                            f"{spec.in_channels} channel(s)")
    DATASETS[spec.name] = spec
    return spec


def register_dataset(name: str, *, in_channels: int, image_size: int, num_classes: int,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     where: str = "") -> Callable[[Callable], Callable]:
    """Decorator adding a dataset from a loader function, from any file imported before the run.

    The loader takes the data directory (``--data_dir``) and returns ``(images, labels)``, or
    ``(train_images, train_labels, test_images, test_labels)`` when the data has an official
    test set; images are uint8 ``N x C x H x W`` (tensors or numpy arrays), labels integers in
    ``[0, num_classes)``. A missing file (``FileNotFoundError``) is reported in one line with
    ``where`` (e.g. ``"blobs.npz in DATA_DIR/blobs/"``, DATA_DIR replaced by the real one).
    Without ``mean``/``std`` they are computed from the (official training) images at every load.
    """
    def decorate(loader: Callable) -> Callable:
        def read(data_dir: Path, download: bool) -> OfficialImages:
            del download  # a user loader finds its own files
            try:
                arrays = loader(Path(data_dir))
            except FileNotFoundError as exc:
                hint = f"; put {where.replace('DATA_DIR', str(data_dir))}" if where else ""
                raise UserError(f"dataset {name!r}: {first_line(exc)}{hint}") from exc
            return _from_loader(name, arrays)

        add_dataset(DatasetSpec(name=name, in_channels=in_channels, image_size=image_size,
                                num_classes=num_classes, mean=_tuple(mean), std=_tuple(std),
                                read=read, where=where))
        return loader

    return decorate


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _from_loader(name: str, arrays) -> OfficialImages:
    if not isinstance(arrays, (tuple, list)) or len(arrays) not in (2, 4):
        raise UserError(f"dataset {name!r}: the loader must return (images, labels) or "
                        "(train_images, train_labels, test_images, test_labels)")
    images = [torch.as_tensor(np.asarray(a)) for a in arrays[0::2]]
    labels = [torch.as_tensor(np.asarray(a)).to(torch.int64).reshape(-1) for a in arrays[1::2]]
    return OfficialImages(torch.cat(images), torch.cat(labels),
                          official_train_count=len(labels[0]) if len(arrays) == 4 else None)


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


@dataclass
class Split:
    images: torch.Tensor   # float32, normalised, N x C x H x W
    labels: torch.Tensor   # int64, N
    # For a loaded dataset: how many leading images came from the official training set
    # (the rest are the official test set); None when there is no official test set.
    official_train_count: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.official_train_count)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> "DataSplits":
        return DataSplits(self.train.to(device), self.val.to(device), self.test.to(device))


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population standard deviation of uint8 N x C x H x W images in [0, 1].

    Accumulated per channel in float64, so 60,000 CIFAR images need no float copy of the whole set.
    """
    means, stds = [], []
    for channel in images.unbind(1):
        pixels = channel.reshape(-1)
        counts = torch.bincount(pixels.to(torch.int64), minlength=256).double()
        levels = torch.arange(256, dtype=torch.float64) / 255
        total = counts.sum()
        mean = (counts * levels).sum() / total
        variance = (counts * (levels - mean) ** 2).sum() / total
        means.append(mean.item())
        stds.append(variance.sqrt().item())
    return tuple(means), tuple(stds)


def check_images(spec: DatasetSpec, data: OfficialImages) -> None:
    """One clear line when a reader's output does not match the declared shape and classes."""
    images, labels = data.images, data.labels
    expected = (spec.in_channels, spec.image_size, spec.image_size)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise UserError(f"dataset {spec.name!r}: expected uint8 images of shape N x "
                        f"{' x '.join(map(str, expected))}, got {images.dtype} {tuple(images.shape)}")
    if len(labels) != len(images):
        raise UserError(f"dataset {spec.name!r}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise UserError(f"dataset {spec.name!r}: labels must lie in [0, {spec.num_classes}), found "
                        f"{labels.min().item()}..{labels.max().item()}")


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return images.float().div_(255).sub_(mean_t).div_(std_t)  # in place: CIFAR-10 is 737 MB as floats


def load_dataset(name: str, data_dir: Path | str, download: bool = True) -> Split:
    """The official train then test images, normalised, as one :class:`Split`."""
    spec = get_spec(name)
    data = spec.read(Path(data_dir), download)
    check_images(spec, data)
    mean, std = spec.mean, spec.std
    if mean is None or std is None:
        official_train = data.images[:data.official_train_count]
        mean, std = channel_statistics(official_train)
    return Split(normalise(data.images, mean, std), data.labels, data.official_train_count)


def split_indices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random 70/15/15 partition of range(n) into train, validation and test."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(n * SPLIT_FRACTIONS[0])   # round: 0.7 * 700 is 489.99999... in floating point
    n_val = round(n * SPLIT_FRACTIONS[1])
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]


def official_split_indices(official_train_count: int, n: int,
                           seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and validation drawn (seeded) from the first ``official_train_count`` indices in
    the 70:15 proportion; the rest of range(n), the official test set, is the test split."""
    order = torch.randperm(official_train_count, generator=torch.Generator().manual_seed(seed))
    train_share = SPLIT_FRACTIONS[0] / (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1])
    n_train = round(official_train_count * train_share)
    return order[:n_train], order[n_train:], torch.arange(official_train_count, n)


def _test_split_count(dataset: Split) -> int:
    if dataset.official_train_count is None or dataset.official_train_count >= len(dataset):
        raise UserError("this dataset has no official test set; use the merged 70/15/15 test split")
    return dataset.official_train_count


def make_splits(dataset: Split, seed: int, official_test: bool = False) -> DataSplits:
    """Seeded train/validation/test splits of a loaded dataset.

    Merged (default): 70/15/15 of the official train and test images together.
    ``official_test``: the official test set is the test split; the official training images
    are split 70:15 into train and validation.
    """
    if official_test:
        parts = official_split_indices(_test_split_count(dataset), len(dataset), seed)
    else:
        parts = split_indices(len(dataset), seed)
    return DataSplits(*(Split(dataset.images[i], dataset.labels[i]) for i in parts))


def make_test_split(dataset: Split, seed: int, official_test: bool = False) -> Split:
    """The test part of :func:`make_splits`, copying only its images, not the whole dataset."""
    if official_test:
        start = _test_split_count(dataset)
        return Split(dataset.images[start:], dataset.labels[start:])
    _, _, test = split_indices(len(dataset), seed)
    return Split(dataset.images[test], dataset.labels[test])


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
