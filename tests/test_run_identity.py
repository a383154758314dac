"""A run is identified by everything that defines it: names never collide, odd values read back
exactly, runs of other settings are told apart or refused (never averaged), one process writes a
run at a time, concurrent replays keep every row, every cycle can be replayed, bad input is one
line and damages nothing, and files of the previous format are still read."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import inference_emission
import lottery_ticket
import lottery_ticket_emissions
import lottery_ticket_performance
import post_training_inference
import post_training_inference_emissions
from archs.choices import REGISTERED
from tests.conftest import ROOT
from data.datasets import load_dataset, make_splits, make_test_split
from data.report.plot_cli import PlotOptions, select_training_runs
from data.names import MAX_READABLE_SUFFIX, parse_config_name, parse_stem
from data.paths import inference_runs_csv_path, lock_path, results_path
from data.runs import RunConfig
from data.selection import (RunFilter, config_name_argument, find_runs, flags_for_config, read_run_settings, select_runs,
                            where_argument)
from data.settings import format_value
from data.store import load_checkpoint
from utils import run_cli

ARCH, DATASET = "fc1", "mnist"
# Subprocesses share two cores with the test process: one thread each keeps them from fighting.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- helpers
def run_script(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """A script as its command line runs it (run_cli: UserError is one line and exit 1)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main([str(a) for a in argv]))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train(mnist_dir: Path, save_dir: Path, *flags) -> None:
    argv = ["--data_dir", mnist_dir, "--save_dir", save_dir, "--no_progress", *flags]
    assert lottery_ticket.main([str(a) for a in argv]) == 0


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory, mnist_dir) -> Path:
    """pp90x2 in one save_dir with two settings: seeds 0-1 at 3 epochs per cycle (batch 512) and
    seed 2 at 1 epoch per cycle, batch 64."""
    save_dir = tmp_path_factory.mktemp("mixed") / "saves"
    train(mnist_dir, save_dir, "--seeds", 0, 1, "--end_iter", 3)
    train(mnist_dir, save_dir, "--seeds", 2, "--end_iter", 1, "--batch_size", 64)
    return save_dir


@pytest.fixture(scope="module")
def pp68x3_study(tmp_path_factory, mnist_dir) -> Path:
    """pp68x3 (3 cycles), seed 0, replayed at every cycle with its best weights."""
    save_dir = tmp_path_factory.mktemp("pp68x3") / "saves"
    train(mnist_dir, save_dir, "--prune_percent", 68, "--prune_iterations", 3, "--end_iter", 2,
          "--batch_size", 64, "--lr", "1e-3", "--seeds", 0)
    for cycle in (0, 1, 2):
        assert post_training_inference.main(
            ["--save_dir", str(save_dir), "--cycle", str(cycle), "--state", "best", "--mode", "dense",
             "--passes", "1", "--country_iso_code", "FRA", "--no_progress"]) == 0
    return save_dir


@pytest.fixture(scope="module")
def co2_study(tmp_path_factory, mnist_dir) -> Path:
    """CO2-tracking runs of pp90x2 and the dense baseline (what the break-even analysis reads)."""
    save_dir = tmp_path_factory.mktemp("co2") / "saves"
    for flags in (["--prune_percent", 90, "--prune_iterations", 2], ["--train_type", "regular"]):
        train(mnist_dir, save_dir, *flags, "--end_iter", 1, "--batch_size", 64, "--seeds", 0,
              "--co2_tracking_mode", "--country_iso_code", "FRA")
    return save_dir


def seed_file(study: Path, seed: int) -> Path:
    return next(p for p in (study / ARCH / DATASET).glob(f"pp90x2_seed{seed}_co2False_*.pt")
                if not p.name.endswith(".checkpoint.pt"))


# --------------------------------------------------------------------------- collisions impossible
def alternative_value(f: dataclasses.Field):
    """A valid value other than the default for setting ``f`` (a new kind of setting must be
    given one here, so that it is covered too)."""
    default = f.default
    samples = {"rewind_to": "2ep", "warmup": "1ep", "prune_ignore": ("1",), "output_prune_percent": 45.0,
               "target_sparsity": 90.0, "ticket_source": "pp90x2_seed0_co2False_mnist@0123456789ab:c1",
               "init_from": "pretrained@0123456789ab", "branch": "reinit", "branch_args": "lr=0.01",
               "branch_levels": (1,), "prune_structure": "2:4"}
    if f.name in samples:
        return samples[f.name]
    if f.name in REGISTERED:   # arch_type, dataset, optimizer, ...: another registered name
        return next(name for name in REGISTERED[f.name]() if name != default)
    if f.metadata["choices"]:
        return next(choice for choice in f.metadata["choices"] if choice != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.5
    if isinstance(default, tuple) and default:
        return default[:-1]
    raise AssertionError(f"no alternative value for setting {f.name} ({default!r}): add one to "
                         "alternative_value")


@pytest.mark.parametrize("setting", dataclasses.fields(RunConfig), ids=lambda f: f.name)
def test_every_setting_changes_the_runs_name_and_reads_back(setting, tmp_path):
    default = RunConfig()
    value = alternative_value(setting)
    config = RunConfig(**{setting.name: value})
    assert getattr(config, setting.name) == value and value != setting.default
    assert results_path(tmp_path, config) != results_path(tmp_path, default)
    if setting.name != "arch_type":   # the network names the run's folder, not its file
        assert config.stem != default.stem
    # The identity is every setting: it reads back to the same run, from memory and from a file.
    assert set(config.identity()) == {f.name for f in dataclasses.fields(RunConfig)}
    assert RunConfig.from_dict(config.identity()) == config
    saved = tmp_path / "results.pt"
    torch.save({"format_version": 2, "args": config.identity()}, saved)
    assert read_run_settings(saved) == config
    # Every setting can select runs with --where, and its value selects this run, not the default.
    key, wanted = where_argument(f"{setting.name}={format_value(value)}")
    assert key == setting.name
    run_filter = RunFilter(where=((key, wanted),))
    assert run_filter.matches(config) and not run_filter.matches(default)


@pytest.mark.parametrize("setting", [f for f in dataclasses.fields(RunConfig) if f.name != "seed"],
                         ids=lambda f: f.name)
def test_the_retrain_command_makes_the_same_run(setting):
    """The command messages print to remake a run (flags_for_config) makes exactly that run."""
    from data.runs import config_from_args

    config = RunConfig(**{setting.name: alternative_value(setting)}, seed=3)
    args = lottery_ticket.build_parser().parse_args(flags_for_config(config) + ["--seeds", "3"])
    assert config_from_args(args, seed=args.seeds[0]) == config


def test_default_settings_keep_the_original_name():
    assert RunConfig().stem == "pp90x2_seed0_co2False_mnist"
    assert RunConfig(train_type="regular", seed=3).stem == "pp0x1_seed3_co2False_mnist"
    assert RunConfig(prune_percent=68, prune_iterations=3, co2_tracking_mode=True).stem == \
        "pp68x3_seed0_co2True_mnist"
    assert RunConfig(lr=0.0012, batch_size=64).stem == "pp90x2_seed0_co2False_mnist_lr0.0012_bs64"


def test_many_differing_settings_get_a_digest_and_a_short_name():
    head = "pp90x2_seed0_co2False_mnist"
    long = RunConfig(lr=0.00012345678901234, decay=0.0000987654321012, batch_size=12345,
                     end_iter=4321, valid_freq=777)
    assert long.stem.startswith(head + "_lr0.00012345678901234")
    assert re.search(r"_h[0-9a-f]{8}$", long.stem), long.stem
    assert len(long.stem) <= len(head) + MAX_READABLE_SUFFIX
    # A difference only in the digested part (valid_freq is cut from the readable part) still
    # gives another name, and so does any change of seed.
    other = dataclasses.replace(long, valid_freq=778)
    assert "vf" not in long.stem and "vf" not in other.stem
    assert other.stem != long.stem
    assert other.stem.rsplit("_h", 1)[0] == long.stem.rsplit("_h", 1)[0]
    assert dataclasses.replace(long, seed=1).stem != long.stem


def test_no_two_of_many_configurations_share_a_name():
    import itertools

    configs = [RunConfig(lr=lr, decay=decay, batch_size=batch, end_iter=epochs, valid_freq=freq)
               for lr, decay, batch, epochs, freq in itertools.product(
                   (1e-4, 1.2e-3, 0.1 + 0.2, 1 / 3), (0.0, 1e-5, 1.0000000000000002e-5),
                   (64, 512, 123456789), (1, 32, 987654), (1, 2))]
    stems = [c.stem for c in configs]
    assert len(set(stems)) == len(configs) == 4 * 3 * 3 * 3 * 2
    assert len({c.configuration_id for c in configs}) == len(configs)


# --------------------------------------------------------------------------- odd percents
ODD_PERCENTS = (1e-05, 0.30000000000000004, 68.5, 12.345678901234567)


def test_odd_percents_are_found_back_exactly(mixed_study, tmp_path):
    template = load_checkpoint(seed_file(mixed_study, 0))
    save_dir = tmp_path / "saves"
    for percent in ODD_PERCENTS:
        config = RunConfig.from_dict(template["args"] | {"prune_percent": percent})
        path = results_path(save_dir, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(template | {"args": config.identity()}, path)
    found = {run.config.prune_percent: run for run in find_runs(save_dir, ARCH, DATASET)}
    assert sorted(found) == sorted(ODD_PERCENTS)   # exactly, not approximately
    for percent, run in found.items():
        assert run.path.stem == run.config.stem
        assert parse_stem(run.path.stem)["prune_percent"] == percent
        assert parse_config_name(run.config.config_name) == (percent, 2)
        # --configs with the name as files write it selects that run and no other
        chosen = select_runs(find_runs(save_dir, ARCH, DATASET),
                             RunFilter(configs=(config_name_argument(run.config.config_name),)))
        assert [r.config.prune_percent for r in chosen] == [percent]


def test_a_run_trained_with_an_odd_percent_reads_back_exactly(mnist_dir, tmp_path):
    save_dir = tmp_path / "saves"
    train(mnist_dir, save_dir, "--prune_percent", "12.345678901234567", "--prune_iterations", 2,
          "--end_iter", 1, "--seeds", 0)
    (run,) = find_runs(save_dir, ARCH, DATASET)
    assert run.config.prune_percent == 12.345678901234567
    assert run.path.name == "pp12.345678901234567x2_seed0_co2False_mnist_ep1.pt"
    assert parse_stem(run.path.stem)["prune_percent"] == 12.345678901234567


# --------------------------------------------------------------------------- mixed settings
def test_mixed_settings_are_drawn_as_separate_labelled_lines(mixed_study, tmp_path, capsys):
    options = PlotOptions(save_dir=mixed_study, plots_dir=tmp_path)
    runs = select_training_runs(options, co2=False)
    labels = {run.label: sorted(r.config.seed for r in runs if r.label == run.label) for run in runs}
    assert labels == {"pp90x2, batch 512, 3 epochs per cycle": [0, 1],
                      "pp90x2, batch 64, 1 epochs per cycle": [2]}
    code, out, _ = run_script(lottery_ticket_performance,
                              ["--save_dir", mixed_study, "--plots_dir", tmp_path, "--format", "svg"], capsys)
    assert code == 0
    figure = tmp_path / ARCH / DATASET / "training_test_accuracy_vs_images.svg"
    assert str(figure) in out
    svg = figure.read_text()
    assert "batch 512, 3 epochs per cycle" in svg and "batch 64, 1 epochs per cycle" in svg
    lt_figure = (tmp_path / ARCH / DATASET / "lottery_ticket_test_accuracy_vs_weights_left.svg").read_text()
    assert "batch 512, 3 epochs per cycle" in lt_figure and "batch 64, 1 epochs per cycle" in lt_figure


def test_where_selects_one_setting(mixed_study, tmp_path, capsys):
    where = (where_argument("end_iter=3"),)
    chosen = select_runs(find_runs(mixed_study, ARCH, DATASET), RunFilter(where=where))
    assert sorted(run.seed for run in chosen) == [0, 1]
    assert {run.label for run in chosen} == {"pp90x2"}   # one configuration: nothing to tell apart
    runs = select_training_runs(PlotOptions(save_dir=mixed_study, run_filter=RunFilter(where=where)), co2=False)
    assert sorted(run.config.seed for run in runs) == [0, 1]
    code, out, _ = run_script(lottery_ticket_performance, ["--save_dir", mixed_study, "--plots_dir", tmp_path,
                                                           "--where", "end_epoch=3", "batch_size=512"], capsys)
    assert code == 0
    assert (tmp_path / ARCH / DATASET / "training_test_accuracy_vs_images.png").stat().st_size > 10_000
    code, _, err = run_script(lottery_ticket_performance, ["--save_dir", mixed_study, "--plots_dir", tmp_path,
                                                           "--where", "end_iter=2"], capsys)
    assert code == 1
    assert "--where end_iter=2" in one_line(err)


# --------------------------------------------------------------------------- the run lock
def wait_for_holder(lock: Path, process: subprocess.Popen, seconds: float = 120) -> dict:
    """The holder named in ``lock`` once ``process`` has taken it (the file is created a moment
    before the holder is written into it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return json.loads(lock.read_text())
        except (OSError, ValueError):
            pass
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before it took {lock}: "
                                 f"{process.stderr.read()}")
        assert time.monotonic() < deadline, f"{lock} was not taken in {seconds} s"
        time.sleep(0.1)


def test_a_second_process_on_a_run_being_trained_is_refused(mnist_dir, tmp_path):
    save_dir = tmp_path / "saves"
    slow = ["--data_dir", str(mnist_dir), "--save_dir", str(save_dir), "--no_progress", "--seeds", "0",
            "--end_iter", "100000", "--batch_size", "64"]
    lock = lock_path(save_dir, RunConfig(end_iter=100000, batch_size=64))
    first = subprocess.Popen([sys.executable, "lottery_ticket.py", *slow], cwd=ROOT, env=SUBPROCESS_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_holder(lock, first) == {"pid": first.pid, "host": socket.gethostname()}
        second = subprocess.run([sys.executable, "lottery_ticket.py", *slow], cwd=ROOT, env=SUBPROCESS_ENV,
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first process should still be training"
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert f"process {first.pid} on {socket.gethostname()}" in line and str(lock) in line
    assert not results_path(save_dir, RunConfig(end_iter=100000, batch_size=64)).exists()

    # The first process died holding the lock: the lock now names a dead PID of this host, and
    # is taken over by the next run.
    assert json.loads(lock.read_text())["pid"] == first.pid
    quick = RunConfig(end_iter=1, batch_size=512)
    quick_lock = lock_path(save_dir, quick)
    shutil.copy(lock, quick_lock)
    train(mnist_dir, save_dir, "--seeds", 0, "--end_iter", 1)
    assert results_path(save_dir, quick).is_file()
    assert not quick_lock.exists()


def test_a_lock_held_on_another_host_is_refused(mnist_dir, tmp_path, capsys):
    save_dir = tmp_path / "saves"
    config = RunConfig(end_iter=1)
    lock = lock_path(save_dir, config)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "another-host.example"}))
    code, _, err = run_script(lottery_ticket, ["--data_dir", mnist_dir, "--save_dir", save_dir,
                                               "--no_progress", "--seeds", 0, "--end_iter", 1], capsys)
    assert code == 1
    line = one_line(err)
    assert f"process {os.getpid()} on another-host.example" in line
    assert not results_path(save_dir, config).exists()
    assert json.loads(lock.read_text())["host"] == "another-host.example"


def hold_lock_once(path: str, barrier, holds) -> None:
    """One contender: waits for the others, tries the lock, holds it a moment when it gets it."""
    from utils import LockHeld, ProcessLock

    barrier.wait()
    try:
        lock = ProcessLock(path, "the race").acquire()
    except LockHeld:
        return
    start = time.monotonic()
    time.sleep(0.15)
    holds.put((start, time.monotonic()))
    lock.release()


def test_processes_racing_for_a_lock_never_hold_it_together(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")   # cheap: the children need nothing but utils
    rounds, contenders, intervals = 15, 4, []
    for round_number in range(rounds):
        barrier, holds = context.Barrier(contenders), context.Queue()
        processes = [context.Process(target=hold_lock_once,
                                     args=(str(tmp_path / f"race{round_number}.lock"), barrier, holds))
                     for _ in range(contenders)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0] * contenders
        held = sorted(holds.get(timeout=5) for _ in range(holds.qsize()))
        assert held, f"round {round_number}: no contender got the lock"
        assert all(later[0] >= earlier[1] for earlier, later in zip(held, held[1:])), \
            f"round {round_number}: {len(held)} processes held the lock at once"
        intervals += held
        assert not (tmp_path / f"race{round_number}.lock").exists()
    assert len(intervals) >= rounds


# --------------------------------------------------------------------------- concurrent replays
def test_two_concurrent_replays_keep_every_row(mixed_study, tmp_path):
    """Started together with --wait, the second replay waits for the first (one measures at a
    time: tests/test_new_user.py checks the refusal without it) and both keep their rows."""
    save_dir = tmp_path / "saves"
    shutil.copytree(mixed_study, save_dir)
    common = [sys.executable, "post_training_inference.py", "--save_dir", str(save_dir), "--passes", "1",
              "--country_iso_code", "FRA", "--no_progress", "--wait"]
    processes = [subprocess.Popen(common + ["--mode", mode], cwd=ROOT, env=SUBPROCESS_ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for mode in ("dense", "sparse")]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    rows = read_table(inference_runs_csv_path(save_dir, ARCH, DATASET))
    replayed = sorted((row["mode"], row["run"]) for row in rows)
    stems = sorted(seed_file(save_dir, seed).stem for seed in (0, 1, 2))
    assert replayed == sorted((mode, stem) for mode in ("dense", "sparse") for stem in stems)
    summary = read_table(save_dir / ARCH / DATASET / "inference" / "inference_summary.csv")
    assert sorted(int(row["seeds"]) for row in summary) == [1, 1, 2, 2]


# --------------------------------------------------------------------------- every cycle replayable
def test_every_cycle_of_pp68x3_is_replayed_with_the_accuracy_logged_for_it(pp68x3_study, mnist_dir):
    (run,) = find_runs(pp68x3_study, ARCH, DATASET)
    results = load_checkpoint(run.path)
    rows = {int(row["cycle"]): row for row in read_table(inference_runs_csv_path(pp68x3_study, ARCH, DATASET))}
    assert sorted(rows) == [0, 1, 2]
    # The replay's test split is the one training evaluated on.
    dataset = load_dataset(DATASET, mnist_dir)
    test = make_test_split(dataset, 0)
    assert torch.equal(test.images, make_splits(dataset, 0).test.images)
    assert len(test) == results["split_sizes"]["test"]
    accuracies = set()
    for cycle, expected_left in ((0, 100.0), (1, 32.0), (2, 10.24)):
        row = rows[cycle]
        assert row["state"] == "best" and row["run"] == run.path.stem
        assert int(row["images_per_pass"]) == len(test)
        logged = results["cycles"][cycle]
        assert logged["cycle"] == cycle
        assert float(row["test_accuracy"]) == pytest.approx(logged["test_accuracy_at_best"], abs=1e-9)
        assert float(row["percent_remaining"]) == pytest.approx(expected_left, abs=0.05)
        assert float(row["percent_remaining"]) == pytest.approx(logged["percent_remaining"], abs=1e-9)
        accuracies.add(logged["test_accuracy_at_best"])
        ticket = load_checkpoint(run.path.parent / "tickets" / run.path.stem / f"cycle{cycle}.pt")
        assert ticket["cycle"] == cycle and RunConfig.from_dict(ticket["args"]) == run.config
        alive = sum(int(m.sum()) for m in ticket["masks"].values())
        total = sum(m.numel() for m in ticket["masks"].values())
        assert 100 * alive / total == pytest.approx(logged["percent_remaining"], abs=1e-9)
        for name, mask in ticket["masks"].items():
            assert torch.equal(mask, results["masks"][cycle][name])
            assert torch.all(ticket["best_state_dict"][name][mask == 0] == 0)
    assert len(accuracies) > 1, "every cycle logged the same accuracy: the test cannot tell cycles apart"


def test_a_cycle_the_run_does_not_have_is_one_line(pp68x3_study, capsys):
    code, _, err = run_script(post_training_inference, ["--save_dir", pp68x3_study, "--cycle", 3,
                                                        "--passes", 1, "--country_iso_code", "FRA"], capsys)
    assert code == 1
    assert "cycle 3" in one_line(err)


# --------------------------------------------------------------------------- refused before any file
def test_a_schedule_that_empties_a_layer_is_refused_before_any_file(mnist_dir, tmp_path, capsys):
    save_dir = tmp_path / "saves"
    code, out, err = run_script(lottery_ticket, ["--data_dir", mnist_dir, "--save_dir", save_dir,
                                                 "--prune_percent", "99.99", "--prune_iterations", 3,
                                                 "--seeds", 0, "--no_progress"], capsys)
    assert code == 1
    line = one_line(err)
    # fc1's output layer (1000 weights) keeps 1000 - round(999.9) = 0 weights in cycle 1; the
    # 30000-weight layer would still keep 3.
    assert "layer 5.weight" in line and "in cycle 1" in line
    assert not save_dir.exists()


@pytest.mark.parametrize("flags, code, message", [
    (["--seeds", "0", "0"], 1, "--seeds lists 0 more than once"),
    (["--seeds", "-1"], 2, "-1 is outside 0..4294967295"),
    (["--seeds", "4294967296"], 2, "4294967296 is outside 0..4294967295"),
    (["--train_type", "lt", "--prune_iterations", "1"], 1, "--train_type regular"),
])
def test_bad_training_input_is_one_line_and_writes_nothing(flags, code, message, mnist_dir, tmp_path, capsys):
    save_dir = tmp_path / "saves"
    got, out, err = run_script(lottery_ticket, ["--data_dir", mnist_dir, "--save_dir", save_dir,
                                                "--no_progress", *flags], capsys)
    assert got == code
    assert message in one_line(err)
    assert not save_dir.exists()


def test_an_infinite_horizon_is_a_flag_error(capsys):
    code, _, err = run_script(inference_emission, ["--max_inferences", "inf"], capsys)
    assert code == 2
    assert "not a finite number" in one_line(err)


@pytest.mark.parametrize("module", [lottery_ticket_performance, lottery_ticket_emissions, inference_emission,
                                    post_training_inference, post_training_inference_emissions],
                         ids=lambda m: m.__name__)
@pytest.mark.parametrize("where, message", [("nosuch=1", "'nosuch' is not a setting"),
                                            ("lr=abc", "'abc' is not a number")])
def test_a_bad_where_is_a_flag_error(module, where, message, tmp_path, capsys):
    code, _, err = run_script(module, ["--save_dir", tmp_path, "--where", where], capsys)
    assert code == 2
    assert message in one_line(err)
    assert not any(tmp_path.iterdir())


UNREADABLE_TABLES = {"binary": b"arch,dataset\x00\x00\x01fc1,mnist\n\x00",
                     "invalid_utf8": b"arch,dataset,config\nfc1,mnist,pp90x2\xff\xfe\n"}


@pytest.mark.parametrize("content", list(UNREADABLE_TABLES.values()), ids=list(UNREADABLE_TABLES))
@pytest.mark.parametrize("module", [post_training_inference, post_training_inference_emissions,
                                    inference_emission], ids=lambda m: m.__name__)
def test_an_unreadable_inference_table_is_one_line_and_left_as_it_is(module, content, co2_study, tmp_path,
                                                                     capsys):
    save_dir = tmp_path / "saves"
    shutil.copytree(co2_study, save_dir)
    table = inference_runs_csv_path(save_dir, ARCH, DATASET)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_bytes(content)
    argv = ["--save_dir", save_dir, "--country_iso_code", "FRA", "--passes", 1, "--no_progress"] \
        if module is post_training_inference else ["--save_dir", save_dir, "--plots_dir", tmp_path / "plots"]
    code, _, err = run_script(module, argv, capsys)
    assert code == 1
    assert str(table) in one_line(err)
    assert table.read_bytes() == content
    assert not (tmp_path / "plots").exists()
    assert not (table.parent / "inference_summary.csv").exists()
    # refused before any replay: no measurement was spent on rows that could not be kept
    assert not list(table.parent.glob("cpu_inf_*.csv"))


# --------------------------------------------------------------------------- old files
OLD_SETTINGS = ("arch_type", "dataset", "prune_percent", "prune_iterations", "lr", "decay", "batch_size",
                "end_iter", "print_freq", "valid_freq", "train_type", "co2_tracking_mode", "seed")


@pytest.mark.parametrize("version", [None, 1], ids=["no_format_version", "format_version_1"])
def test_results_of_format_1_are_found_and_plotted(version, mixed_study, tmp_path, capsys):
    save_dir = tmp_path / "saves"
    folder = save_dir / ARCH / DATASET
    folder.mkdir(parents=True)
    written = {}
    for seed in (0, 2):
        saved = load_checkpoint(seed_file(mixed_study, seed))
        saved.pop("format_version")
        if version is not None:
            saved["format_version"] = version
        saved["args"] = {key: value for key, value in saved["args"].items() if key in OLD_SETTINGS}
        saved["args"]["print_freq"] = 1   # a flag then, not a setting now
        # Names then held no settings beyond the head.
        path = folder / f"pp90x2_seed{seed}_co2False_mnist.pt"
        torch.save(saved, path)
        written[path] = path.read_bytes()
    runs = find_runs(save_dir, ARCH, DATASET)
    assert [(run.path.name, run.config) for run in runs] == [
        ("pp90x2_seed0_co2False_mnist.pt", RunConfig(end_iter=3, seed=0)),
        ("pp90x2_seed2_co2False_mnist.pt", RunConfig(end_iter=1, batch_size=64, seed=2))]
    code, out, _ = run_script(lottery_ticket_performance, ["--save_dir", save_dir, "--plots_dir", tmp_path / "plots",
                                                           "--where", "end_iter=3"], capsys)
    assert code == 0
    figure = tmp_path / "plots" / ARCH / DATASET / "lottery_ticket_test_accuracy_vs_weights_left.png"
    assert str(figure) in out and figure.stat().st_size > 10_000
    labels = {run.label for run in select_training_runs(PlotOptions(save_dir=save_dir), co2=False)}
    assert labels == {"pp90x2, batch 512, 3 epochs per cycle", "pp90x2, batch 64, 1 epochs per cycle"}
    assert {path: path.read_bytes() for path in written} == written   # read, never rewritten


def test_a_new_run_never_replaces_an_old_file_of_other_settings_at_its_path(mixed_study, mnist_dir,
                                                                           tmp_path, capsys):
    """Format-1 names held only the head, so a dense baseline at lr 0.001 was saved as
    pp0x1_seed0_co2False_mnist.pt: the path of today's default dense baseline."""
    save_dir = tmp_path / "saves"
    old = save_dir / ARCH / DATASET / "pp0x1_seed0_co2False_mnist.pt"
    old.parent.mkdir(parents=True)
    saved = load_checkpoint(seed_file(mixed_study, 2))
    saved.pop("format_version")
    saved["args"] = {key: value for key, value in saved["args"].items() if key in OLD_SETTINGS} | \
        {"train_type": "regular", "lr": 1e-3}
    torch.save(saved, old)
    before = files_under(save_dir)
    code, _, err = run_script(lottery_ticket, ["--data_dir", mnist_dir, "--save_dir", save_dir,
                                               "--train_type", "regular", "--seeds", 0, "--no_progress"], capsys)
    assert code == 1
    assert f"{old} holds a run with other settings" in one_line(err)
    assert files_under(save_dir) == before


def test_a_setting_added_later_leaves_the_names_already_made_unchanged():
    # A long name ends in a hash of every setting: a new setting at its default must not move it,
    # or resuming and finding branches' parents miss the runs made before it existed. The
    # expected name is what the toolkit gave this run before --prune_structure existed.
    config = RunConfig(arch_type="fc1", dataset="digits", lr=0.00123456789, decay=1e-5,
                       batch_size=37, end_iter=3, valid_freq=2, output_prune_percent=12.5,
                       prune_ignore=("fc1.weight", "fc2.weight"), warmup="3ep", optimizer="sgd",
                       momentum=0.8)
    assert config.stem == "pp90x2_seed0_co2False_digits_lr0.00123456789_bs37_ep3_vf2_opp12.5_he54b3179"
    structured = dataclasses.replace(config, prune_structure="2:4")
    assert structured.digest() != config.digest()
    # A checkpoint's settings saved before the setting existed read back as this very run.
    saved = {k: v for k, v in config.identity().items() if k != "prune_structure"}
    assert RunConfig.from_dict(saved) == config and RunConfig.from_dict(saved) != structured
