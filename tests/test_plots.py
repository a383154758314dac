"""The four plotting scripts on real training runs and a real (stand-in) inference replay, the
pieces they are built from, and what they say when inputs are missing or broken."""
from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inference_emission
import lottery_ticket
import lottery_ticket_emissions
import lottery_ticket_performance
import post_training_inference_emissions
from data.report.inference_tables import RUN_COLUMNS as INFERENCE_RUNS_COLUMNS
from archs.inference import InferenceJob, run_inference
from data.runs import LOG_KEYS
from tests.conftest import ROOT
from data.energy.emissions import EMISSION_FIELDS, TrackerSettings
from data.report.labels import config_colour, config_sort_key, describe_config
from data.report.plotting import percent_tick_label, sparse_log_ticks
from data.results import band_over_seeds, read_codecarbon_csv
from data.names import parse_config_name
from data.paths import inference_runs_csv_path, results_path
from data.runs import RunConfig
from data.store import load_checkpoint
from utils import UserError, run_cli

ARCH, DATASET = "fc1", "mnist"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def study(tmp_path_factory, mnist_dir) -> Path:
    """A small real study: pp90x2 and the dense baseline, seeds 0 and 1, with and without CO2
    tracking, a dense run at another learning rate, and an inference replay on the CPU."""
    save_dir = tmp_path_factory.mktemp("study") / "saves"
    common = ["--data_dir", str(mnist_dir), "--save_dir", str(save_dir), "--end_iter", "2",
              "--seeds", "0", "1", "--batch_size", "128", "--no_progress"]
    co2 = ["--co2_tracking_mode", "--country_iso_code", "FRA"]
    for flags in (["--prune_percent", "90", "--prune_iterations", "2"], ["--train_type", "regular"],
                  ["--train_type", "regular", "--lr", "1e-3", "--decay", "0"]):
        assert lottery_ticket.main(common + flags) == 0
    for flags in (["--prune_percent", "90", "--prune_iterations", "2"], ["--train_type", "regular"]):
        assert lottery_ticket.main(common + flags + co2) == 0
    run_inference(InferenceJob(arch=ARCH, dataset=DATASET, save_dir=save_dir, mode="both", passes=3,
                               tracker=TrackerSettings(country_iso_code="FRA"), show_progress=False))
    return save_dir


def run_script(module, argv: list[str]) -> int:
    """A script as its command line runs it: UserError becomes one line and exit code 1."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: module.main(argv))
    return exit_info.value.code


def plot_args(save_dir: Path, plots_dir: Path, *extra: str) -> list[str]:
    return ["--arch_type", ARCH, "--dataset", DATASET, "--save_dir", str(save_dir),
            "--plots_dir", str(plots_dir), *extra]


def assert_readable_png(path: Path) -> None:
    import matplotlib.image

    assert path.is_file(), path
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 600 <= height <= 1500 and 900 <= width <= 2000, (path, image.shape)
    assert float(np.std(image[..., :3])) > 0.05, f"{path} looks blank"


def written_files(output: str) -> list[Path]:
    return [Path(line.strip()) for line in output.splitlines() if line.startswith("  ")]


# --------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("name, words", [
    ("pp90x2", "90% pruned once, 10% of weights left"),
    ("pp68x3", "68% pruned twice, 10.2% of weights left"),
    ("pp0x1", "dense baseline"),
    ("pp20x5", "20% pruned 4 times, 41% of weights left"),
    ("pp50x1", "dense baseline"),
    ("something", "something"),
])
def test_configurations_are_described_in_words(name, words):
    assert describe_config(name) == words


def test_config_name_round_trip():
    assert parse_config_name("pp68x3") == (68.0, 3)
    assert parse_config_name("pp12.5x4") == (12.5, 4)
    assert parse_config_name("pp68") is None


def test_a_configuration_keeps_its_colour_whatever_else_is_drawn():
    # Figures are made by separate processes: a colour derived from Python's hash() would
    # change with each process's hash seed, so two seeds are tried besides this process's.
    here = config_colour("pp42x3")
    assert here == "#d55e00"   # crc32("pp42x3") picks the second of OTHER_COLOURS
    for hash_seed in ("1", "2"):
        other = subprocess.run([sys.executable, "-c", "from data.report.labels import config_colour; "
                                "print(config_colour('pp42x3'))"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == here
    study = {config_colour(name) for name in ("pp0x1", "pp90x2", "pp68x3")}
    assert len(study) == 3


def test_legends_list_the_densest_first():
    assert sorted(["pp90x2", "pp68x3", "pp0x1"], key=config_sort_key) == ["pp0x1", "pp68x3", "pp90x2"]


def test_band_averages_the_steps_every_seed_logged():
    band = band_over_seeds([{1: 1.0, 2: 3.0}, {1: 3.0, 2: 5.0, 3: 9.0}],
                           [{1: 10.0, 2: 20.0}, {1: 12.0, 2: 24.0, 3: 30.0}])
    assert band.x.tolist() == [11.0, 22.0]
    assert band.mean.tolist() == [2.0, 4.0]
    assert band.std.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])
    assert band.n == 2
    single = band_over_seeds([{5: 1.0}])
    assert single.x.tolist() == [5.0] and math.isnan(single.std[0])


def test_log_ticks_skip_values_too_close_to_read():
    assert sparse_log_ticks([100, 32, 10.24, 10, 100]) == [100, 32, 10.24]
    assert [percent_tick_label(v) for v in (100, 10.24, 3.2768)] == ["100", "10", "3.3"]


def test_codecarbon_csv_keeps_the_last_run_and_the_passes(tmp_path):
    header = "timestamp,run_id," + ",".join(EMISSION_FIELDS)
    rows = [("old", 9.0), ("new", 1.0), ("new", 2.0), ("new", 2.5)]
    text = "\n".join([header] + [f"t,{run},{value}" + f",{value}" * (len(EMISSION_FIELDS) - 1)
                                 for run, value in rows])
    path = tmp_path / "x.csv"
    path.write_text(text + "\n")
    records = read_codecarbon_csv(path, max_rows=2)
    assert sorted(records) == [1, 2]
    assert records[1]["duration"] == 1.0 and records[2]["emissions"] == 2.0
    with pytest.raises(ValueError, match="lacks CodeCarbon's columns"):
        (tmp_path / "y.csv").write_text("a,b\n1,2\n")
        read_codecarbon_csv(tmp_path / "y.csv")


# --------------------------------------------------------------------------- the four scripts
def test_performance_figures(study, tmp_path, capsys):
    assert lottery_ticket_performance.main(plot_args(study, tmp_path / "plots")) == 0
    written = written_files(capsys.readouterr().out)
    folder = tmp_path / "plots" / ARCH / DATASET
    names = {p.name for p in written}
    for metric in ("weights_left", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "test_loss", "test_accuracy"):
        assert {f"training_{metric}_vs_images.png", f"training_{metric}_vs_time.png"} <= names
    assert {"lottery_ticket_test_accuracy_vs_weights_left.png",
            "lottery_ticket_best_epoch_vs_weights_left.png"} <= names
    assert len(written) == 16
    for path in written:
        assert path.parent == folder
        assert_readable_png(path)
    assert not list(folder.glob("*.tmp"))


def test_hyperparameter_figures_group_dense_runs_by_learning_rate(study, tmp_path, capsys):
    args = plot_args(study, tmp_path, "--perf_type", "hyperparameter", "--format", "svg")
    assert lottery_ticket_performance.main(args) == 0
    names = {p.name for p in written_files(capsys.readouterr().out)}
    assert "hyperparameter_test_accuracy_grid.svg" in names
    assert "hyperparameter_val_loss_vs_time.svg" in names
    svg = (tmp_path / ARCH / DATASET / "hyperparameter_test_accuracy_vs_images.svg").read_text()
    assert "lr 0.001, weight decay 0" in svg and "lr 0.0001, weight decay 1e-05" in svg


def test_training_emission_figures(study, tmp_path, capsys):
    assert lottery_ticket_emissions.main(plot_args(study, tmp_path)) == 0
    written = written_files(capsys.readouterr().out)
    names = {p.name for p in written}
    assert {"training_co2_emissions_vs_images.png", "training_co2_emissions_vs_time.png",
            "training_total_energy_vs_images.png", "training_cpu_power_vs_time.png",
            "training_duration_vs_images.png"} <= names
    assert "training_duration_vs_time.png" not in names
    for path in written:
        assert_readable_png(path)


def test_inference_emission_figures(study, tmp_path, capsys):
    assert post_training_inference_emissions.main(plot_args(study, tmp_path, "--format", "svg")) == 0
    written = written_files(capsys.readouterr().out)
    names = {p.name for p in written}
    assert {"inference_cpu_co2_emissions_vs_inferences.svg",
            "inference_cpu_total_energy_vs_time.svg"} <= names
    svg = (tmp_path / ARCH / DATASET / "inference_cpu_co2_emissions_vs_inferences.svg").read_text()
    import re

    texts = " ".join(re.findall(r"<!-- (.*?) -->", svg, re.S))   # a wrapped label: one comment per line
    for label in ("dense baseline, lr 0.0001, weight decay 1e-05, dense kernels", "10% of weights left, sparse kernels",
                  "10% of weights left, dense kernels"):
        assert label in texts


def test_break_even_from_the_real_study(study, tmp_path, capsys):
    assert inference_emission.main(plot_args(study, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "pp90x2" in out and "sparse" in out
    folder = tmp_path / ARCH / DATASET
    assert_readable_png(folder / "break_even_total_co2_vs_inferences_cpu.png")
    rows = list(csv.DictReader(open(folder / "break_even.csv")))
    assert [r["config"] for r in rows] == ["pp0x1, lr 0.0001, weight decay 1e-05", "pp90x2"]  # a grid of dense runs is beside the study
    assert [r["mode"] for r in rows] == ["dense", "sparse"]   # best available for the ticket

    # The numbers are the inputs' own: final training emissions and CO2 per pass / images.
    for row in rows:
        prune_percent, prune_iterations = parse_config_name(row["config"])
        training = [load_checkpoint(results_path(study, RunConfig(
            prune_percent=prune_percent, prune_iterations=prune_iterations, seed=seed,
            train_type="regular" if prune_iterations == 1 else "lt", end_iter=2, batch_size=128,
            co2_tracking_mode=True)))["co2"] for seed in (0, 1)]
        final = [log[max(log)] for log in training]
        assert float(row["training_co2_kg_mean"]) == pytest.approx(np.mean(final))
        replays = [r for r in csv.DictReader(open(inference_runs_csv_path(study, ARCH, DATASET)))
                   if r["configuration"] == RunConfig(
                       prune_percent=prune_percent, prune_iterations=prune_iterations, end_iter=2,
                       train_type="regular" if prune_iterations == 1 else "lt",
                       batch_size=128).configuration_id and r["mode"] == row["mode"]]
        per_inference = [float(r["co2_kg_per_pass"]) / int(r["images_per_pass"]) for r in replays]
        assert float(row["co2_kg_per_inference_mean"]) == pytest.approx(np.mean(per_inference))
        assert int(row["inference_runs"]) == 2 and int(row["training_runs"]) == 2


def test_break_even_with_the_dense_kernel_mode(study, tmp_path, capsys):
    assert inference_emission.main(plot_args(study, tmp_path, "--mode", "dense")) == 0
    rows = list(csv.DictReader(open(tmp_path / ARCH / DATASET / "break_even.csv")))
    assert [r["mode"] for r in rows] == ["dense", "dense"]


# --------------------------------------------------------------------------- known answers
def write_training_result(save_dir: Path, prune_percent: float, prune_iterations: int, seed: int,
                          training_co2: float) -> None:
    """A results file holding only what the break-even analysis reads, with a chosen CO2."""
    config = RunConfig(prune_percent=prune_percent, prune_iterations=prune_iterations, seed=seed,
                       train_type="regular" if prune_iterations == 1 else "lt", co2_tracking_mode=True)
    record = {field: 0.0 for field in EMISSION_FIELDS} | {"emissions": training_co2, "duration": 600.0}
    saved = {key: {} for key in LOG_KEYS} | {
        "args": config.as_dict(), "cycles": [], "emissions": {100: record},
        "co2": {100: training_co2}}
    path = results_path(save_dir, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)


def write_inference_rows(save_dir: Path, rows: list[tuple[str, int, str, float]],
                         images_per_pass: int = 100) -> None:
    """inference_runs.csv rows (config, seed, mode, co2 kg per pass), nothing else needed."""
    path = inference_runs_csv_path(save_dir, ARCH, DATASET)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INFERENCE_RUNS_COLUMNS, restval="0")
        writer.writeheader()
        for name, seed, mode, co2 in rows:
            prune_percent, prune_iterations = parse_config_name(name)
            config = RunConfig(prune_percent=prune_percent, prune_iterations=prune_iterations,
                               train_type="regular" if prune_iterations == 1 else "lt", seed=seed,
                               co2_tracking_mode=True)
            writer.writerow({"arch": ARCH, "dataset": DATASET, "config": name,
                             "run": config.stem, "configuration": config.configuration_id,
                             "cycle": prune_iterations - 1,
                             "prune_percent": prune_percent, "prune_iterations": prune_iterations,
                             "seed": seed, "device": "cpu", "mode": mode, "passes": 10,
                             "state": "final", "threads": 2, "batch_size": 512,
                             "images_per_pass": images_per_pass, "co2_kg_per_pass": co2,
                             "seconds_per_pass": 10.0,
                             "energy_kwh_per_pass": co2 * 10,
                             "emissions_csv": f"cpu_inf_{name}_seed{seed}.csv"})


@pytest.fixture
def known_study(tmp_path) -> Path:
    """Dense: 2 kg to train, 4 g per inference; pp90x2: 5 kg and 1 g, so break-even at 1000;
    pp50x2: cheaper on both (immediately); pp80x2: dearer per inference (never); with two
    seeds each, far enough apart for the 95% intervals (t with about 1 df) to tell."""
    save_dir = tmp_path / "saves"
    training = {"pp0x1": (1.9, 2.1), "pp90x2": (4.8, 5.2), "pp50x2": (0.3, 0.32), "pp80x2": (4.0, 4.0)}
    per_pass = {"pp0x1": (0.38, 0.42), "pp90x2": (0.09, 0.11), "pp50x2": (0.05, 0.06),
                "pp80x2": (0.8, 0.82)}
    for name, values in training.items():
        prune_percent, prune_iterations = parse_config_name(name)
        for seed, value in enumerate(values):
            write_training_result(save_dir, prune_percent, prune_iterations, seed, value)
    rows = [(name, seed, "sparse" if name != "pp0x1" else "dense", value)
            for name, values in per_pass.items() for seed, value in enumerate(values)]
    write_inference_rows(save_dir, rows)
    return save_dir


def test_break_even_csv_holds_the_answers_worked_by_hand(known_study, tmp_path, capsys):
    assert inference_emission.main(plot_args(known_study, tmp_path / "plots")) == 0
    out = capsys.readouterr().out
    rows = {r["config"]: r for r in
            csv.DictReader(open(tmp_path / "plots" / ARCH / DATASET / "break_even.csv"))}
    assert list(rows) == ["pp0x1", "pp50x2", "pp80x2", "pp90x2"]
    ticket = rows["pp90x2"]
    assert ticket["description"] == "90% pruned once, 10% of weights left"
    assert float(ticket["training_co2_kg_mean"]) == pytest.approx(5.0)
    assert float(ticket["co2_kg_per_inference_mean"]) == pytest.approx(0.001)
    assert float(ticket["extra_training_co2_kg"]) == pytest.approx(3.0)
    assert float(ticket["co2_kg_saved_per_inference"]) == pytest.approx(0.003)
    assert ticket["outcome"] == "after"
    assert float(ticket["break_even_inferences"]) == pytest.approx(1000.0)

    # Fieller's 95% interval: here symmetric about 1000 on a log scale (see test_breakeven)
    low, high = float(ticket["break_even_low"]), float(ticket["break_even_high"])
    assert low < 1000 < high and low * high == pytest.approx(1000.0 ** 2)
    assert ticket["too_short"] == "False" and float(ticket["shortest_measurement_s"]) == 10.0

    # Welch t by hand: means 0.001 and 0.004, variances 2e-8 and 8e-8, two runs each
    t = (0.001 - 0.004) / math.sqrt(2e-8 / 2 + 8e-8 / 2)
    assert float(ticket["welch_t"]) == pytest.approx(t)
    assert float(ticket["welch_df"]) == pytest.approx((1e-8 + 4e-8) ** 2 / ((1e-8) ** 2 + (4e-8) ** 2))

    assert rows["pp50x2"]["outcome"] == "immediately"
    assert float(rows["pp50x2"]["break_even_inferences"]) == 0.0
    assert rows["pp80x2"]["outcome"] == "never"
    assert rows["pp80x2"]["break_even_inferences"] == "inf"
    assert rows["pp0x1"]["outcome"] == "baseline" and rows["pp0x1"]["welch_t"] == ""

    table = out.splitlines()
    assert any(line.split()[0] == "pp90x2" and f"after 1,000 (95% CI {low:,.0f} to {high:,.0f})" in line
               for line in table)
    assert any(line.split()[0] == "pp80x2" and "never" in line for line in table)
    assert any(line.split()[0] == "pp50x2" and "immediately" in line for line in table)
    assert any(line.split()[0] == "pp90x2" and f"{t:.3g}" in line for line in table)


def test_break_even_filters_configurations_and_names_a_missing_baseline(known_study, tmp_path, capsys):
    code = run_script(inference_emission, plot_args(known_study, tmp_path, "--configs", "pp90x2"))
    err = capsys.readouterr().err
    assert code == 1
    assert "baseline pp0x1" in err and "python3 lottery_ticket.py" in err
    assert "--train_type regular --co2_tracking_mode" in err


def test_break_even_on_a_device_without_replays(known_study, tmp_path, capsys):
    assert run_script(inference_emission, plot_args(known_study, tmp_path, "--device", "gpu")) == 1
    err = capsys.readouterr().err
    assert "no inference run on gpu" in err and "--device cpu" in err


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("module, command", [
    (lottery_ticket_performance, "python3 lottery_ticket.py --arch_type fc1 --dataset mnist"),
    (lottery_ticket_emissions, "python3 lottery_ticket.py --arch_type fc1 --dataset mnist"),
    (post_training_inference_emissions,
     "python3 post_training_inference.py --arch_type fc1 --dataset mnist"),
    (inference_emission, "python3 lottery_ticket.py --arch_type fc1 --dataset mnist"),
])
def test_no_runs_is_one_line_naming_the_folder_and_the_command(module, command, tmp_path, capsys):
    empty = tmp_path / "saves"
    assert run_script(module, plot_args(empty, tmp_path / "plots")) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(empty / ARCH / DATASET) in err
    assert command in err
    assert not (tmp_path / "plots").exists()


def test_emission_scripts_ask_for_co2_runs(study, tmp_path, capsys):
    # a save dir holding only evaluated runs
    only_evaluated = tmp_path / "saves"
    folder = only_evaluated / ARCH / DATASET
    folder.mkdir(parents=True)
    for path in (study / ARCH / DATASET).glob("*co2False*.pt"):
        shutil.copy(path, folder)
    assert run_script(lottery_ticket_emissions, plot_args(only_evaluated, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "--co2_tracking_mode" in err and "no CO2-tracking training runs" in err


def test_filters_that_match_nothing_say_what_there_is(study, tmp_path, capsys):
    args = plot_args(study, tmp_path, "--configs", "pp68x3", "--seeds", "0")
    assert run_script(lottery_ticket_performance, args) == 1
    err = capsys.readouterr().err
    assert "--configs pp68x3" in err and "pp90x2 seeds 0 1" in err


def test_an_unreadable_file_is_skipped_and_the_rest_drawn(study, tmp_path, capsys):
    save_dir = tmp_path / "saves"
    shutil.copytree(study / ARCH / DATASET, save_dir / ARCH / DATASET,
                    ignore=shutil.ignore_patterns("*co2True*", "*_lr*", "inference"))
    broken = save_dir / ARCH / DATASET / "pp90x2_seed7_co2False_mnist.pt"
    broken.write_bytes(b"half a file")
    assert lottery_ticket_performance.main(plot_args(save_dir, tmp_path / "plots",
                                                     "--configs", "pp90x2")) == 0
    out = capsys.readouterr().out
    assert f"warning: {broken} is not a readable results file" in out
    assert_readable_png(tmp_path / "plots" / ARCH / DATASET / "training_test_accuracy_vs_images.png")


def test_a_missing_inference_csv_is_skipped_and_the_rest_drawn(study, tmp_path, capsys):
    save_dir = tmp_path / "saves"
    shutil.copytree(study / ARCH / DATASET, save_dir / ARCH / DATASET)
    missing = save_dir / ARCH / DATASET / "inference" / "cpu_inf_pp90x2_seed1_bs128_ep2_dense.csv"
    missing.unlink()
    assert post_training_inference_emissions.main(plot_args(save_dir, tmp_path / "plots")) == 0
    out = capsys.readouterr().out
    assert f"warning: skipping {missing}" in out
    assert_readable_png(tmp_path / "plots" / ARCH / DATASET / "inference_cpu_co2_emissions_vs_inferences.png")


def test_replays_of_several_weight_states_are_not_mixed(known_study, tmp_path, capsys):
    table = inference_runs_csv_path(known_study, ARCH, DATASET)
    rows = list(csv.DictReader(open(table)))
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INFERENCE_RUNS_COLUMNS)
        for row in rows:   # the same runs replayed with other weights, 100 times dearer
            writer.writerow(row | {"state": "best", "co2_kg_per_pass": float(row["co2_kg_per_pass"]) * 100})
    assert inference_emission.main(plot_args(known_study, tmp_path)) == 0
    assert ("replays on cpu under several conditions (best weights, 2 threads, batch 512; final weights, "
            "2 threads, batch 512); using final weights, 2 threads, batch 512") in capsys.readouterr().out
    rows = {r["config"]: r for r in csv.DictReader(open(tmp_path / ARCH / DATASET / "break_even.csv"))}
    assert float(rows["pp90x2"]["break_even_inferences"]) == pytest.approx(1000.0)


def test_replays_with_other_threads_or_batch_sizes_are_not_mixed(known_study, tmp_path, capsys):
    table = inference_runs_csv_path(known_study, ARCH, DATASET)
    rows = list(csv.DictReader(open(table)))
    with open(table, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INFERENCE_RUNS_COLUMNS)
        for row in rows[:3]:   # a few runs measured again on one thread, 100 times dearer
            writer.writerow(row | {"threads": 1, "co2_kg_per_pass": float(row["co2_kg_per_pass"]) * 100})
        writer.writerow(rows[0] | {"batch_size": 64, "co2_kg_per_pass": 1.0})
    assert inference_emission.main(plot_args(known_study, tmp_path)) == 0
    out = capsys.readouterr().out
    # the conditions most runs were replayed under are used
    assert ("several conditions (final weights, 1 thread, batch 512; final weights, 2 threads, batch 64; "
            "final weights, 2 threads, batch 512); using final weights, 2 threads, batch 512") in out
    rows = {r["config"]: r for r in csv.DictReader(open(tmp_path / ARCH / DATASET / "break_even.csv"))}
    assert float(rows["pp90x2"]["break_even_inferences"]) == pytest.approx(1000.0)
    assert int(rows["pp0x1"]["inference_runs"]) == 2


@pytest.mark.parametrize("module, argv, message", [
    (lottery_ticket_performance, ["--format", "jpg"], "invalid choice: 'jpg'"),
    (inference_emission, ["--configs", "ninety"], "'ninety' is not a configuration name"),
])
def test_bad_flags_are_one_line(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err and "(see --help)" in err


def test_library_code_raises_user_errors_not_exits(tmp_path):
    from data.energy.emissions_report import plot_inference_emissions
    from data.report.plot_cli import PlotOptions

    with pytest.raises(UserError, match="post_training_inference.py"):
        plot_inference_emissions(PlotOptions(save_dir=tmp_path, plots_dir=tmp_path))
