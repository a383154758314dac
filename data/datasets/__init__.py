"""Datasets: the registry, the built-in datasets, seeded splits and batching.

Every module in this folder is imported with the package (as the networks of ``archs/models/``
are), so a new dataset is one new file here holding ``@register_dataset(...)`` on a loader, or
any file imported before the run (see the README, "Networks and datasets").
"""
import importlib
import pkgutil

from data.datasets.core import (DATASETS, SPLIT_FRACTIONS, DataSplits, DatasetSpec, OfficialImages,
                                Split, add_dataset, channel_statistics, check_images, get_spec,
                                iterate_batches, load_dataset, make_splits, make_test_split, normalise,
                                official_split_indices, register_dataset, split_indices)

__all__ = ["DATASETS", "SPLIT_FRACTIONS", "DataSplits", "DatasetSpec", "OfficialImages", "Split",
           "add_dataset", "channel_statistics", "check_images", "get_spec", "iterate_batches",
           "load_dataset", "make_splits", "make_test_split", "normalise", "official_split_indices",
           "register_dataset", "split_indices"]

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
