"""Early-bird detection: mask distances and stopping once the masks stop changing."""
import pytest
import torch

from archs.early_bird import EarlyBirdDetector, mask_distance


def test_mask_distance_is_the_fraction_of_entries_that_differ_over_all_layers():
    a = {"x": torch.tensor([True, True, False, False]), "y": torch.ones(2, 3, dtype=torch.bool)}
    b = {"x": torch.tensor([True, False, True, False]), "y": torch.ones(2, 3, dtype=torch.bool)}
    assert mask_distance(a, a) == 0.0
    assert mask_distance(a, b) == pytest.approx(2 / 10)
    assert mask_distance(a, {n: ~m for n, m in a.items()}) == 1.0
    with pytest.raises(ValueError, match="different layers"):
        mask_distance(a, {"x": a["x"]})
    with pytest.raises(ValueError, match="shapes differ"):
        mask_distance({"x": a["x"]}, {"x": torch.ones(5, dtype=torch.bool)})


def mask_sequence(changes, size=100, seed=0):
    """Masks of ``size`` entries; each one flips ``changes[k]`` entries of the one before."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(size, generator=generator) < 0.5
    masks = [{"w": mask.clone()}]
    for k in changes:
        flip = torch.randperm(size, generator=generator)[:k]
        mask[flip] = ~mask[flip]
        masks.append({"w": mask.clone()})
    return masks


# Distances 0.5, 0.3, 0.05, 0.05, 0.2 (a relapse resets the count), then 0.05 x 3.
CHANGES = [50, 30, 5, 5, 20, 5, 9, 0, 40]


def test_detector_fires_once_the_last_window_distances_are_all_under_the_threshold():
    detector = EarlyBirdDetector(threshold=0.1, window=3)
    answers = [detector.update(m) for m in mask_sequence(CHANGES)]
    assert detector.distances == pytest.approx([c / 100 for c in CHANGES])
    # The 9th mask (distances 0.05, 0.09, 0.0) completes the window; the answer then stays yes.
    assert answers == [False] * 8 + [True] * 2
    assert detector.found_at == 9


def test_detector_with_the_papers_defaults_needs_five_small_distances():
    detector = EarlyBirdDetector()
    assert (detector.threshold, detector.window) == (0.1, 5)
    answers = [detector.update(m) for m in mask_sequence([30, 5, 5, 5, 5, 12, 5, 5, 5, 5, 5])]
    assert answers.index(True) == 11 and detector.found_at == 12


def test_detector_never_fires_while_masks_keep_changing():
    detector = EarlyBirdDetector(threshold=0.1, window=2)
    assert not any(detector.update(m) for m in mask_sequence([15, 20, 10, 30, 11, 12]))


def test_a_resumed_detector_decides_exactly_as_an_uninterrupted_one(tmp_path):
    masks = mask_sequence(CHANGES)
    detector = EarlyBirdDetector(0.1, 3)
    for m in masks[:5]:
        detector.update(m)
    torch.save(detector.state_dict(), tmp_path / "detector.pt")
    resumed = EarlyBirdDetector(0.1, 3)
    resumed.load_state_dict(torch.load(tmp_path / "detector.pt", weights_only=True))
    answers = [resumed.update(m) for m in masks[5:]]
    assert answers == [False] * 3 + [True] * 2 and resumed.found_at == 9
    with pytest.raises(ValueError, match="window 3"):
        EarlyBirdDetector(0.1, 5).load_state_dict(detector.state_dict())


def test_detector_settings_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        EarlyBirdDetector(threshold=0)
    with pytest.raises(ValueError, match="window"):
        EarlyBirdDetector(window=0)
