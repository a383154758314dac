"""post_training_inference.py on runs made by the real training code."""
import csv
import subprocess
import sys

import pytest
import torch

import post_training_inference
from archs.experiment import TrainingJob, run_job
from archs.inference import RUN_COLUMNS, SUMMARY_COLUMNS, InferenceJob, run_inference, select_runs
from data.emissions import TrackerSettings
from data.runs import RunConfig, inference_runs_csv_path, inference_summary_csv_path
from conftest import ROOT
from utils import UserError


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


def job(save_dir, **changes):
    settings = dict(save_dir=save_dir, passes=2, tracker=TrackerSettings(country_iso_code="FRA"),
                    show_progress=False)
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
    per_pass = read(folder / "cpu_inf_pp90x2_seed1_sparse.csv")
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
    # The two large layers run sparse; the 100x10 output layer is too small for CSR to pay off.
    assert kernels(sparse_part) == ["sparse", "sparse", "dense"]


def test_no_saved_runs_names_the_folder_and_the_command(tmp_path, capsys):
    code, _, err = run_main(["--save_dir", str(tmp_path), "--arch_type", "lenet5"], capsys)
    assert code == 1
    assert err.strip() == (f"error: no saved training runs in {tmp_path / 'lenet5' / 'mnist'}; make them with: "
                           f"python3 lottery_ticket.py --arch_type lenet5 --dataset mnist --save_dir {tmp_path}")


def test_corrupt_and_foreign_files_and_mismatched_weights_are_refused(saved_runs, tmp_path, capsys):
    folder = tmp_path / "fc1" / "mnist"
    folder.mkdir(parents=True)
    good = saved_runs / "fc1" / "mnist" / "pp90x2_seed0_co2False_mnist.pt"
    target = folder / "pp90x2_seed0_co2False_mnist.pt"

    target.write_bytes(good.read_bytes()[:1000])  # truncated
    code, _, err = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA"], capsys)
    assert code == 1 and "is not a readable results file" in err and "Traceback" not in err

    torch.save({"something": torch.zeros(2)}, target)  # foreign
    code, _, err = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA"], capsys)
    assert code == 1 and "is not a training results file of this toolkit" in err

    results = torch.load(good, weights_only=True)
    results["final_state_dict"]["1.weight"] = torch.zeros(10, 10)  # does not fit fc1
    torch.save(results, target)
    code, _, err = run_main(["--save_dir", str(tmp_path), "--country_iso_code", "FRA"], capsys)
    assert code == 1 and "do not fit fc1 on mnist" in err
    assert torch.load(good, weights_only=True)["args"]["arch_type"] == "fc1"  # the original untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(saved_runs):
    result = subprocess.run([sys.executable, "post_training_inference.py", "--save_dir", str(saved_runs),
                             "--device", "cuda"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no CUDA GPU is available" in result.stderr
