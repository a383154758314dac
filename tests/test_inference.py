"""post_training_inference.py on runs made by the real training code."""
import csv
import math
import shutil
import subprocess
import sys

import pytest
import torch

import post_training_inference
from archs import inference
from archs.experiment import TrainingJob, run_job
from archs.inference import InferenceJob, run_inference, select_runs
from data.report.inference_tables import RUN_COLUMNS, SUMMARY_COLUMNS, summarise
from archs.sparse import Agreement
from data.datasets import make_splits, make_test_split
from data.datasets import Split
from data.energy.emissions import TrackerSettings
from data.paths import inference_runs_csv_path, inference_summary_csv_path, results_path
from data.runs import RunConfig
from data.selection import RunFilter
from tests.conftest import ROOT
from utils import UserError, setup_logging


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory, mnist_dir):
    """pp90x2 (seeds 0, 1), pp0x1 (seed 0) and a 99%-pruned pp99x2 (seed 0), 1 epoch per cycle."""
    save_dir = tmp_path_factory.mktemp("runs")
    for config, seeds in ((RunConfig(prune_percent=90, prune_iterations=2), [0, 1]),
                          (RunConfig(train_type="regular"), [0]),
                          (RunConfig(prune_percent=99, prune_iterations=2), [0])):
        run_job(TrainingJob(config=RunConfig(**{**config.as_dict(), "end_iter": 1, "batch_size": 64}),
                            seeds=seeds, data_dir=mnist_dir, save_dir=save_dir, device="cpu",
                            show_progress=False))
    return save_dir


def job(save_dir, configs=None, seeds=None, **changes):
    settings = dict(save_dir=save_dir, passes=2, tracker=TrackerSettings(country_iso_code="FRA"),
                    show_progress=False,
                    run_filter=RunFilter(configs=tuple(configs) if configs else None,
                                         seeds=tuple(seeds) if seeds is not None else None))
    return InferenceJob(**{**settings, **changes})


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        post_training_inference.run_cli(lambda: post_training_inference.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_discovery_and_filters(saved_runs):
    found = [(i.config_name, i.seed) for i in select_runs(job(saved_runs))]
    assert found == [("pp0x1", 0), ("pp90x2", 0), ("pp90x2", 1), ("pp99x2", 0)]
    only = select_runs(job(saved_runs, configs=["pp90x2"], seeds=[1]))
    assert [(i.config_name, i.seed) for i in only] == [("pp90x2", 1)]
    with pytest.raises(UserError, match="no saved run .* matches.*found: pp0x1 seed 0"):
        select_runs(job(saved_runs, configs=["pp68x3"]))


def test_replay_writes_one_codecarbon_row_per_pass_and_the_run_and_summary_tables(saved_runs, tmp_path):
    rows = run_inference(job(saved_runs, mode="both", passes=3, configs=["pp90x2", "pp0x1"]))
    assert len(rows) == 3 * 2  # three runs x (dense, sparse)
    folder = saved_runs / "fc1" / "mnist" / "inference"
    per_pass = read(folder / "cpu_inf_pp90x2_seed1_bs64_ep1_sparse.csv")
    assert len(per_pass) == 3 and "energy_consumed" in per_pass[0] and "emissions" in per_pass[0]
    durations = [float(r["duration"]) for r in per_pass]
    assert durations == sorted(durations)  # cumulative, one row per pass
    table = read(inference_runs_csv_path(saved_runs, "fc1", "mnist"))
    assert tuple(table[0]) == RUN_COLUMNS
    by_key = {(r["config"], r["seed"], r["mode"]): r for r in table}
    sparse, dense = by_key[("pp90x2", "1", "sparse")], by_key[("pp90x2", "1", "dense")]
    assert int(sparse["images_per_pass"]) == 105 and int(sparse["passes"]) == 3
    assert float(sparse["percent_remaining"]) == pytest.approx(10.0, abs=0.01)
    # Sparse and dense kernels compute the same function: same loss and accuracy.
    assert float(sparse["test_accuracy"]) == float(dense["test_accuracy"])
    assert float(sparse["test_loss"]) == pytest.approx(float(dense["test_loss"]), rel=1e-5)
    assert float(sparse["images_per_second"]) == pytest.approx(105 / float(sparse["seconds_per_pass"]), rel=1e-6)
    assert float(sparse["co2_kg_per_pass"]) > 0
    summary = read(inference_summary_csv_path(saved_runs, "fc1", "mnist"))
    assert tuple(summary[0]) == SUMMARY_COLUMNS
    pp90_sparse = next(r for r in summary if r["config"] == "pp90x2" and r["mode"] == "sparse")
    assert pp90_sparse["seeds"] == "2"
    seconds = [float(by_key[("pp90x2", s, "sparse")]["seconds_per_pass"]) for s in ("0", "1")]
    assert float(pp90_sparse["seconds_per_pass_mean"]) == pytest.approx(sum(seconds) / 2)
    expected_speedup = sum(float(by_key[("pp90x2", s, "dense")]["seconds_per_pass"]) /
                           float(by_key[("pp90x2", s, "sparse")]["seconds_per_pass"]) for s in ("0", "1")) / 2
    assert float(pp90_sparse["speedup_vs_dense_mean"]) == pytest.approx(expected_speedup)
    # A later replay of one run updates its rows instead of duplicating them.
    run_inference(job(saved_runs, mode="dense", configs=["pp0x1"]))
    assert len(read(inference_runs_csv_path(saved_runs, "fc1", "mnist"))) == len(table)


def test_auto_runs_a_dense_model_dense_and_a_99_percent_sparse_one_sparse(saved_runs, capsys):
    code, out, _ = run_main(["--save_dir", str(saved_runs), "--mode", "auto", "--passes", "1",
                             "--configs", "pp99x2", "pp0x1", "--country_iso_code", "FRA"], capsys)
    assert code == 0
    table = read(inference_runs_csv_path(saved_runs, "fc1", "mnist"))
    auto = {r["config"]: r for r in table if r["mode"] == "auto"}
    assert set(auto) == {"pp99x2", "pp0x1"}
    assert float(auto["pp99x2"]["percent_remaining"]) == pytest.approx(1.0, abs=0.01)
    dense_part, sparse_part = out[out.index("pp0x1 seed 0"):out.index("pp99x2 seed 0")], out[out.index("pp99x2 seed 0"):]

    def kernels(section):
        table = section[section.index("Kernels in auto mode"):].splitlines()[3:6]
        return [line.split()[2] for line in table]

    assert kernels(dense_part) == ["dense", "dense", "dense"]
    # Which kernel wins at 99% is measured on this machine (see test_sparse for the choice
    # itself, with a fake timer): any of them, each named in the table.
    assert set(kernels(sparse_part)) <= {"dense", "numba_csr", "numba_tiled", "torch_csr"}


def test_no_saved_runs_names_the_folder_and_the_command(tmp_path, capsys):
    code, _, err = run_main(["--save_dir", str(tmp_path), "--arch_type", "lenet5"], capsys)
    assert code == 1
    assert err.strip() == (f"error: no saved training runs in {tmp_path / 'lenet5' / 'mnist'}; make them with: "
                           f"python3 lottery_ticket.py --arch_type lenet5 --dataset mnist --save_dir {tmp_path}")


def test_unreadable_foreign_and_mismatched_files_are_skipped_and_the_rest_replayed(saved_runs, tmp_path,
                                                                                   capsys):
    folder = tmp_path / "fc1" / "mnist"
    folder.mkdir(parents=True)
    good = saved_runs / "fc1" / "mnist" / "pp90x2_seed0_co2False_mnist_bs64_ep1.pt"
    shutil.copy(good, folder / good.name)
    target = folder / "pp90x2_seed1_co2False_mnist_bs64_ep1.pt"
    table = inference_runs_csv_path(tmp_path, "fc1", "mnist")

    target.write_bytes(good.read_bytes()[:1000])  # truncated
    code, out, err = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA", "--passes", "1",
                               "--mode", "dense"], capsys)
    assert code == 0 and "Traceback" not in err
    assert f"{target} is not a readable results file" in out and "skipped" in out
    assert [(r["run"], r["seed"]) for r in read(table)] == [(good.stem, "0")]

    torch.save({"something": torch.zeros(2)}, target)  # foreign
    code, out, _ = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA", "--passes", "1",
                             "--mode", "dense"], capsys)
    assert code == 0 and "holds no run settings" in out

    results = torch.load(good, weights_only=True)
    results["final_state_dict"]["1.weight"] = torch.zeros(10, 10)  # does not fit fc1
    results["args"]["seed"] = 1
    torch.save(results, target)
    code, out, _ = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA", "--passes", "1",
                             "--mode", "dense"], capsys)
    assert code == 0 and "do not fit fc1 on mnist" in out
    assert len(read(table)) == 1     # the replay already made is kept, nothing else added
    assert torch.load(good, weights_only=True)["args"]["arch_type"] == "fc1"  # the original untouched

    (folder / good.name).unlink()   # only the bad file left: nothing to replay, one line
    code, _, err = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA", "--no_progress"],
                            capsys)
    assert code == 1 and err.startswith("error: none of the 1 selected run(s) could be replayed")
    assert len(read(table)) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(saved_runs):
    result = subprocess.run([sys.executable, "post_training_inference.py", "--save_dir", str(saved_runs),
                             "--device", "cuda"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no CUDA GPU is available" in result.stderr


# --------------------------------------------------------------------------- weights, conditions, old tables
def test_best_state_is_replayed_into_its_own_files_and_rows(saved_runs):
    for state in ("final", "best"):
        run_inference(job(saved_runs, state=state, mode="dense", configs=["pp90x2"], seeds=[0], passes=1))
    folder = saved_runs / "fc1" / "mnist" / "inference"
    final_csv = folder / "cpu_inf_pp90x2_seed0_bs64_ep1_dense.csv"
    best_csv = folder / "cpu_inf_pp90x2_seed0_bs64_ep1_dense_best.csv"
    assert len(read(final_csv)) == 1 and len(read(best_csv)) == 1   # one pass each, neither overwritten
    table = [r for r in read(inference_runs_csv_path(saved_runs, "fc1", "mnist"))
             if (r["config"], r["seed"], r["mode"]) == ("pp90x2", "0", "dense")]
    by_state = {r["state"]: r for r in table}
    assert sorted(by_state) == ["best", "final"] and len(table) == 2
    assert by_state["best"]["emissions_csv"] == best_csv.name
    assert by_state["final"]["emissions_csv"] == final_csv.name
    assert by_state["best"]["seconds_per_pass_std"] == ""   # one pass: no spread, an empty cell
    assert by_state["best"]["batch_size"] == "512" and int(by_state["best"]["threads"]) >= 1
    summary = read(inference_summary_csv_path(saved_runs, "fc1", "mnist"))
    states = {r["state"] for r in summary if (r["config"], r["mode"]) == ("pp90x2", "dense")}
    assert states == {"best", "final"}


def summary_input(config="pp90x2", seed=0, mode="dense", threads=2, batch_size=512, seconds=1.0) -> dict:
    """A parsed inference_runs.csv row; only what summarise reads matters."""
    row = {column: math.nan for column in RUN_COLUMNS}
    return row | {"arch": "fc1", "dataset": "mnist", "config": config, "seed": seed, "device": "cpu",
                  "mode": mode, "state": "final", "threads": threads, "batch_size": batch_size,
                  "seconds_per_pass": seconds}


def test_speedups_pair_only_replays_under_the_same_threads_and_batch_size():
    rows = [summary_input(threads=2, seconds=4.0), summary_input(threads=1, seconds=8.0),
            summary_input(batch_size=64, seconds=100.0),
            summary_input(mode="sparse", threads=2, seconds=2.0),
            summary_input(mode="sparse", threads=1, batch_size=64, seconds=1.0)]
    summary = {(r["mode"], r["threads"], r["batch_size"]): r for r in summarise(rows)}
    assert len(summary) == 5   # every condition its own group
    assert summary[("sparse", 2, 512)]["speedup_vs_dense_mean"] == pytest.approx(2.0)   # 4 / 2
    assert math.isnan(summary[("sparse", 1, 64)]["speedup_vs_dense_mean"])   # no dense run like it
    assert summary[("dense", 1, 512)]["speedup_vs_dense_mean"] == pytest.approx(1.0)
    assert summary[("dense", 1, 512)]["seeds"] == 1
    assert math.isnan(summary[("dense", 1, 512)]["seconds_per_pass_std"])   # one seed: no spread


OLD_TABLE = """\
arch,dataset,config,prune_percent,prune_iterations,seed,device,mode,passes,images_per_pass,percent_remaining,\
test_loss,test_accuracy,seconds_per_pass,seconds_per_pass_std,images_per_second,energy_kwh_per_pass,\
co2_kg_per_pass,emissions_csv
fc1,mnist,pp0x1,0,1,0,cpu,dense,10,105,100,0.5,90,0.02,,5250,1e-06,2e-07,cpu_inf_pp0x1_seed0_dense.csv
fc1,mnist,pp90x2,90,2,0,cpu,sparse,10,105,10,0.5,90,0.01,0.001,10500,,1e-07,cpu_inf_pp90x2_seed0_sparse.csv
fc1,mnist,pp90x2,90,2,zero,cpu,dense,10,105,10,0.5,90,0.01,0.001,10500,1e-06,1e-07,x.csv
"""


def copy_run(saved_runs, save_dir, name="pp90x2_seed0_co2False_mnist_bs64_ep1.pt", as_name=None):
    folder = save_dir / "fc1" / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(saved_runs / "fc1" / "mnist" / name, folder / (as_name or name))
    return folder


def test_a_table_of_an_earlier_version_is_read_and_kept(saved_runs, tmp_path, capsys):
    folder = copy_run(saved_runs, tmp_path)
    (folder / "inference").mkdir()
    table = inference_runs_csv_path(tmp_path, "fc1", "mnist")
    table.write_text(OLD_TABLE)
    code, out, err = run_main(["--save_dir", str(tmp_path), "--mode", "dense", "--passes", "1",
                               "--country_iso_code", "FRA", "--no_progress"], capsys)
    assert code == 0, err
    assert (f"warning: line 4 of {table} cannot be read (invalid literal for int() with base 10: "
            "'zero'); it is left out of the rewritten table") in out
    rows = {(r["config"], r["mode"]): r for r in read(table)}
    assert sorted(rows) == [("pp0x1", "dense"), ("pp90x2", "dense"), ("pp90x2", "sparse")]
    old = rows[("pp90x2", "sparse")]
    assert old["state"] == "final" and old["threads"] == "" and old["batch_size"] == ""
    assert old["energy_kwh_per_pass"] == "" and float(old["co2_kg_per_pass"]) == 1e-07
    assert rows[("pp90x2", "dense")]["batch_size"] == "512"
    summary = {(r["config"], r["mode"]): r
               for r in read(inference_summary_csv_path(tmp_path, "fc1", "mnist"))}
    # the old sparse replay's threads are unknown, so no dense replay is known to match it
    assert summary[("pp90x2", "sparse")]["speedup_vs_dense_mean"] == ""
    assert summary[("pp90x2", "sparse")]["energy_kwh_per_pass_mean"] == ""
    assert float(summary[("pp0x1", "dense")]["seconds_per_pass_mean"]) == 0.02


def test_a_study_with_another_learning_rate_is_replayed_and_selected_with_where(saved_runs, tmp_path):
    folder = copy_run(saved_runs, tmp_path)
    results = torch.load(folder / "pp90x2_seed0_co2False_mnist_bs64_ep1.pt", weights_only=True)
    results["args"]["lr"] = 1.2e-3
    config = RunConfig.from_dict(results["args"])
    torch.save(results, results_path(tmp_path, config))
    assert results_path(tmp_path, config).name == "pp90x2_seed0_co2False_mnist_lr0.0012_bs64_ep1.pt"
    # Both studies are found; their labels tell them apart instead of averaging them.
    assert sorted(r.config_name for r in select_runs(job(tmp_path))) == ["pp90x2, lr 0.0001",
                                                                         "pp90x2, lr 0.0012"]
    only = select_runs(job(tmp_path, run_filter=RunFilter(where=(("lr", 1.2e-3),))))
    assert [(r.config_name, r.path.name) for r in only] == [
        ("pp90x2", "pp90x2_seed0_co2False_mnist_lr0.0012_bs64_ep1.pt")]
    rows = run_inference(job(tmp_path, run_filter=RunFilter(where=(("lr", 1.2e-3),)), mode="dense",
                             passes=1))
    assert [(r["run"], r["configuration"]) for r in rows] == [
        ("pp90x2_seed0_co2False_mnist_lr0.0012_bs64_ep1", "pp90x2_mnist_lr0.0012_bs64_ep1")]


def test_kernels_that_disagree_are_a_user_error_with_a_way_out(saved_runs, tmp_path, capsys, monkeypatch):
    copy_run(saved_runs, tmp_path)
    monkeypatch.setattr(inference, "compare_outputs", lambda *args: Agreement(0.5, 1e-5))
    code, _, err = run_main(["--save_dir", str(tmp_path), "--mode", "sparse", "--country_iso_code", "FRA",
                             "--no_progress"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "sparse kernels disagree with the dense forward on pp90x2_seed0_co2False_mnist_bs64_ep1.pt" in err
    assert "--mode dense avoids the sparse kernels" in err


def test_an_unwritable_inference_folder_is_one_line(saved_runs, tmp_path, capsys):
    folder = copy_run(saved_runs, tmp_path)
    (folder / "inference").write_text("a file where the folder should be")
    code, _, err = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"cannot write to the inference folder {folder / 'inference'}" in err


def test_a_misspelt_configuration_is_a_flag_error(capsys):
    code, _, err = run_main(["--configs", "pp90"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'pp90' is not a configuration name" in err


def test_make_test_split_is_the_test_part_of_the_splits():
    dataset = Split(torch.arange(200.0).reshape(200, 1, 1, 1), torch.arange(200))
    expected = make_splits(dataset, seed=3).test
    test = make_test_split(dataset, seed=3)
    assert torch.equal(test.images, expected.images) and torch.equal(test.labels, expected.labels)


def test_sweeps_per_pass_multiply_the_images_of_a_pass_and_short_passes_are_flagged(saved_runs, capsys):
    setup_logging()
    rows = run_inference(job(saved_runs, mode="dense", configs=["pp90x2"], seeds=[0], passes=2,
                             sweeps_per_pass=3))
    assert rows[0]["images_per_pass"] == 3 * 105
    assert rows[0]["images_per_second"] == pytest.approx(3 * 105 / rows[0]["seconds_per_pass"])
    warning = [line for line in capsys.readouterr().out.splitlines() if "sampling noise" in line]
    assert len(warning) == 1 and "--sweeps_per_pass" in warning[0]


def test_the_replay_reads_denormal_weights_as_zero_and_says_how_many(saved_runs, tmp_path, capsys):
    """A dense network trained long enough holds denormal weights, which cost x86 CPUs tens of
    cycles per operation; the replay flushes them (and still counts the network as dense)."""
    save_dir = tmp_path / "saves"
    shutil.copytree(saved_runs / "fc1", save_dir / "fc1", ignore=shutil.ignore_patterns("inference"))
    path = results_path(save_dir, RunConfig(train_type="regular", end_iter=1, batch_size=64, seed=0))
    results = torch.load(path, weights_only=True)
    weight = results["final_state_dict"]["1.weight"]
    weight[0, :7] = torch.tensor([1e-40, -1e-40, 3e-39, 1e-45, -1e-45, 5e-39, 1e-41])
    torch.save(results, path)
    setup_logging()
    [row] = run_inference(job(save_dir, mode="dense", configs=["pp0x1"], passes=1))
    out = capsys.readouterr()
    assert "7 weight(s) are denormal (nonzero, below 1.2e-38): read as zero" in out.out + out.err
    assert float(row["percent_remaining"]) == 100.0          # not taken for pruned weights
    assert float(torch.tensor([1e-40]) * 1.0) == 0.0         # flushing is on
