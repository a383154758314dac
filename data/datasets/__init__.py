"""Datasets: the registry, the built-in datasets, seeded splits and batching.

Importing this package registers the built-in datasets; a user file adds its own with
:func:`register_dataset` (see the README, "Your own dataset in one file").
"""
from data.datasets.core import (DATASETS, SPLIT_FRACTIONS, DataSplits, DatasetSpec, OfficialImages,
                                Split, add_dataset, channel_statistics, check_images, get_spec,
                                iterate_batches, load_dataset, make_splits, make_test_split, normalise,
                                official_split_indices, register_dataset, split_indices)
from data.datasets import torchvision_sets  # noqa: F401  (registers mnist, cifar10, ...)
from data.datasets import digits  # noqa: F401  (registers digits)

__all__ = ["DATASETS", "SPLIT_FRACTIONS", "DataSplits", "DatasetSpec", "OfficialImages", "Split",
           "add_dataset", "channel_statistics", "check_images", "get_spec", "iterate_batches",
           "load_dataset", "make_splits", "make_test_split", "normalise", "official_split_indices",
           "register_dataset", "split_indices"]
