"""The Python API (archs/api.py), ticket transfer and pretrained starts through the CLI, and
post_training_inference.py --evaluate_only."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archs.api import (LotteryTicketFinder, compare_controls, keep_pruned, next_ticket, transfer)
from archs.experiment import TrainingJob, run_job
from archs.pruning import PruningPlan, full_masks, rewind
from data.energy.emissions import TrackerSettings
from data.report.labels import describe_config, is_baseline
from data.paths import results_path
from data.runs import RunConfig, parse_setting
from data.selection import group_labels
from data.sources import file_reference, find_referenced_file
from utils import UserError


# --------------------------------------------------------------------------- the Python API
def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def toy_data(n=96, seed=5):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 16, generator=generator)
    labels = (inputs[:, :3].argmax(dim=1))      # learnable: the class is the largest of 3 inputs
    return inputs, labels


INPUTS, LABELS = toy_data()


def train_fn(model, masks, cycle, steps=15):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(INPUTS), LABELS).backward()
        optimizer.step()
        keep_pruned(model, masks)


def eval_fn(model):
    with torch.no_grad():
        return float((model(INPUTS).argmax(dim=1) == LABELS).float().mean())


def test_finder_prunes_exact_counts_masks_only_shrink_and_ticket_is_initial_times_mask():
    finder = LotteryTicketFinder(tiny_mlp, train_fn, eval_fn, prune_percent=50, prune_iterations=4, seed=3)
    search = finder.find()
    # 16x12 = 192 and 12x3 = 36 weights lose round(alive/2) per round (half to even).
    expected = {"1.weight": [192, 96, 48, 24], "3.weight": [36, 18, 9, 5]}   # round(4.5) = 4
    for name, counts in expected.items():
        assert [int(m[name].sum()) for m in search.masks] == counts
    for before, after in zip(search.masks, search.masks[1:]):
        for name in before:
            assert not bool((after[name] & ~before[name]).any())     # nothing revives
    assert [r.cycle for r in search.history] == [0, 1, 2, 3]
    assert [round(r.percent_left, 4) for r in search.history] == [
        round(100 * (a + b) / 228, 4) for a, b in zip(*expected.values())]
    assert all(0 <= r.score <= 1 for r in search.history)
    torch.manual_seed(3)
    initial = tiny_mlp().state_dict()          # the finder seeds model_fn with its seed
    ticket = search.ticket(2).state_dict()
    for name, value in initial.items():
        mask = search.masks[2].get(name)
        assert torch.equal(ticket[name], value * mask if mask is not None else value)
    # The trained network of the last cycle keeps its pruned weights at zero.
    trained = dict(search.model.named_parameters())
    assert all(not bool(trained[n][~m].any()) for n, m in search.masks[-1].items())


def test_finder_with_a_2_of_4_structure_keeps_every_level_2_of_4():
    from archs.pruning import is_n_of_m

    search = LotteryTicketFinder(tiny_mlp, train_fn, eval_fn, prune_percent=20, prune_iterations=3, seed=3,
                                 prune_structure="2:4").find()
    # the first round imposes 2:4 (half of each layer, more than the rate), the second prunes 20% within it
    assert [int(m["1.weight"].sum()) for m in search.masks] == [192, 96, 77]
    assert all(is_n_of_m(m[name]) for m in search.masks[1:] for name in m)
    # its random-mask control draws 2:4 masks too, of the ticket's sizes
    from archs.api import control_start
    for level in (1, 2):
        drawn = control_start(search.as_parent(), "random_mask", level).masks
        assert all(is_n_of_m(drawn[name]) for name in drawn)
        assert {n: int(m.sum()) for n, m in drawn.items()} == {n: int(m.sum()) for n, m in search.masks[level].items()}


def test_finder_target_sparsity_global_scope_and_ignored_layers():
    finder = LotteryTicketFinder(tiny_mlp, train_fn, eval_fn, target_sparsity=75, prune_iterations=3,
                                 scope="global", prune_ignore=("3",))
    search = finder.find()
    assert int(search.masks[-1]["3.weight"].sum()) == 36          # ignored: dense
    # per round 50% of the 192 ranked weights: 96 then 48
    assert [int(m["1.weight"].sum()) for m in search.masks] == [192, 96, 48]


def test_a_pretrained_state_is_the_start_and_the_rewind_point():
    torch.manual_seed(11)
    pretrained = tiny_mlp()
    train_fn(pretrained, full_masks(pretrained), 0, steps=30)
    state = {k: v.clone() for k, v in pretrained.state_dict().items()}
    search = LotteryTicketFinder(tiny_mlp, train_fn, eval_fn, prune_percent=50, prune_iterations=2,
                                 rewind_to=state).find()
    ticket = search.ticket(1).state_dict()
    for name, value in state.items():
        mask = search.masks[1].get(name)
        assert torch.equal(ticket[name], value * mask if mask is not None else value)
    assert search.history[0].score >= 0.5    # cycle 0 fine-tunes the pretrained network


def test_a_train_fn_that_forgets_keep_pruned_is_corrected_and_warned(caplog):
    def careless(model, masks, cycle):
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(INPUTS), LABELS).backward()
            optimizer.step()

    search = LotteryTicketFinder(tiny_mlp, careless, eval_fn, prune_percent=50, prune_iterations=2).find()
    trained = dict(search.model.named_parameters())
    assert all(not bool(trained[n][~m].any()) for n, m in search.masks[-1].items())
    assert "keep_pruned" in caplog.text


def test_compare_controls_gives_a_row_per_level_with_three_conditions_and_differences():
    finder = LotteryTicketFinder(tiny_mlp, train_fn, eval_fn, prune_percent=60, prune_iterations=3, seed=1)
    search = finder.find()
    comparison = compare_controls(search, train_fn, eval_fn)
    assert [row["cycle"] for row in comparison.rows] == [1, 2]
    for row in comparison.rows:
        assert row["winning_ticket"] == search.history[row["cycle"]].score
        for condition in ("winning_ticket", "random_reinit", "random_mask"):
            assert 0 <= row[condition] <= 1
        assert math.isclose(row["ticket_minus_reinit"], row["winning_ticket"] - row["random_reinit"])
        assert math.isclose(row["ticket_minus_random_mask"], row["winning_ticket"] - row["random_mask"])
    table = comparison.table()
    assert "random_mask" in table and "ticket - reinit" in table
    # Reproducible: the same seed gives the same controls.
    again = compare_controls(search, train_fn, eval_fn, cycles=[2])
    assert again.rows[0] == comparison.rows[1]


def test_next_ticket_controls_keep_counts_and_reinit_redraws():
    torch.manual_seed(0)
    model = tiny_mlp()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    train_fn(model, full_masks(model), 0)
    plan = PruningPlan(50.0)
    dense = full_masks(model)
    lt_masks, lt_start = next_ticket(model, dense, initial, plan, prune_type="lt", seed=0, cycle=1)
    random_masks, random_start = next_ticket(model, dense, initial, plan, prune_type="random", seed=0, cycle=1)
    reinit_masks, reinit_start = next_ticket(model, dense, initial, plan, prune_type="reinit", seed=0, cycle=1)
    for name in lt_masks:
        assert int(random_masks[name].sum()) == int(lt_masks[name].sum())
        assert not torch.equal(random_masks[name], lt_masks[name])
        assert torch.equal(reinit_masks[name], lt_masks[name])
        assert torch.equal(lt_start[name], initial[name]) and torch.equal(random_start[name], initial[name])
        assert not torch.equal(reinit_start[name], initial[name])


def test_transfer_reinitialises_a_differing_output_layer_only():
    torch.manual_seed(0)
    source = tiny_mlp()
    masks = {n: torch.rand(m.shape) < 0.5 for n, m in full_masks(source).items()}
    target = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    own_output = target.state_dict()["3.weight"].clone()
    new_masks, state = transfer(masks, source.state_dict(), target)
    assert torch.equal(new_masks["1.weight"], masks["1.weight"])
    assert torch.equal(state["1.weight"], source.state_dict()["1.weight"] * masks["1.weight"])
    assert bool(new_masks["3.weight"].all()) and torch.equal(state["3.weight"], own_output)
    wider = nn.Sequential(nn.Flatten(), nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 3))
    with pytest.raises(UserError, match="only the output layer may differ"):
        transfer(masks, source.state_dict(), wider)


# --------------------------------------------------------------------------- through the CLI
TINY = dict(arch_type="fc1", end_iter=2, batch_size=64, prune_iterations=2, prune_percent=50.0)


def make_job(save_dir, data_dir, **changes):
    return TrainingJob(config=RunConfig(**{**TINY, **changes}), seeds=[0], data_dir=data_dir,
                       save_dir=save_dir, device="cpu", show_progress=False,
                       tracker=TrackerSettings(country_iso_code="FRA"))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, small_mnist_dir):
    save_dir = tmp_path_factory.mktemp("transfer") / "saves"
    [path] = run_job(make_job(save_dir, small_mnist_dir))
    return save_dir, path, torch.load(path, weights_only=True)


def test_a_transferred_ticket_keeps_its_source_masks_and_initial_values(source_run, tmp_path):
    import lottery_ticket
    from tests.conftest import write_mnist

    save_dir, source_path, source = source_run
    target_data = write_mnist(tmp_path / "fashion", n_train=120, n_test=30, folder="FashionMNIST", seed=7)
    flags = ["--arch_type", "fc1", "--dataset", "fashionmnist", "--end_iter", "2", "--batch_size", "64",
             "--prune_iterations", "2", "--prune_percent", "50", "--seeds", "3", "--no_progress",
             "--ticket_source", str(source_path), "--data_dir", str(target_data), "--save_dir", str(save_dir)]
    assert lottery_ticket.main(flags) == 0
    config = RunConfig(**{**TINY, "dataset": "fashionmnist", "seed": 3,
                          "ticket_source": file_reference(source_path, 1)})
    results = torch.load(results_path(save_dir, config), weights_only=True)
    assert results["args"]["ticket_source"] == file_reference(source_path, 1)
    for name, mask in source["masks"][1].items():          # cycle 0 trains the source's last ticket
        assert torch.equal(results["masks"][0][name], mask)
        assert torch.equal(results["initial_state_dict"][name], source["initial_state_dict"][name] * mask)
    assert results["cycles"][0]["percent_remaining"] == pytest.approx(source["cycles"][1]["percent_remaining"])
    assert results["cycles"][1]["percent_remaining"] < results["cycles"][0]["percent_remaining"]
    # The figures name it as a transferred ticket, even alone.
    [label] = group_labels([config]).values()
    assert label == f"pp50x2, ticket from {source_path.stem} cycle 1"
    assert describe_config(label) == f"ticket from {source_path.stem} cycle 1, 50% pruned once more"
    assert not is_baseline(f"pp0x1, ticket from {source_path.stem} cycle 1") and is_baseline("pp0x1")


def test_a_transfer_across_class_counts_reinitialises_the_output_layer(source_run, tmp_path,
                                                                        accept_handmade_cifar10):
    from tests.conftest import write_cifar10, write_cifar100

    save_dir, _, _ = source_run
    cifar10 = write_cifar10(tmp_path / "c10", per_batch=24, n_test=30)
    cifar100 = tmp_path / "c100"
    write_cifar100(cifar100)
    [source_path] = run_job(make_job(save_dir, cifar10, dataset="cifar10"))
    source = torch.load(source_path, weights_only=True)
    reference = parse_setting("ticket_source", f"{source_path}:1")
    job = make_job(save_dir, cifar100, dataset="cifar100", prune_iterations=1, ticket_source=reference)
    assert job.config.prune_percent == 0 and job.config.stem.startswith("pp0x1_seed0_co2False_cifar100_")
    assert job.config.stem != dataclasses.replace(job.config, ticket_source="", train_type="regular").stem
    [path] = run_job(job)
    results = torch.load(path, weights_only=True)
    assert len(results["cycles"]) == 1
    fresh = torch.load(run_job(make_job(save_dir, cifar100, dataset="cifar100", train_type="regular"))[0],
                       weights_only=True)["initial_state_dict"]
    for name, mask in source["masks"][1].items():
        if mask.shape != results["masks"][0][name].shape:    # the output layer: 10 -> 100 classes
            assert bool(results["masks"][0][name].all())       # re-initialised output layer: dense
            assert torch.equal(results["initial_state_dict"][name], fresh[name])   # the seed's own draw
        else:
            assert torch.equal(results["masks"][0][name], mask)
            assert torch.equal(results["initial_state_dict"][name], source["initial_state_dict"][name] * mask)
    changed = [n for n, m in source["masks"][1].items() if m.shape != results["masks"][0][n].shape]
    assert len(changed) == 1


def test_the_source_is_found_by_content_and_a_retrained_one_is_refused(source_run, tmp_path):
    save_dir, source_path, _ = source_run
    reference = file_reference(source_path)
    moved = tmp_path / "elsewhere" / "deep" / source_path.name
    moved.parent.mkdir(parents=True)
    moved.write_bytes(source_path.read_bytes())
    assert find_referenced_file(reference, tmp_path / "elsewhere") == moved
    assert file_reference(moved) == reference             # the identity does not depend on where it is
    moved.write_bytes(source_path.read_bytes() + b"\0")
    with pytest.raises(UserError, match="other content"):
        find_referenced_file(reference, tmp_path / "elsewhere")
    with pytest.raises(UserError, match="under"):
        find_referenced_file(reference, tmp_path / "nowhere")


def test_init_from_starts_and_rewinds_to_a_pretrained_state(source_run, small_mnist_dir):
    save_dir, _, _ = source_run
    [dense_path] = run_job(make_job(save_dir, small_mnist_dir, train_type="regular"))
    pretrained = torch.load(dense_path, weights_only=True)["best_state_dict"]
    job = make_job(save_dir, small_mnist_dir, init_from=parse_setting("init_from", str(dense_path)))
    [path] = run_job(job)
    results = torch.load(path, weights_only=True)
    for name, value in pretrained.items():
        assert torch.equal(results["initial_state_dict"][name], value)
    final = results["final_state_dict"]
    assert all(not bool(final[n][~m].any()) for n, m in results["masks"][1].items())


def test_a_transfer_run_without_its_source_under_save_dir_is_refused_before_training(source_run, tmp_path):
    _, source_path, _ = source_run
    job = make_job(tmp_path / "other_saves", tmp_path, ticket_source=file_reference(source_path, 1))
    with pytest.raises(UserError, match="no ticket source"):
        run_job(job)


# --------------------------------------------------------------------------- --evaluate_only
def test_evaluate_only_prints_the_logged_test_accuracy_at_the_best_state(source_run, capsys):
    import post_training_inference

    save_dir, source_path, source = source_run
    assert post_training_inference.main(["--arch_type", "fc1", "--dataset", "mnist", "--save_dir", str(save_dir),
                                         "--evaluate_only", "--state", "best", "--configs", "pp50x2",
                                         "--where", "ticket_source=", "init_from="]) == 0
    out = capsys.readouterr().out
    logged = source["cycles"][-1]["test_accuracy_at_best"]
    assert f"test accuracy {logged:.2f}%" in out
    alive = sum(int(m.sum()) for m in source["masks"][-1].values())
    total = sum(m.numel() for m in source["masks"][-1].values())
    assert f"{1 - alive / total:.4f} of prunable weights pruned" in out
    assert "5.weight" in out and "0.5000" in out          # every layer lost half its weights
    assert not (save_dir / "fc1" / "mnist" / "inference").exists()    # no tables, no CodeCarbon
