"""The mask arithmetic: exact counts, monotone masks, rewinding, zeros that stay zero."""
import pytest
import torch
from torch import nn

from archs import build_model
from archs.masks import (apply_masks, count_alive, expected_percent_remaining, full_masks,
                         masks_from_state, percent_remaining, prunable_names, prune_by_magnitude,
                         rewind)
from archs.training import train_epoch
from data.datasets import Split


def fc1_model(seed=0):
    torch.manual_seed(seed)
    return build_model("fc1", 1, 28, 10)


def test_prunable_names_are_conv_and_linear_weights_only():
    resnet = build_model("resnet18", 3, 32, 10)
    names = prunable_names(resnet)
    assert "conv1.weight" in names and "fc.weight" in names
    assert "layer1.0.conv2.weight" in names and "layer2.0.downsample.0.weight" in names
    assert not any("bn" in n or "bias" in n or "downsample.1" in n for n in names)
    assert len(names) == 21  # 20 convolutions + the classifier
    assert prunable_names(fc1_model()) == ["1.weight", "3.weight", "5.weight"]


@pytest.mark.parametrize("percent", [20.0, 68.0, 90.0])
def test_each_tensor_loses_exactly_the_asked_fraction_of_its_survivors(percent):
    model = fc1_model()
    weights = dict(model.named_parameters())
    masks = full_masks(model)
    for _ in range(3):
        alive_before = {n: int(m.sum()) for n, m in masks.items()}
        new = prune_by_magnitude(weights, masks, percent)
        for name, mask in new.items():
            expected = alive_before[name] - round(alive_before[name] * percent / 100)
            assert int(mask.sum()) == expected
            assert not (mask & ~masks[name]).any(), "a pruned weight came back"
        masks = new


def test_the_smallest_magnitudes_are_the_ones_pruned():
    weight = torch.tensor([[0.5, -0.1, 3.0, -2.0, 0.05]])
    masks = prune_by_magnitude({"w": weight}, {"w": torch.ones(1, 5, dtype=torch.bool)}, 40)
    assert masks["w"].tolist() == [[True, False, True, True, False]]
    # Among survivors only: the already-pruned 3.0 is not counted again.
    again = prune_by_magnitude({"w": weight}, {"w": torch.tensor([[True, True, False, True, True]])}, 50)
    assert again["w"].tolist() == [[True, False, False, True, False]]


def test_ties_are_broken_by_position_keeping_the_first_ones():
    weight = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    masks = prune_by_magnitude({"w": weight}, {"w": torch.ones(2, 3, dtype=torch.bool)}, 50)
    # 3 of 6 survive: the 2.0, then the first two of the five tied 1.0s in row-major order.
    assert masks["w"].tolist() == [[True, True, False], [True, False, False]]


def test_percent_out_of_range_is_refused():
    with pytest.raises(ValueError):
        prune_by_magnitude({}, {}, 100)
    with pytest.raises(ValueError):
        prune_by_magnitude({}, {}, -1)


def test_percent_remaining_follows_the_geometric_schedule():
    model = fc1_model()
    masks = full_masks(model)
    weights = dict(model.named_parameters())
    for cycle in (1, 2):
        masks = prune_by_magnitude(weights, masks, 68)
        assert percent_remaining(masks) == pytest.approx(expected_percent_remaining(68, cycle), abs=0.01)
    assert count_alive(masks)[1] == 784 * 300 + 300 * 100 + 100 * 10


def test_rewinding_restores_initial_values_times_mask_and_leaves_biases_and_batchnorm_alone():
    torch.manual_seed(0)
    model = build_model("resnet18", 1, 28, 10)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # "train": move everything away from the initial state
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), 90)
    rewind(model, initial, masks)
    state = model.state_dict()
    for name, value in state.items():
        if name in masks:
            assert torch.equal(value, initial[name] * masks[name])
        else:  # biases, BatchNorm weights and biases and running statistics
            assert torch.equal(value, initial[name]), name
    assert torch.equal(state["bn1.weight"], initial["bn1.weight"])
    assert not any("bn" in n for n in masks)


def test_pruned_weights_stay_exactly_zero_through_many_adam_steps_with_weight_decay():
    model = fc1_model()
    masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), 90)
    apply_masks(model, masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    data = Split(torch.randn(512, 1, 28, 28), torch.randint(0, 10, (512,)))
    masked = [(p, masks[n].float()) for n, p in model.named_parameters() if n in masks]
    for _ in range(10):  # 10 epochs x 8 steps
        train_epoch(model, optimizer, data, 64, generator, masked)
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.count_nonzero(param[~masks[name]]) == 0
            assert torch.count_nonzero(param[masks[name]]) == int(masks[name].sum())
    assert torch.equal(masks_from_state(model.state_dict(), list(masks))["1.weight"], masks["1.weight"])


def test_a_live_weight_that_passes_through_zero_is_not_frozen():
    # Two logits from one input: the loss pushes logit 1 down, so its weight, alive but below
    # the 1e-6 magnitude under which the original froze weights, must cross zero and go on.
    model = nn.Sequential(nn.Linear(1, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0], [5e-7], [0.3]]))
    masks = {"0.weight": torch.tensor([[False], [True], [True]])}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    data = Split(torch.ones(16, 1), torch.full((16,), 2))
    masked = [(model[0].weight, masks["0.weight"].float())]
    for _ in range(10):
        train_epoch(model, optimizer, data, 8, torch.Generator().manual_seed(0), masked)
    weight = model[0].weight.detach().flatten()
    assert weight[0].item() == 0.0          # pruned: still exactly zero
    assert weight[1].item() < -0.1          # alive: crossed zero and kept moving
    assert weight[2].item() > 0.3
