"""Every registry a user extends: a toy optimiser, schedule, dataset, network, criterion, prune
type and branch registered from this file alone (nothing else edited) train runs end to end
through lottery_ticket.py's own entry point, each is offered as a flag choice, and the toy
control shows up in the control table and the figures' colours as it declares."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lottery_ticket
from archs.api import LotteryTicketFinder, keep_pruned
from archs.experiment import TrainingJob
from archs.optim import OPTIMIZERS, SCHEDULES, register_optimizer, register_schedule
from archs.pruning import PRUNE_TYPES, PruneType, register_prune_type
from archs.pruning.branches import BRANCHES, Branch, LevelStart, register_branch, ticket_start
from archs.pruning.criteria import CRITERIA, register_criterion
from archs.registry import ARCHITECTURES, register_model
from data.conditions import CONDITIONS
from data.datasets import DATASETS, register_dataset
from data.paths import results_path
from data.report.labels import config_colour
from data.report.performance_report import control_comparison_rows
from data.results import load_training_runs
from data.runs import RunConfig
from utils import UserError
from data.store import load_checkpoint

LR = 0.05
seen_lrs: list[float] = []          # the rate of every optimiser step, as the step saw it
decay_calls: list[tuple[int, int]] = []
built: list[str] = []


class CountingSGD(torch.optim.SGD):
    def step(self, closure=None):
        seen_lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def toy_sgd(params, lr, weight_decay, momentum):
    built.append("optimizer")
    return CountingSGD(params, lr=lr, weight_decay=weight_decay)


def halving(iteration: int, total: int) -> float:
    decay_calls.append((iteration, total))
    return 1.0 if iteration < total // 2 else 0.5


def toy_stripes(data_dir):
    """60 images of 8 x 8: class 0 bright in the top half, class 1 in the bottom half."""
    built.append("dataset")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 2
    images = rng.integers(0, 40, size=(60, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 0, 4 * label:4 * label + 4] = 220
    return images, labels


def largest_first(model, masks, rewind_state, batches, loss_fn):
    """A toy criterion: prunes the largest weights (scores -|w|)."""
    built.append("criterion")
    weights = dict(model.named_parameters())
    return {name: -weights[name].detach().abs() for name in masks}


def toy_net(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    built.append("network")
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))


class FlippedSigns(Branch):
    """A toy control: the ticket's masks, every survivor starting with its sign flipped."""
    name = "toyflip"
    control, control_rank, style = "toy flipped signs", 5, ("#123456", "-.")

    def start(self, parent, level, args, copy):
        ticket = ticket_start(parent, level)
        built.append(("toyflip", level, {n: t.clone() for n, t in ticket.state.items()}))
        return LevelStart(ticket.masks, {n: -t for n, t in ticket.state.items()})


class InversePruning(PruneType):
    """A toy iterative prune type: keeps, among the survivors, exactly what pruning removed."""
    name = "toyinverse"
    words, style = "iterative inverse", ("#654321", ":")

    def masks(self, masks, previous_masks, *, seed, cycle, structure=None):
        return {n: previous_masks[n] & ~m for n, m in masks.items()}


@pytest.fixture
def toys():
    """Registered with the public decorators; taken out again so no other test sees them."""
    register_optimizer("toysgd")(toy_sgd)
    register_schedule("halving")(halving)
    register_dataset("toystripes", in_channels=1, image_size=8, num_classes=2)(toy_stripes)
    register_model("toynet")(toy_net)
    register_criterion("largest")(largest_first)
    register_branch(FlippedSigns)
    register_prune_type(InversePruning)
    for log in (seen_lrs, decay_calls, built):
        log.clear()
    yield
    OPTIMIZERS.pop("toysgd")
    SCHEDULES.pop("halving")
    DATASETS.pop("toystripes")
    ARCHITECTURES.pop("toynet")
    CRITERIA.pop("largest")
    BRANCHES.pop("toyflip")
    PRUNE_TYPES.pop("toyinverse")
    CONDITIONS["branch"].pop("toyflip")
    CONDITIONS["prune_type"].pop("toyinverse")


def test_toy_extensions_are_flag_choices(toys):
    help_text = lottery_ticket.build_parser().format_help()
    for name in ("toysgd", "halving", "toystripes", "toynet", "largest", "toyinverse"):
        assert name in help_text


def test_a_run_trains_with_a_toy_optimizer_schedule_dataset_and_network(toys, tmp_path):
    argv = ["--arch_type", "toynet", "--dataset", "toystripes", "--optimizer", "toysgd",
            "--lr_schedule", "halving", "--prune_criterion", "largest", "--lr", str(LR), "--decay", "0", "--batch_size", "8",
            "--end_epoch", "3", "--prune_percent", "50", "--prune_iterations", "2", "--seeds", "0",
            "--save_dir", str(tmp_path / "saves"), "--data_dir", str(tmp_path / "data"),
            "--device", "cpu", "--no_progress", "--save_cycle_weights", "none"]
    assert lottery_ticket.main(argv) == 0

    config = RunConfig(arch_type="toynet", dataset="toystripes", optimizer="toysgd", lr_schedule="halving",
                       prune_criterion="largest", lr=LR, decay=0.0, batch_size=8, end_iter=3, prune_percent=50.0, prune_iterations=2)
    path = results_path(tmp_path / "saves", config)
    assert path.parent == tmp_path / "saves" / "toynet" / "toystripes"
    assert path.is_file()   # its name carries the settings (digested when the suffix grows long)
    results = load_checkpoint(path)
    assert RunConfig.from_dict(results["args"]).identity() == config.identity()
    # 42 training images (70% of 60) in batches of 8: 6 steps an epoch, T = 18 steps a cycle.
    assert {total for _, total in decay_calls} == {18}
    expected = [LR * (1.0 if i < 9 else 0.5) for i in range(18)]
    assert seen_lrs == pytest.approx(expected * 2, rel=1e-12)    # both cycles followed the schedule
    assert {"optimizer", "dataset", "network", "criterion"} <= set(built)
    # The network was pruned: the second cycle's masks keep half of each layer.
    second = results["masks"][-1]
    assert {name: float(mask.float().mean()) for name, mask in second.items()} == {"1.weight": 0.5,
                                                                                  "3.weight": 0.5}


def test_an_unregistered_name_is_refused_in_one_line_before_training(tmp_path):
    with pytest.raises(UserError, match=r"unknown --optimizer 'toysgd'; choose one of adam, sgd"):
        TrainingJob(config=RunConfig(optimizer="toysgd"), seeds=[0], save_dir=tmp_path)


def test_a_study_naming_an_unregistered_schedule_is_refused_before_training(tmp_path):
    study = tmp_path / "study.json"
    study.write_text('{"configurations": [{"prune_percent": 50, "prune_iterations": 2, '
                     '"lr_schedule": "halving"}]}')
    with pytest.raises(UserError, match=r"unknown --lr_schedule 'halving'; choose one of none, step, cosine"):
        lottery_ticket.main(["--study", str(study), "--save_dir", str(tmp_path / "saves"),
                             "--data_dir", str(tmp_path / "data"), "--seeds", "0", "--no_progress"])
    assert not (tmp_path / "saves").exists() or not any((tmp_path / "saves").rglob("*.pt"))


def test_a_toy_branch_and_prune_type_train_and_the_toy_control_is_tabulated(toys, tmp_path):
    saves = tmp_path / "saves"
    common = ["--arch_type", "toynet", "--dataset", "toystripes", "--lr", str(LR), "--batch_size", "8",
              "--end_epoch", "3", "--prune_percent", "50", "--prune_iterations", "2", "--seeds", "0",
              "--save_dir", str(saves), "--data_dir", str(tmp_path / "data"), "--device", "cpu", "--no_progress"]
    for extra in ([], ["--branch", "toyflip"], ["--prune_type", "toyinverse"]):
        assert lottery_ticket.main(common + extra) == 0
    settings = dict(arch_type="toynet", dataset="toystripes", lr=LR, batch_size=8, end_iter=3,
                    prune_percent=50.0, prune_iterations=2)
    ticket, flipped, inverse = (load_checkpoint(results_path(saves, RunConfig(**settings, **extra)))
                                for extra in ({}, {"branch": "toyflip"}, {"prune_type": "toyinverse"}))

    # The branch trained level 1 only, from the parent's ticket with every sign flipped.
    [(_, level, started)] = [entry for entry in built if isinstance(entry, tuple)]
    assert level == 1 and [c["cycle"] for c in flipped["cycles"]] == [1]
    for name, mask in ticket["masks"][1].items():
        assert torch.equal(flipped["masks"][0][name], mask)
        assert torch.equal(started[name], ticket["initial_state_dict"][name])
    # The prune type's cycle 1 kept the half of each layer that the ticket pruned (same dense cycle).
    for name, mask in ticket["masks"][1].items():
        assert torch.equal(inverse["masks"][1][name], ~mask)
        assert float(mask.float().mean()) == 0.5

    runs = load_training_runs(saves, "toynet", "toystripes")
    [row] = control_comparison_rows(runs)
    ticket_acc = ticket["cycles"][1]["test_accuracy_at_best"]
    control_acc = flipped["cycles"][0]["test_accuracy_at_best"]
    assert (row["control"], row["cycle"], row["seeds"], row["percent_remaining"]) == ("toy flipped signs", 1, 1, 50.0)
    assert (row["ticket_test_accuracy_mean"], row["control_test_accuracy_mean"]) == (ticket_acc, control_acc)
    assert row["difference_mean"] == pytest.approx(ticket_acc - control_acc, abs=1e-12)
    # Each is drawn in the colour it declares, named in its own words.
    colours = {run.label: config_colour(run.label) for run in runs}
    assert colours == {"pp50x2, winning ticket": colours["pp50x2, winning ticket"],
                       "pp50x2, winning ticket, toyflip branch": "#123456",
                       "pp50x2, iterative inverse": "#654321"}


def test_the_api_compares_the_ticket_with_a_toy_control_beside_the_built_in_ones(toys):
    inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    labels = (inputs[:, 0] > 0).long()

    def train_fn(model, masks, cycle):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(20):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
            keep_pruned(model, masks)

    def eval_fn(model):
        return float((model(inputs).argmax(1) == labels).float().mean())

    finder = LotteryTicketFinder(lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), train_fn,
                                 eval_fn, prune_percent=50, prune_iterations=2)
    comparison = finder.compare_controls()
    assert comparison.controls == ["reinit", "random_mask", "toyflip"]      # by control_rank: 0, 1, 5
    [row] = comparison.rows
    assert row["ticket_minus_toyflip"] == row["winning_ticket"] - row["toy_flipped_signs"]
    assert row["ticket_minus_reinit"] == row["winning_ticket"] - row["random_reinit"]
    assert 0 <= row["toy_flipped_signs"] <= 1
    header = comparison.table().splitlines()[0]
    assert header.split() == ["cycle", "%", "weights", "left", "winning_ticket", "random_reinit", "random_mask",
                              "toy_flipped_signs", "ticket", "-", "reinit", "ticket", "-", "random", "mask",
                              "ticket", "-", "toyflip"]
    [(_, level, _)] = [entry for entry in built if isinstance(entry, tuple)]
    assert level == 1
