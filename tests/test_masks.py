"""The mask arithmetic: exact counts, monotone masks, rewinding, zeros that stay zero."""
import pytest
import torch
from torch import nn

from archs import build_model
from archs.pruning import (apply_masks, count_alive, expected_percent_remaining, full_masks,
                         is_denormal, is_nonzero, masks_from_state, percent_remaining, prunable_names, prune_by_magnitude,
                         rewind)
from archs.train import train_epoch
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


# --------------------------------------------------------------------------- the experiment space
import math  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from archs.pruning import (LayerCollapse, PruningPlan, RewindPoint, derived_generator,  # noqa: E402
                         first_collapse, layer_sizes, magnitude_scores, parse_rewind_point,
                         per_round_percent, planned_survivors, prune_global, prune_layerwise,
                         random_masks, reinitialise_survivors, snip_scores, xavier_normal_std)


def trained_fc1(seed=0):
    """fc1 whose weights moved away from the initialisation, with that initialisation."""
    model = fc1_model(seed)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, initial


def test_reinit_draws_new_xavier_survivors_keeps_the_mask_and_leaves_the_model_alone():
    model, initial = trained_fc1()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), 80)
    state = reinitialise_survivors(initial, masks, torch.Generator().manual_seed(7))
    assert set(state) == set(initial)
    for name, mask in masks.items():
        new = state[name]
        assert torch.count_nonzero(new[~mask]) == 0
        assert torch.count_nonzero(new[mask]) == int(mask.sum())
        assert not torch.isclose(new[mask], initial[name][mask]).any()
        bias = name.replace("weight", "bias")
        assert not torch.isclose(state[bias], initial[bias]).any()
    # The redraw follows the Xavier-normal distribution of archs.initialise: 784 x 300 has
    # std sqrt(2 / 1084) = 0.04295; 47,040 survivors estimate it within 1% (5 standard errors).
    survivors = state["1.weight"][masks["1.weight"]]
    assert xavier_normal_std((300, 784)) == pytest.approx(math.sqrt(2 / 1084))
    assert survivors.std().item() == pytest.approx(0.04295, rel=0.01)
    assert abs(survivors.mean().item()) < 0.001
    assert xavier_normal_std((6, 3, 5, 5)) == pytest.approx(math.sqrt(2 / (75 + 150)))
    again = reinitialise_survivors(model, masks, torch.Generator().manual_seed(7))
    assert all(torch.equal(again[n], state[n]) for n in masks)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_reinit_copies_batchnorm_and_running_statistics():
    torch.manual_seed(0)
    model = build_model("resnet18", 1, 28, 10)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    masks = full_masks(model)
    state = reinitialise_survivors(initial, masks, torch.Generator().manual_seed(1))
    for name, value in state.items():
        if name in masks:
            assert not torch.equal(value, initial[name])
        elif name != "fc.bias":
            assert torch.equal(value, initial[name]), name
    assert not torch.equal(state["fc.bias"], initial["fc.bias"])


def test_random_masks_have_the_magnitude_masks_per_layer_counts_inside_the_survivors():
    model, _ = trained_fc1()
    weights = dict(model.named_parameters())
    previous = prune_by_magnitude(weights, full_masks(model), 50)
    magnitude = prune_by_magnitude(weights, previous, 50)
    rand = random_masks(magnitude, previous, torch.Generator().manual_seed(3))
    for name in magnitude:
        assert int(rand[name].sum()) == int(magnitude[name].sum())
        assert not (rand[name] & ~previous[name]).any(), "a pruned weight came back"
        overlap = int((rand[name] & magnitude[name]).sum()) / int(magnitude[name].sum())
        assert overlap < 0.7  # random choice of half the survivors: about 50% overlap
    assert all(torch.equal(rand[n], random_masks(magnitude, previous, torch.Generator().manual_seed(3))[n])
               for n in rand)
    other = random_masks(magnitude, previous, torch.Generator().manual_seed(4))
    assert not torch.equal(other["1.weight"], rand["1.weight"])


def test_derived_generators_are_reproducible_and_independent():
    def draw(*args):
        return torch.rand(4, generator=derived_generator(*args)).tolist()
    assert draw(1, "reinit", 2) == draw(1, "reinit", 2)
    assert len({tuple(draw(*a)) for a in [(1, "reinit", 2), (1, "reinit", 3), (2, "reinit", 2),
                                          (1, "random_mask", 2)]}) == 4


def test_global_pruning_ranks_all_layers_together_and_removes_the_exact_count():
    weights = {"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([[2.0, 4.0], [6.0, 0.5]])}
    masks = {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(2, 2, dtype=torch.bool)}
    new = prune_global(magnitude_scores(weights, masks), masks, 40)
    # 7 survivors, round(2.8) = 3 pruned: 0.5, 1 and 2, whichever layer holds them.
    assert new["a"].tolist() == [False, True, True]
    assert new["b"].tolist() == [[False, True], [True, False]]
    ties = prune_global({"a": torch.ones(2), "b": torch.ones(2)},
                        {"a": torch.ones(2, dtype=torch.bool), "b": torch.ones(2, dtype=torch.bool)}, 50)
    assert ties["a"].tolist() == [True, True] and ties["b"].tolist() == [False, False]


def test_global_pruning_of_a_network_keeps_per_layer_counts_consistent_with_one_threshold():
    model, _ = trained_fc1()
    weights = dict(model.named_parameters())
    masks = full_masks(model)
    for _ in range(2):
        alive = count_alive(masks)[0]
        new = prune_global(magnitude_scores(weights, masks), masks, 68)
        assert count_alive(new)[0] == alive - round(alive * 0.68)
        assert all(not (new[n] & ~masks[n]).any() for n in new)
        # One threshold for all layers: every kept |w| is >= every pruned survivor's |w|.
        kept = torch.cat([weights[n].detach().abs()[new[n]] for n in new])
        dropped = torch.cat([weights[n].detach().abs()[masks[n] & ~new[n]] for n in new])
        assert kept.min() >= dropped.max()
        # ... and the per-layer counts differ from the layer-wise ones.
        layerwise = prune_by_magnitude(weights, masks, 68)
        assert [int(new[n].sum()) for n in new] != [int(layerwise[n].sum()) for n in new]
        masks = new


def test_plan_gives_the_output_layer_its_own_rate_and_leaves_ignored_layers_dense():
    model, _ = trained_fc1()
    masks = full_masks(model)
    scores = magnitude_scores(dict(model.named_parameters()), masks)
    plan = PruningPlan(20, output_percent=10, ignore=("1",))
    assert plan.percent_for_layer(list(masks)) == {"1.weight": 0.0, "3.weight": 20.0, "5.weight": 10.0}
    new = plan.prune(scores, masks, cycle=1)
    assert [int(new[n].sum()) for n in new] == [784 * 300, 30000 - 6000, 1000 - 100]
    assert PruningPlan(20, ignore=("3.weight",)).percent_for_layer(list(masks))["3.weight"] == 0.0
    with pytest.raises(ValueError, match=r"--prune_ignore fc.*1, 3, 5"):
        PruningPlan(20, ignore=("fc",)).percent_for_layer(list(masks))
    with pytest.raises(ValueError, match="scope"):
        PruningPlan(20, scope="network")


def test_global_plan_prunes_the_output_layer_apart_when_it_has_its_own_rate():
    model, _ = trained_fc1()
    masks = full_masks(model)
    scores = magnitude_scores(dict(model.named_parameters()), masks)
    new = PruningPlan(50, scope="global", output_percent=20, ignore=("3",)).prune(scores, masks, 1)
    assert int(new["5.weight"].sum()) == 800
    assert bool(new["3.weight"].all())
    assert int(new["1.weight"].sum()) == 784 * 300 // 2  # the only layer ranked: half of it
    together = PruningPlan(50, scope="global").prune(scores, masks, 1)
    assert count_alive(together)[0] == (784 * 300 + 30000 + 1000) // 2


def test_planned_survivors_match_the_pruning_rounding_exactly():
    model, _ = trained_fc1()
    weights = dict(model.named_parameters())
    masks = full_masks(model)
    rates = PruningPlan(37.5, output_percent=62.5).percent_for_layer(list(masks))
    plan = planned_survivors(layer_sizes(masks), rates, 6)
    assert len(plan) == 7 and plan[0] == {"1.weight": 235200, "3.weight": 30000, "5.weight": 1000}
    for cycle in range(1, 7):
        masks = prune_layerwise(magnitude_scores(weights, masks), masks, rates)
        assert {n: int(m.sum()) for n, m in masks.items()} == plan[cycle]


def test_first_collapse_names_the_layer_and_cycle():
    # 10 -> 4 -> 2 -> 1 -> 0 at 60%; Python rounds half to even, so 50% would stop at 1 forever.
    sizes = {"1.weight": 1000, "5.weight": 10}
    assert first_collapse(sizes, {"1.weight": 20, "5.weight": 60}, 3) is None
    assert first_collapse(sizes, {"1.weight": 20, "5.weight": 60}, 4) == ("5.weight", 4)
    assert first_collapse(sizes, {"1.weight": 20, "5.weight": 50}, 30) is None
    assert first_collapse(sizes, {"1.weight": 99.99, "5.weight": 0}, 2) == ("1.weight", 1)


def test_a_collapsing_round_is_refused_naming_layer_and_cycle_in_both_scopes():
    masks = {"big": torch.ones(100, dtype=torch.bool), "out": torch.ones(2, dtype=torch.bool)}
    scores = {"big": torch.arange(100.0) + 1, "out": torch.tensor([0.1, 0.2])}
    with pytest.raises(LayerCollapse, match=r"layer big with no weight in cycle 3") as error:
        PruningPlan(99.5).prune(scores, masks, cycle=3)
    assert (error.value.layer, error.value.cycle) == ("big", 3)
    with pytest.raises(LayerCollapse, match=r"layer out .* cycle 2.*--prune_ignore out"):
        PruningPlan(5, scope="global").prune(scores, masks, cycle=2)
    kept = PruningPlan(5, scope="global", ignore=("out",)).prune(scores, masks, cycle=2)
    assert int(kept["big"].sum()) == 95 and bool(kept["out"].all())


def test_target_sparsity_sets_the_per_round_rate():
    assert per_round_percent(90, 2) == pytest.approx(90)
    assert per_round_percent(90, 3) == pytest.approx(100 * (1 - math.sqrt(0.1)))  # 68.377
    assert per_round_percent(99, 5) == pytest.approx(100 * (1 - 0.01 ** 0.25))     # 68.377
    model, _ = trained_fc1()
    weights = dict(model.named_parameters())
    masks = full_masks(model)
    rate = per_round_percent(95, 4)
    for _ in range(3):
        masks = prune_by_magnitude(weights, masks, rate)
    assert 100 - percent_remaining(masks) == pytest.approx(95, abs=0.01)
    with pytest.raises(ValueError, match="prune_iterations must be 2 or more"):
        per_round_percent(90, 1)
    with pytest.raises(ValueError, match="target sparsity"):
        per_round_percent(100, 3)


def test_snip_scores_match_a_hand_computed_gradient():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))

    def half_squared_error(output, target):
        return 0.5 * ((output - target) ** 2).sum(dim=1).mean()

    x, t = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    # y = W x = (-1, -1); dL/dW = (y - t) x^T = [[-1, 1], [-2, 2]]; |g * w| = [[1, 2], [6, 8]].
    scores = snip_scores(model, [(x, t)], half_squared_error)
    assert list(scores) == ["0.weight"]
    assert scores["0.weight"].tolist() == [[1.0, 2.0], [6.0, 8.0]]
    # Two batches: the gradient of their mean loss. Second batch x = (0, 1), t = (2, 4):
    # y = (2, 4), y - t = 0, gradient 0; the mean halves the first batch's scores.
    scores = snip_scores(model, [(x, t), (torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 4.0]]))],
                         half_squared_error)
    assert scores["0.weight"].tolist() == [[0.5, 1.0], [3.0, 4.0]]
    assert model[0].weight.grad is None


def test_snip_leaves_the_model_as_it_was_and_scores_pruned_weights_zero():
    torch.manual_seed(0)
    # BatchNorm: its running statistics would move in a training-mode forward pass.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3))
    model.eval()
    masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), 50)
    apply_masks(model, masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    scores = snip_scores(model, batches, F.cross_entropy)
    assert list(scores) == prunable_names(model)
    for name, mask in masks.items():
        assert torch.count_nonzero(scores[name][~mask]) == 0
        assert torch.count_nonzero(scores[name][mask]) > 0, name
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    new = PruningPlan(50).prune(scores, masks, cycle=2)
    assert count_alive(new)[0] == sum(int(m.sum()) - round(int(m.sum()) / 2) for m in masks.values())


@pytest.mark.parametrize("text, point, steps", [
    ("init", RewindPoint("init", 0), 0), ("3ep", RewindPoint("epoch", 3), 300),
    (" 500IT", RewindPoint("iteration", 500), 500), ("1it", RewindPoint("iteration", 1), 1)])
def test_rewind_points_parse_and_count_iterations(text, point, steps):
    parsed = parse_rewind_point(text)
    assert parsed == point and parsed.iteration(100) == steps
    assert parse_rewind_point(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["", "0ep", "ep", "3", "3 epochs", "-2it", "2.5ep", "initial"])
def test_bad_rewind_points_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"--rewind_to .*init.*<N>ep.*<N>it"):
        parse_rewind_point(text)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("flush", [False, True])
def test_nonzero_and_denormal_are_read_from_the_bits(dtype, flush):
    tiny = torch.finfo(dtype).tiny
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, tiny, -tiny], dtype=dtype)
    smallest = torch.tensor([1], dtype=_int_type(dtype)).view(dtype)   # the smallest denormal
    values = torch.cat([values, smallest, -smallest])
    torch.set_flush_denormal(flush)   # with flushing, the CPU itself compares denormals as zero
    assert is_nonzero(values).tolist() == [False, False, True, True, True, True, True, True]
    assert is_denormal(values).tolist() == [False] * 6 + [True, True]
    assert masks_from_state({"w": values}, ["w"])["w"].tolist() == is_nonzero(values).tolist()


def _int_type(dtype):
    return {torch.float32: torch.int32, torch.float64: torch.int64,
            torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]


def test_nonzero_of_integer_tensors_is_the_plain_comparison():
    assert is_nonzero(torch.tensor([0, 3, -1])).tolist() == [False, True, True]
    assert is_denormal(torch.tensor([0, 3])).tolist() == [False, False]
