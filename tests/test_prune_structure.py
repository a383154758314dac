"""--prune_structure N:M: the pure mask functions of a structured round, the run setting, and a
short real training on the digits whose masks are N:M after every round."""
from __future__ import annotations

import pytest
import torch

from archs.experiment import TrainingJob, run_job
from archs.pruning import (PruningPlan, control_ticket, is_n_of_m, magnitude_scores, n_of_m_mask,
                           parse_structure, random_masks, structure_column, unstructured_reason)
from archs.pruning.controls import derived_generator
from archs.pruning.structure import structured_round, within_projection
from data.energy.emissions import TrackerSettings
from data.runs import RunConfig, config_from_args
from data.selection import RunFilter, read_run_settings, where_argument
from data.settings import prune_structure_text


def weights(seed=0):
    """A linear weight, a conv weight whose K (4*3*3 = 36) groups across kernel boundaries, a
    conv weight with K = 25 (no multiple of 4) and an output layer."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"fc.weight": (6, 16), "conv.weight": (8, 4, 3, 3), "first.weight": (6, 1, 5, 5),
              "out.weight": (4, 32)}
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def dense(ws):
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in ws.items()}


def rows_of_groups(tensor, m=4):
    return tensor.reshape(tensor.shape[0], -1, m)


def assert_kept_are_the_largest_of_their_group(scores, before, after, m=4):
    """In every group, each kept weight scores at least as high as each weight the round pruned."""
    s, b, a = (rows_of_groups(t, m) for t in (scores.abs(), before, after))
    kept_min = s.masked_fill(~a, float("inf")).amin(-1)
    pruned_max = s.masked_fill(~(b & ~a), float("-inf")).amax(-1)
    assert bool((kept_min >= pruned_max).all())


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, canonical, parsed", [("2:4", "2:4", (2, 4)), (" 1 : 8 ", "1:8", (1, 8)),
                                                     ("unstructured", "unstructured", None),
                                                     ("Unstructured", "unstructured", None)])
def test_structures_parse_to_one_canonical_text(text, canonical, parsed):
    assert prune_structure_text(text) == canonical
    assert parse_structure(text) == parsed


@pytest.mark.parametrize("text", ["4:4", "0:4", "3:2", "2-4", "2:", "two:four", "2:4:8"])
def test_impossible_structures_are_refused(text):
    with pytest.raises(ValueError):
        prune_structure_text(text)


def test_eligibility_follows_the_flattened_input_dimension():
    assert unstructured_reason((8, 4, 3, 3), (2, 4)) is None          # K = 36
    assert unstructured_reason((6, 1, 5, 5), (2, 4)) == "K=25 is not a multiple of 4"
    assert unstructured_reason((10, 100), (2, 4)) is None
    assert unstructured_reason((10,), (2, 4)) == "not a matrix"


# --------------------------------------------------------------------------- one round
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("percent", [20.0, 50.0, 90.0])
def test_every_round_leaves_eligible_layers_n_of_m_with_the_largest_kept(scope, percent):
    ws = weights()
    masks = dense(ws)
    plan = PruningPlan(percent, scope, structure=(2, 4))
    unstructured = PruningPlan(percent, scope)
    for cycle in range(1, 3 if percent == 90 else 4):   # a third round at 90% would empty out.weight
        scores = magnitude_scores(ws, masks)
        new = plan.prune(scores, masks, cycle)
        plain = unstructured.prune(scores, masks, cycle)
        for name, mask in new.items():
            assert not (mask & ~masks[name]).any()          # pruned weights stay pruned
            if name == "first.weight":   # K = 25: the unstructured round (global: the pattern's
                if scope == "layer":     # casualties count towards the shared count, so it loses less)
                    assert torch.equal(mask, plain[name])
                else:
                    assert not (plain[name] & ~mask).any()
                continue
            assert is_n_of_m(mask)
            assert_kept_are_the_largest_of_their_group(ws[name], masks[name], mask)
            if scope == "layer":
                # the round's count, or fewer where the pattern forces more pruning
                projected = int(n_of_m_mask(scores[name], masks[name]).sum())
                assert int(mask.sum()) == min(projected, int(plain[name].sum()))
        if scope == "global":
            alive = sum(int(m.sum()) for m in new.values())
            assert alive <= sum(int(m.sum()) for m in plain.values())
        masks = new


def test_a_mask_already_n_of_m_is_pruned_as_without_the_structure():
    ws = weights(1)
    masks = {n: n_of_m_mask(w.abs(), torch.ones_like(w, dtype=torch.bool)) if n != "first.weight"
             else torch.ones_like(w, dtype=torch.bool) for n, w in ws.items()}
    scores = magnitude_scores(ws, masks)
    for name, mask in masks.items():
        assert torch.equal(n_of_m_mask(scores[name], mask) if name != "first.weight" else mask, mask)
    structured = PruningPlan(40.0, structure=(2, 4)).prune(scores, masks, 2)
    plain = PruningPlan(40.0).prune(scores, masks, 2)
    assert all(torch.equal(structured[n], plain[n]) for n in masks)


def test_the_first_round_at_a_low_rate_is_the_magnitude_projection():
    """ASP's step: below 50% the first 2:4 round keeps exactly the 2 largest of every 4."""
    ws = weights(2)
    masks = dense(ws)
    new = PruningPlan(20.0, structure=(2, 4)).prune(magnitude_scores(ws, masks), masks, 1)
    for name in ("fc.weight", "conv.weight", "out.weight"):
        assert torch.equal(new[name], n_of_m_mask(ws[name].abs(), masks[name]))
        assert int(new[name].sum()) == ws[name].numel() // 2


def test_ignored_and_zero_rate_layers_keep_their_masks():
    ws = weights(3)
    masks = dense(ws)
    plan = PruningPlan(60.0, output_percent=0.0, ignore=("fc",), structure=(2, 4))
    new = plan.prune(magnitude_scores(ws, masks), masks, 1)
    assert bool(new["fc.weight"].all()) and bool(new["out.weight"].all())
    assert is_n_of_m(new["conv.weight"])


def test_projection_scores_put_the_dropped_weights_first_and_within_finishes_the_round():
    ws = weights(4)
    masks = dense(ws)
    scores, projections = structured_round(magnitude_scores(ws, masks), masks, (2, 4), exempt={"out.weight"})
    assert set(projections) == {"fc.weight", "conv.weight"}
    dropped = ~projections["fc.weight"]
    assert bool(torch.isinf(scores["fc.weight"][dropped]).all())
    assert bool(torch.isfinite(scores["fc.weight"][~dropped]).all())
    finished = within_projection(masks, projections)
    assert torch.equal(finished["fc.weight"], projections["fc.weight"])
    assert torch.equal(finished["out.weight"], masks["out.weight"])


def test_random_controls_of_a_structured_round_are_n_of_m_with_the_same_counts():
    ws = weights(5)
    masks = dense(ws)
    plan = PruningPlan(30.0, structure=(2, 4))
    ticket = plan.prune(magnitude_scores(ws, masks), masks, 1)
    random, _ = control_ticket("random", ticket, masks, ws, seed=0, cycle=1, structure=(2, 4))
    for name, mask in random.items():
        assert int(mask.sum()) == int(ticket[name].sum())
        if name != "first.weight":
            assert is_n_of_m(mask) and not torch.equal(mask, ticket[name])
    # without a structure, the draws are what they always were
    unstructured = PruningPlan(30.0).prune(magnitude_scores(ws, masks), masks, 1)
    drawn = random_masks(unstructured, masks, derived_generator(0, "random_mask", 1))
    generator = derived_generator(0, "random_mask", 1)
    for name, reference in unstructured.items():   # the survivors with the highest uniform draws
        draws = torch.rand(masks[name].numel(), generator=generator, dtype=torch.float64)
        kept = torch.zeros(masks[name].numel(), dtype=torch.bool)
        kept[torch.topk(draws.masked_fill(~masks[name].reshape(-1), -1.0), int(reference.sum())).indices] = True
        assert torch.equal(drawn[name], kept.reshape(masks[name].shape))


def test_the_layer_table_says_each_layers_pattern():
    ws = weights(6)
    masks = dense(ws)
    assert structure_column(masks["fc.weight"], (2, 4)) == "2:4 from cycle 1"
    assert structure_column(masks["first.weight"], (2, 4)) == "unstructured (K=25 is not a multiple of 4)"
    assert structure_column(masks["fc.weight"], (2, 4), exempt=True) == "unstructured (not pruned)"
    projected = n_of_m_mask(ws["fc.weight"].abs(), masks["fc.weight"])
    assert structure_column(projected, (2, 4)) == "2:4"
    assert structure_column(projected, None) == "unstructured"


# --------------------------------------------------------------------------- the run setting
def test_the_setting_is_in_the_name_only_when_structured_and_old_files_read_unstructured(tmp_path):
    default, structured = RunConfig(), RunConfig(prune_structure="2:4")
    assert default.stem == "pp90x2_seed0_co2False_mnist"
    assert structured.stem == "pp90x2_seed0_co2False_mnist_nm2of4"
    old = {k: v for k, v in default.identity().items() if k != "prune_structure"}
    torch.save({"format_version": 2, "args": old}, tmp_path / "old.pt")
    assert read_run_settings(tmp_path / "old.pt").prune_structure == "unstructured"
    key, wanted = where_argument("prune_structure=2:4")
    assert RunFilter(where=((key, wanted),)).matches(structured)
    assert not RunFilter(where=((key, wanted),)).matches(default)


def test_labels_give_no_schedule_level_where_the_pattern_prunes_more_than_the_rate():
    from data.report.labels import describe_config, label_percent_left

    assert label_percent_left("pp20x3, 2:4 structured") is None
    assert label_percent_left("pp20x3, 2:4 structured, cycle 0") == 100.0
    assert label_percent_left("pp90x3, 2:4 structured") == pytest.approx(1.0)
    assert label_percent_left("pp20x3") == pytest.approx(64.0)
    assert describe_config("pp20x3, 2:4 structured") == \
        "20% pruned twice, the first time to 2:4 (more than the rate), 2:4 structured"
    assert describe_config("pp90x2, 2:4 structured") == "90% pruned once, 10% of weights left, 2:4 structured"


def test_a_dense_baseline_refuses_a_structure():
    import argparse

    args = argparse.Namespace(train_type="regular", prune_structure="2:4")
    with pytest.raises(Exception, match="prune_structure 2:4"):
        config_from_args(args)


# --------------------------------------------------------------------------- a real training
# lenet5 (3.3 M weights on the digits) trains one round: the first, which imposes the pattern
@pytest.mark.parametrize("arch, cycles", [("fc1", 3), ("lenet5", 2)])
def test_a_short_training_on_the_digits_keeps_every_round_n_of_m(arch, cycles, tmp_path, caplog):
    config = RunConfig(arch_type=arch, dataset="digits", prune_percent=30.0, prune_iterations=cycles, end_iter=1,
                       batch_size=256, lr=1.2e-3, prune_structure="2:4")
    job = TrainingJob(config=config, seeds=[0], save_dir=tmp_path, device="cpu", show_progress=False,
                      tracker=TrackerSettings(country_iso_code="FRA"))
    with caplog.at_level("INFO"):
        [path] = run_job(job)
    assert path.name.endswith("_nm2of4.pt")
    results = torch.load(path, weights_only=True)
    levels = results["masks"]
    assert len(levels) == cycles
    for cycle, masks in enumerate(levels[1:], start=1):
        for name, mask in masks.items():
            if unstructured_reason(mask.shape, (2, 4)) is None:
                assert is_n_of_m(mask), f"{arch} {name} cycle {cycle}"
            assert not (mask.bool() & ~levels[cycle - 1][name].bool()).any()
        state = results["final_state_dict"] if cycle == cycles - 1 else None
        if state is not None:   # the trained weights of the last cycle are N:M as well
            for name, mask in masks.items():
                assert not (state[name][~mask.bool()] != 0).any()
    assert "pattern" in caplog.text
    if arch == "lenet5":
        assert "unstructured (K=9 is not a multiple of 4)" in caplog.text   # its first conv: 1x3x3
