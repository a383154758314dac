"""Reading every dataset from small files in its own on-disk format, splitting, batching,
the digits shipped with scikit-learn, and datasets registered from a user's file."""
from pathlib import Path

import numpy as np
import pytest
import torch

from data.datasets import (DATASETS, Split, channel_statistics, get_spec, iterate_batches, load_dataset,
                           make_splits, make_test_split, official_split_indices, register_dataset,
                           split_indices)
from data.datasets.digits import DIGITS_MEAN, DIGITS_STD, mnist_layout
from data.datasets.torchvision_sets import half_indices
from utils import UserError

from tests.conftest import write_cifar10, write_cifar100, write_idx_pair, write_mnist, write_svhn

BUILT_IN = {"mnist", "cifar10", "fashionmnist", "cifar100", "svhn", "cifar10a", "cifar10b", "digits"}


def as_uint8(split: Split, name: str) -> torch.Tensor:
    """Undo a dataset's normalisation: the pixels as they were in the files."""
    spec = get_spec(name)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((split.images * std + mean) * 255).round().to(torch.uint8)


def test_mnist_idx_files_are_read_merged_and_normalised(mnist_dir):
    merged = load_dataset("mnist", mnist_dir, download=False)
    assert merged.images.shape == (700, 1, 28, 28) and merged.images.dtype == torch.float32
    assert merged.labels.shape == (700,) and merged.labels.dtype == torch.int64
    assert merged.official_train_count == 600
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


def write_fashionmnist(root):
    return write_idx_pair(root, 40, 20, "FashionMNIST", seed=20)


@pytest.mark.parametrize("name, write, channels, classes", [
    ("fashionmnist", write_fashionmnist, 1, 10),
    ("cifar100", write_cifar100, 3, 100),
    ("svhn", write_svhn, 3, 10),
])
def test_each_dataset_reads_its_own_files_in_official_order_with_its_own_statistics(
        tmp_path, accept_handmade_cifar10, accept_handmade_svhn, name, write, channels, classes):
    written_images, written_labels = write(tmp_path)   # 40 official training images, then 20 test
    merged = load_dataset(name, tmp_path, download=False)
    spec = get_spec(name)
    assert (spec.in_channels, spec.num_classes) == (channels, classes)
    assert merged.images.shape == (60, channels, spec.image_size, spec.image_size)
    assert merged.official_train_count == 40
    # Undoing the normalisation with this dataset's statistics gives back exactly the pixels
    # written, channel by channel: layout, order and statistics are all right.
    assert torch.equal(as_uint8(merged, name), torch.from_numpy(written_images))
    assert torch.equal(merged.labels, torch.from_numpy(written_labels).long())
    assert merged.labels.max().item() < classes  # SVHN's label 10 (the digit 0) became 0

    splits = make_splits(merged, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (42, 9, 9)
    official = make_splits(merged, seed=0, official_test=True)
    assert (len(official.train), len(official.val), len(official.test)) == (33, 7, 20)
    assert torch.equal(official.test.images, merged.images[40:])


def test_built_in_statistics_are_each_datasets_own():
    stats = {name: (get_spec(name).mean, get_spec(name).std) for name in BUILT_IN}
    for name, (mean, std) in stats.items():
        assert len(mean) == len(std) == get_spec(name).in_channels
        assert all(0 < m < 1 for m in mean) and all(0 < s < 0.5 for s in std)
    # The halves of CIFAR-10 share its statistics; every other dataset has its own.
    assert stats["cifar10a"] == stats["cifar10b"] == stats["cifar10"]
    distinct = {v for k, v in stats.items() if k not in ("cifar10a", "cifar10b")}
    assert len(distinct) == len(BUILT_IN) - 2


def test_cifar10_halves_are_disjoint_and_cover_every_image(tmp_path, accept_handmade_cifar10):
    write_cifar10(tmp_path, per_batch=10, n_test=20)   # 50 training images, 20 test images
    whole = load_dataset("cifar10", tmp_path, download=False)
    halves = [load_dataset(name, tmp_path, download=False) for name in ("cifar10a", "cifar10b")]
    assert [h.official_train_count for h in halves] == [25, 25]
    assert [len(h) for h in halves] == [35, 35]

    def image_set(images: torch.Tensor) -> set[bytes]:
        return {image.numpy().tobytes() for image in images}

    whole_pixels = as_uint8(whole, "cifar10")
    a_pixels, b_pixels = (as_uint8(half, "cifar10") for half in halves)
    # Training images, then test images: in each half, 25 of the 50 and 10 of the 20.
    for whole_part, half_part in ((slice(0, 50), slice(0, 25)), (slice(50, 70), slice(25, 35))):
        everything = image_set(whole_pixels[whole_part])
        a, b = image_set(a_pixels[half_part]), image_set(b_pixels[half_part])
        assert len(everything) == whole_part.stop - whole_part.start   # random images: all distinct
        assert len(a) == len(b) == half_part.stop - half_part.start
        assert not a & b and a | b == everything
    # The halves are fixed: not a function of the run's seed or of anything but the data.
    again = load_dataset("cifar10a", tmp_path, download=False)
    assert torch.equal(again.images, halves[0].images)
    assert torch.equal(half_indices(50, 0), half_indices(50, 0))
    assert sorted(torch.cat([half_indices(50, 0), half_indices(50, 1)]).tolist()) == list(range(50))


def test_split_is_70_15_15_disjoint_complete_and_seeded():
    train, val, test = split_indices(70000, seed=3)
    assert (len(train), len(val), len(test)) == (49000, 10500, 10500)
    everything = torch.cat([train, val, test])
    assert torch.equal(everything.sort().values, torch.arange(70000))
    again = split_indices(70000, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    assert not torch.equal(split_indices(70000, seed=4)[0], train)


def test_official_split_keeps_the_test_set_and_splits_the_training_set_70_to_15():
    train, val, test = official_split_indices(60000, 70000, seed=3)
    assert (len(train), len(val), len(test)) == (49412, 10588, 10000)  # 60,000 x 70/85 and x 15/85
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))
    assert torch.equal(test, torch.arange(60000, 70000))
    again = official_split_indices(60000, 70000, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    assert not torch.equal(official_split_indices(60000, 70000, seed=4)[0], train)


def test_make_test_split_is_the_test_part_in_both_modes():
    dataset = Split(torch.arange(100.).view(100, 1, 1, 1), torch.arange(100), official_train_count=80)
    for official in (False, True):
        expected = make_splits(dataset, seed=5, official_test=official).test
        test = make_test_split(dataset, seed=5, official_test=official)
        assert torch.equal(test.labels, expected.labels) and torch.equal(test.images, expected.images)
    assert make_test_split(dataset, seed=5, official_test=True).labels.tolist() == list(range(80, 100))
    assert dataset.to("cpu").official_train_count == 80


def test_official_test_split_needs_an_official_test_set():
    no_test_set = Split(torch.zeros(10, 1, 1, 1), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(UserError, match="no official test set"):
        make_splits(no_test_set, seed=0, official_test=True)
    with pytest.raises(UserError, match="no official test set"):
        make_test_split(no_test_set, seed=0, official_test=True)


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


@pytest.mark.parametrize("name, folder, a_file", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("fashionmnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar100", "cifar-100-python", "meta"),
    ("svhn", "svhn", "test_32x32.mat"),
    ("cifar10b", "cifar-10-batches-py", "batches.meta"),
])
def test_missing_files_say_in_one_line_which_files_go_where(tmp_path, name, folder, a_file):
    with pytest.raises(UserError) as error:
        load_dataset(name, tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message
    assert f"{tmp_path / folder}/" in message and a_file in message


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(UserError, match="mnist, cifar10, fashionmnist"):
        get_spec("imagenet")
    assert BUILT_IN <= set(DATASETS)


def test_corrupt_files_are_reported_as_corrupt_not_missing(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_dataset("mnist", tmp_path, download=False)


def test_handmade_files_fail_the_official_checksum_with_a_clear_line(tmp_path):
    # Without the tests' checksum bypass, files that are not the official ones are refused.
    write_svhn(tmp_path)
    with pytest.raises(UserError, match=r"svhn files in .* are not the official ones"):
        load_dataset("svhn", tmp_path, download=False)


# --- digits: real scans shipped with scikit-learn, laid out like MNIST ---------------------------

@pytest.fixture(scope="module")
def digits():
    return get_spec("digits").read(Path("/nonexistent"), False)   # no files, no download


def test_digits_are_1797_real_scans_in_mnist_layout(digits):
    assert digits.images.shape == (1797, 1, 28, 28) and digits.images.dtype == torch.uint8
    assert torch.bincount(digits.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert digits.official_train_count is None
    assert digits.images.max().item() == 255   # full ink (16 of 16) is MNIST's white
    pixels = digits.images.squeeze(1).double()
    coords = torch.arange(28, dtype=torch.float64)
    mass = pixels.sum(dim=(1, 2))
    for centre in ((pixels.sum(2) * coords).sum(1) / mass, (pixels.sum(1) * coords).sum(1) / mass):
        assert (centre - 13.5).abs().max().item() <= 0.5   # centred by mass to the nearest pixel
    rows = pixels.sum(dim=2) > 0
    assert (rows.sum(dim=1) <= 20).all()   # the digit fits MNIST's 20 x 20 box


def test_digits_statistics_are_recomputed_from_the_data(digits):
    mean, std = channel_statistics(digits.images)
    assert mean == pytest.approx(DIGITS_MEAN, abs=1e-6) and std == pytest.approx(DIGITS_STD, abs=1e-6)


def test_mnist_layout_scales_ink_and_centres_an_off_centre_stroke():
    scan = np.zeros((1, 8, 8))
    scan[0, :, 0] = 16                      # a full-height bar in the leftmost column
    [[field]] = mnist_layout(scan).numpy()
    assert field.max() == 255
    columns = np.nonzero(field.sum(axis=0))[0]
    centre = (field.sum(axis=0) * np.arange(28)).sum() / field.sum()
    assert abs(centre - 13.5) <= 0.5 and columns.min() > 4   # moved right, off the box's edge
    assert np.nonzero(field.sum(axis=1))[0].tolist() == list(range(4, 24))   # 20 rows tall


def test_digits_splits_and_the_main_job_run_on_real_data_without_files(tmp_path):
    import lottery_ticket
    from data.store import load_checkpoint

    dataset = load_dataset("digits", tmp_path / "absent")
    splits = make_splits(dataset, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1258, 270, 269)
    with pytest.raises(UserError, match="no official test set"):
        make_splits(dataset, seed=0, official_test=True)

    assert lottery_ticket.main(["--dataset", "digits", "--arch_type", "fc1", "--end_iter", "2",
                                "--train_type", "regular", "--lr", "1e-3", "--batch_size", "64",
                                "--seeds", "0", "--device", "cpu", "--no_progress",
                                "--save_dir", str(tmp_path / "saves"),
                                "--data_dir", str(tmp_path / "absent")]) == 0
    [results] = (tmp_path / "saves" / "fc1" / "digits").glob("*.pt")
    test_accuracy = list(load_checkpoint(results)["test_accuracy"].values())[-1]
    assert test_accuracy > 50   # percent; chance is 10


# --- a dataset of one's own, registered from a test file -----------------------------------------

def write_blobs(folder: Path, with_test_set: bool) -> None:
    """Three classes of 16 x 16 grey images: dark, mid and bright."""
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    images = (labels[:, None, None, None] * 80 + rng.integers(0, 60, size=(30, 1, 16, 16))).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images, "labels": labels}
    if with_test_set:
        arrays.update(test_images=images[:9], test_labels=labels[:9])
    np.savez(folder / "blobs.npz", **arrays)


@pytest.fixture
def blobs():
    """Registers 'blobs' exactly as a user's file would, and removes it afterwards."""
    @register_dataset("blobs", in_channels=1, image_size=16, num_classes=3,
                      where="blobs.npz in DATA_DIR/blobs/")
    def read_blobs(data_dir):
        arrays = np.load(data_dir / "blobs" / "blobs.npz")
        if "test_images" in arrays:
            return arrays["images"], arrays["labels"], arrays["test_images"], arrays["test_labels"]
        return arrays["images"], arrays["labels"]

    yield "blobs"
    DATASETS.pop("blobs")


def test_a_registered_dataset_is_loaded_split_and_normalised_by_its_own_statistics(tmp_path, blobs):
    assert get_spec(blobs).image_size == 16
    write_blobs(tmp_path / "blobs", with_test_set=False)
    merged = load_dataset(blobs, tmp_path)
    assert merged.images.shape == (30, 1, 16, 16) and merged.official_train_count is None
    # No statistics were given: they are computed from the images, which come out standardised.
    assert merged.images.mean().item() == pytest.approx(0, abs=1e-5)
    assert merged.images.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    assert (len(make_splits(merged, seed=1).train)) == 21

    write_blobs(tmp_path / "blobs", with_test_set=True)
    with_test = load_dataset(blobs, tmp_path)
    assert with_test.official_train_count == 30 and len(with_test) == 39
    assert len(make_splits(with_test, seed=1, official_test=True).test) == 9


def test_a_registered_dataset_reports_missing_files_and_wrong_shapes(tmp_path, blobs):
    with pytest.raises(UserError) as error:
        load_dataset(blobs, tmp_path)
    assert f"put blobs.npz in {tmp_path}/blobs/" in str(error.value) and "\n" not in str(error.value)

    @register_dataset("wrongshape", in_channels=3, image_size=16, num_classes=3)
    def read_wrong(data_dir):
        return np.zeros((4, 1, 16, 16), np.uint8), np.zeros(4)
    try:
        with pytest.raises(UserError, match=r"expected uint8 images of shape N x 3 x 16 x 16"):
            load_dataset("wrongshape", tmp_path)
    finally:
        DATASETS.pop("wrongshape")


def test_registration_refuses_taken_and_unusable_names(blobs):
    with pytest.raises(UserError, match="already registered"):
        register_dataset("mnist", in_channels=1, image_size=28, num_classes=10)(lambda data_dir: None)
    with pytest.raises(UserError, match="letters and digits"):
        register_dataset("my_blobs", in_channels=1, image_size=16, num_classes=3)(lambda data_dir: None)
    assert "my_blobs" not in DATASETS
