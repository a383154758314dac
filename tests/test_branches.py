"""Branches: one more cycle trained from the levels of a finished winning-ticket run (the
controls reinit and random_mask, retrain, lr_rewind/finetune, lmc), on the digits with fc1."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import archs.train.cycles as cycles
import archs.train.loop as loop
from archs.api import control_start
from archs.experiment import TrainingJob, run_job
from archs.pruning.branches.lmc import error_path, instability, interpolate
from archs.train.branch import parent_ticket
from data.energy.emissions import TrackerSettings
from data.paths import results_path
from data.runs import RunConfig
from data.selection import RunFilter, find_runs, select_runs, where_argument
from utils import UserError

PARENT = dict(arch_type="fc1", dataset="digits", prune_percent=50.0, prune_iterations=3, end_iter=2,
              batch_size=64, lr=1.2e-3)


def job(save_dir, **changes):
    return TrainingJob(config=RunConfig(**{**PARENT, **changes}), seeds=[0], save_dir=save_dir, device="cpu",
                       show_progress=False, tracker=TrackerSettings(country_iso_code="FRA"))


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module", params=["layer", "global"])
def parent(request, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp(f"branches_{request.param}")
    [path] = run_job(job(save_dir, prune_scope=request.param))
    return save_dir, request.param, load(path)


def branch(save_dir, scope, name, **changes):
    [path] = run_job(job(save_dir, prune_scope=scope, branch=name, **changes))
    return path, load(path)


def counts(masks):
    return {name: int(mask.sum()) for name, mask in masks.items()}


def test_reinit_keeps_the_masks_and_draws_other_values(parent):
    save_dir, scope, results = parent
    path, reinit = branch(save_dir, scope, "reinit")
    assert path.parent.name == RunConfig(**PARENT, prune_scope=scope).stem
    assert path.parent.parent.name == "branches" and path.name == "reinit.pt"
    assert [c["cycle"] for c in reinit["cycles"]] == [1, 2]
    for index, level in enumerate((1, 2)):
        for name, mask in results["masks"][level].items():
            assert torch.equal(reinit["masks"][index][name], mask)
    start = control_start(parent_ticket(results, path), "reinit", 2)
    initial = results["initial_state_dict"]
    for name, mask in start.masks.items():
        survivors = mask.bool()
        assert not torch.equal(start.state[name][survivors], initial[name][survivors])
        assert torch.all(start.state[name][~survivors] == 0)
        bias = name.removesuffix("weight") + "bias"
        assert not torch.equal(start.state[bias], initial[bias])      # biases re-drawn too


def test_random_mask_keeps_each_layers_count_and_moves_the_positions(parent):
    save_dir, scope, results = parent
    _, random = branch(save_dir, scope, "random_mask", branch_levels=(2,))
    assert [c["cycle"] for c in random["cycles"]] == [2]
    ticket, shuffled = results["masks"][2], random["masks"][0]
    assert counts(shuffled) == counts(ticket)
    assert any(not torch.equal(shuffled[n], ticket[n]) for n in ticket if not bool(ticket[n].all()))
    assert random["cycles"][0]["percent_remaining"] == pytest.approx(results["cycles"][2]["percent_remaining"])


def test_retrain_without_settings_replays_the_parents_cycle_exactly(parent):
    save_dir, scope, results = parent
    _, again = branch(save_dir, scope, "retrain", branch_levels=(2,))
    for key in ("best_val_accuracy", "test_accuracy_at_best", "best_epoch"):
        assert again["cycles"][0][key] == results["cycles"][2][key]
    for name, value in results["final_state_dict"].items():
        assert torch.equal(again["final_state_dict"][name], value)


def test_lmc_path_ends_are_the_two_networks_and_identical_networks_have_no_barrier(parent):
    save_dir, scope, results = parent
    if scope == "global":
        pytest.skip("one scope is enough")
    _, lmc = branch(save_dir, scope, "lmc", branch_levels=(1,))
    [level] = lmc["branch_levels"]
    copies = lmc["cycles"]
    assert [c["cycle"] for c in copies] == [1, 1] and len(level["test_errors"]) == 11
    assert level["test_errors"][0] == pytest.approx(100 - copies[0]["final_test_accuracy"])
    assert level["test_errors"][-1] == pytest.approx(100 - copies[1]["final_test_accuracy"])
    assert level["instability"] == pytest.approx(instability(level["test_errors"]))
    assert copies[0]["test_accuracy_at_best"] == results["cycles"][1]["test_accuracy_at_best"]  # the ticket's order
    a, b = results["initial_state_dict"], results["final_state_dict"]
    masks = results["masks"][2]
    assert all(torch.equal(interpolate(a, b, 0.0, {})[n], a[n]) for n in a)
    assert all(torch.equal(interpolate(a, b, 1.0, {})[n], b[n]) for n in b)
    assert all(torch.all(interpolate(a, b, 0.5, masks)[n][~m] == 0) for n, m in masks.items())
    same = error_path(b, b, masks, lambda state: float(sum(t.sum() for t in state.values())) % 7.0)
    assert same["instability"] == 0.0


def test_lr_rewind_replays_the_schedule_and_finetune_keeps_the_final_rate(parent, monkeypatch):
    save_dir, scope, _ = parent
    if scope == "global":
        pytest.skip("one scope is enough")
    run_job(job(save_dir, lr_schedule="step"))
    seen = []
    real = loop.set_learning_rate

    def record(optimizer, lr):
        seen.append(lr)
        real(optimizer, lr)

    monkeypatch.setattr(loop, "set_learning_rate", record)
    branch(save_dir, scope, "lr_rewind", lr_schedule="step", branch_levels=(2,))
    rewound, seen[:] = list(seen), []
    branch(save_dir, scope, "finetune", lr_schedule="step", branch_levels=(2,))
    assert rewound[0] == pytest.approx(1.2e-3) and rewound[-1] == pytest.approx(1.2e-5)
    assert seen and all(lr == pytest.approx(1.2e-5) for lr in seen)


def test_a_branch_resumes_after_an_interruption_to_the_same_result(parent, tmp_path, monkeypatch):
    save_dir, scope, results = parent
    if scope == "global":
        pytest.skip("one scope is enough")
    import shutil
    shutil.copytree(save_dir, tmp_path / "copy")
    _, reference = branch(save_dir, scope, "reinit", branch_levels=(1, 2))
    calls = {"n": 0}
    real = cycles.train_epoch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:      # inside the second level's first epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cycles, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        branch(tmp_path / "copy", scope, "reinit", branch_levels=(1, 2))
    monkeypatch.setattr(cycles, "train_epoch", real)
    [path] = run_job(dataclasses.replace(job(tmp_path / "copy", prune_scope=scope, branch="reinit",
                                             branch_levels=(1, 2)), resume=True))
    resumed = load(path)
    assert resumed["cycles"][1]["test_accuracy_at_best"] == reference["cycles"][1]["test_accuracy_at_best"]
    for name, value in reference["final_state_dict"].items():
        assert torch.equal(resumed["final_state_dict"][name], value)


def test_branches_are_found_and_selected_with_where(parent):
    save_dir, scope, _ = parent
    branch(save_dir, scope, "reinit")
    runs = find_runs(save_dir, "fc1", "digits")
    chosen = select_runs(runs, RunFilter(where=(where_argument("branch=reinit"),)))
    assert chosen and all(r.config.branch == "reinit" for r in chosen)
    tickets = select_runs(runs, RunFilter(where=(where_argument("branch=none"),)))
    assert tickets and all(not r.config.branch for r in tickets)
    assert len({r.config.configuration_id for r in runs}) == len(runs)


def test_a_branch_without_its_parent_or_with_unknown_settings_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist: train that run first"):
        run_job(job(tmp_path, branch="reinit"))
    with pytest.raises(UserError, match="add --branch NAME"):
        run_job(job(tmp_path, branch_args="lr=0.1"))


def test_unknown_branch_setting_is_refused(parent):
    save_dir, scope, _ = parent
    with pytest.raises(UserError, match="has no setting 'speed'"):
        branch(save_dir, scope, "reinit", branch_args="speed=2")
    assert not results_path(save_dir, RunConfig(**PARENT, prune_scope=scope, branch="reinit",
                                                branch_args="speed=2")).exists()


def test_the_command_line_and_the_api_give_the_same_control_masks(parent):
    import subprocess
    import sys

    from tests.conftest import ROOT

    save_dir, scope, results = parent
    if scope == "layer":
        pytest.skip("one scope is enough")
    flags = ["--arch_type", "fc1", "--dataset", "digits", "--prune_percent", "50", "--prune_iterations", "3",
             "--end_iter", "2", "--batch_size", "64", "--lr", "0.0012", "--prune_scope", scope, "--seeds", "0",
             "--device", "cpu", "--no_progress", "--save_dir", str(save_dir)]
    done = subprocess.run([sys.executable, "lottery_ticket.py", *flags, "--branch", "random_mask",
                           "--branch_levels", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = RunConfig(**PARENT, prune_scope=scope, branch="random_mask", branch_levels=(1,))
    path = results_path(save_dir, config)
    cli = load(path)["masks"][0]
    api = control_start(parent_ticket(results, path), "random_mask", 1).masks
    assert all(torch.equal(cli[name], api[name]) for name in api)


def test_branches_are_drawn_in_the_lottery_ticket_and_instability_figures(parent):
    import matplotlib
    matplotlib.use("Agg")

    from data.report.performance_report import instability_figure, lottery_ticket_figure
    from data.results import group_by, load_training_runs

    save_dir, scope, _ = parent
    if scope == "global":
        pytest.skip("one scope is enough")
    branch(save_dir, scope, "reinit")
    branch(save_dir, scope, "lmc", branch_levels=(1,))
    runs = load_training_runs(save_dir, "fc1", "digits", RunFilter(where=(where_argument("lr_schedule=none"),)))
    groups = group_by(runs, lambda r: r.config_name)
    fig = lottery_ticket_figure(groups, "best_epoch", "epoch of best", "early stopping")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("reinit branch" in label for label in labels)
    fig = instability_figure(runs, "lmc")
    assert fig is not None and len(fig.axes[0].lines) >= 1
