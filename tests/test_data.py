"""Reading MNIST IDX files and CIFAR-10 pickle batches through torchvision, splitting, batching."""
import pytest
import torch

from data.datasets import (DATASETS, Split, get_spec, iterate_batches, load_dataset, make_splits,
                           split_indices)
from utils import UserError


def test_mnist_idx_files_are_read_merged_and_normalised(mnist_dir):
    merged = load_dataset("mnist", mnist_dir, download=False)
    assert merged.images.shape == (700, 1, 28, 28) and merged.images.dtype == torch.float32
    assert merged.labels.shape == (700,) and merged.labels.dtype == torch.int64
    # Pixel 0 maps to -mean/std, pixel 200 (the class band) to (200/255 - mean)/std.
    spec = get_spec("mnist")
    assert merged.images.min().item() == pytest.approx(-spec.mean[0] / spec.std[0], abs=1e-5)
    assert merged.images.max().item() == pytest.approx((200 / 255 - spec.mean[0]) / spec.std[0], abs=1e-5)


def test_cifar10_pickle_batches_are_read_channel_first_with_their_own_statistics(cifar10_dir):
    merged = load_dataset("cifar10", cifar10_dir, download=False)
    assert merged.images.shape == (600, 3, 32, 32)
    spec = get_spec("cifar10")
    assert spec.mean != get_spec("mnist").mean
    expected_min = torch.tensor([-m / s for m, s in zip(spec.mean, spec.std)])
    per_channel_min = merged.images.amin(dim=(0, 2, 3))
    assert torch.allclose(per_channel_min, expected_min, atol=1e-5)


def test_split_is_70_15_15_disjoint_complete_and_seeded():
    train, val, test = split_indices(70000, seed=3)
    assert (len(train), len(val), len(test)) == (49000, 10500, 10500)
    everything = torch.cat([train, val, test])
    assert torch.equal(everything.sort().values, torch.arange(70000))
    again = split_indices(70000, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    assert not torch.equal(split_indices(70000, seed=4)[0], train)


def test_load_splits_sizes_on_tiny_mnist(mnist_dir):
    splits = make_splits(load_dataset("mnist", mnist_dir, download=False), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (490, 105, 105)


def test_batches_cover_the_split_once_and_shuffle_reproducibly():
    split = Split(torch.arange(10).float().view(10, 1), torch.arange(10))
    ordered = [labels.tolist() for _, labels in iterate_batches(split, 4)]
    assert ordered == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    first = torch.cat([y for _, y in iterate_batches(split, 4, torch.Generator().manual_seed(1))])
    second = torch.cat([y for _, y in iterate_batches(split, 4, torch.Generator().manual_seed(1))])
    assert torch.equal(first, second) and sorted(first.tolist()) == list(range(10))
    assert first.tolist() != list(range(10))


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset("mnist", tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path, download=False)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(UserError, match="mnist, cifar10"):
        get_spec("imagenet")
    assert set(DATASETS) == {"mnist", "cifar10"}


def test_corrupt_files_are_reported_as_corrupt_not_missing(tmp_path):
    from conftest import write_mnist

    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_dataset("mnist", tmp_path, download=False)
