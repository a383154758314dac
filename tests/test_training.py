"""The training procedure: schema, reproducibility, resume, selection, divergence, CO2 mode."""
import math

import pytest
import torch

import archs.train.cycles as training
from archs.experiment import TrainingJob, run_job
from archs.pruning import masks_from_state
from data.energy.emissions import EMISSION_FIELDS, TrackerSettings
from data.paths import checkpoint_path, emissions_csv_path, results_path
from data.runs import RunConfig
from utils import TrainingDiverged, UserError

TINY = dict(end_iter=2, batch_size=64, prune_iterations=3, prune_percent=50.0)


def job(tmp_path, mnist_dir, seeds=(0,), **changes):
    return TrainingJob(config=RunConfig(**{**TINY, **changes}), seeds=list(seeds), data_dir=mnist_dir,
                       save_dir=tmp_path / "saves", device="cpu", show_progress=False,
                       tracker=TrackerSettings(country_iso_code="FRA"))


def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("finished")
    [path] = run_job(job(tmp, mnist_dir))
    return path, load(path)


def test_results_file_has_the_documented_schema_and_loads_weights_only(finished_run):
    path, results = finished_run
    assert path.name == "pp50x3_seed0_co2False_mnist_bs64_ep2.pt"   # the settings that differ
    for key in training.LOG_KEYS:
        assert isinstance(results[key], dict)
    for key in ("initial_state_dict", "best_state_dict", "final_state_dict", "masks", "cycles",
                "args", "versions", "split_sizes"):
        assert key in results
    # 3 cycles x 2 epochs of 490 images: logs keyed by images seen, cumulative across cycles.
    assert list(results["val_accuracy"]) == [490 * k for k in range(1, 7)]
    assert results["co2"] == {} and results["emissions"] == {}
    assert [round(v, 2) for v in results["non_zeros_weights"].values()] == [100.0, 100.0, 50.0, 50.0, 25.0, 25.0]
    assert len(results["masks"]) == 3 and results["args"]["prune_percent"] == 50.0
    assert results["split_sizes"] == {"train": 490, "val": 105, "test": 105}
    assert all(0 <= acc <= 100 for acc in results["test_accuracy"].values())


def test_final_state_is_the_last_mask_applied_and_the_first_cycle_learns(finished_run):
    _, results = finished_run
    final, last_masks = results["final_state_dict"], results["masks"][-1]
    recovered = masks_from_state(final, list(last_masks))
    for name, mask in last_masks.items():
        assert torch.equal(recovered[name], mask)
        assert 100 * mask.float().mean().item() == pytest.approx(25.0, abs=0.01)
    # Masks only shrink from cycle to cycle.
    for earlier, later in zip(results["masks"], results["masks"][1:]):
        assert all(not (later[n] & ~earlier[n]).any() for n in earlier)
    assert results["cycles"][0]["best_val_accuracy"] > 30  # well above chance (10%) on the tiny set


def test_best_state_is_chosen_on_validation_and_reports_test_at_that_point(finished_run):
    _, results = finished_run
    cycle = results["cycles"][-1]
    val, test = results["val_accuracy"], results["test_accuracy"]
    last_cycle_keys = [k for k in val if k > 490 * 4]
    best_key = max(last_cycle_keys, key=lambda k: (val[k], -k))
    assert cycle["best_images_seen"] == best_key
    assert cycle["best_val_accuracy"] == val[best_key]
    assert cycle["test_accuracy_at_best"] == test[best_key]


def test_same_seed_gives_identical_masks_and_metrics(tmp_path, mnist_dir, finished_run):
    _, first = finished_run
    [path] = run_job(job(tmp_path, mnist_dir))
    second = load(path)
    for key in ("train_loss", "val_accuracy", "test_loss", "non_zeros_weights"):
        assert first[key] == second[key]
    for a, b in zip(first["masks"], second["masks"]):
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(first["final_state_dict"][k], second["final_state_dict"][k])
               for k in first["final_state_dict"])


@pytest.mark.parametrize("fail_at", ["after_checkpoint_3", "inside_epoch_4"])
def test_resume_after_an_interruption_gives_the_same_result(tmp_path, mnist_dir, finished_run, monkeypatch,
                                                            fail_at):
    _, reference = finished_run
    the_job = job(tmp_path, mnist_dir)
    calls = {"epochs": 0}
    real_train_epoch = training.train_epoch

    def interrupted_train_epoch(*args, **kwargs):
        calls["epochs"] += 1
        if fail_at == "inside_epoch_4" and calls["epochs"] == 4:
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    real_save = training.LotteryRun.state_dict
    saves = {"n": 0}

    def interrupted_state_dict(self):
        saves["n"] += 1
        if fail_at == "after_checkpoint_3" and saves["n"] == 4:
            raise KeyboardInterrupt
        return real_save(self)

    monkeypatch.setattr(training, "train_epoch", interrupted_train_epoch)
    monkeypatch.setattr(training.LotteryRun, "state_dict", interrupted_state_dict)
    with pytest.raises(KeyboardInterrupt):
        run_job(the_job)
    config = the_job.config
    assert checkpoint_path(the_job.save_dir, config).exists()
    assert not results_path(the_job.save_dir, config).exists()

    monkeypatch.setattr(training, "train_epoch", real_train_epoch)
    monkeypatch.setattr(training.LotteryRun, "state_dict", real_save)
    the_job.resume = True
    [path] = run_job(the_job)
    resumed = load(path)
    assert not checkpoint_path(the_job.save_dir, config).exists()
    for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy", "non_zeros_weights"):
        assert resumed[key] == reference[key], key
    assert all(torch.equal(resumed["final_state_dict"][k], reference["final_state_dict"][k])
               for k in reference["final_state_dict"])
    assert [c["best_epoch"] for c in resumed["cycles"]] == [c["best_epoch"] for c in reference["cycles"]]


def test_resume_skips_finished_seeds_and_refuses_other_settings(tmp_path, mnist_dir, caplog):
    first = job(tmp_path, mnist_dir, end_iter=1)
    [path] = run_job(first)
    stamp = path.stat().st_mtime_ns
    first.resume = True
    assert run_job(first) == [path] and path.stat().st_mtime_ns == stamp
    # A file whose contents are another run's (renamed by hand) is refused, not resumed over.
    other = job(tmp_path, mnist_dir, end_iter=1, batch_size=32)
    other.resume = True
    impostor = results_path(other.save_dir, RunConfig(**{**TINY, "end_iter": 1, "batch_size": 32}))
    impostor.write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="other settings"):
        run_job(other)


def test_regular_training_is_one_dense_cycle(tmp_path, mnist_dir):
    [path] = run_job(job(tmp_path, mnist_dir, train_type="regular", end_iter=1))
    assert path.name == "pp0x1_seed0_co2False_mnist_bs64_ep1.pt"
    results = load(path)
    assert len(results["cycles"]) == 1 and results["cycles"][0]["percent_remaining"] == 100.0


def test_a_nan_loss_stops_the_run_and_keeps_finished_seeds(tmp_path, mnist_dir, monkeypatch):
    real_train_epoch = training.train_epoch
    runs = {"n": 0}

    def diverging(model, *args, **kwargs):
        loss, acc = real_train_epoch(model, *args, **kwargs)
        runs["n"] += 1
        return (math.nan, acc) if runs["n"] > 2 else (loss, acc)

    monkeypatch.setattr(training, "train_epoch", diverging)
    the_job = job(tmp_path, mnist_dir, seeds=(0, 1), end_iter=1, prune_iterations=2)
    with pytest.raises(TrainingDiverged, match="seed 1.*lower --lr"):
        run_job(the_job)
    assert results_path(the_job.save_dir, RunConfig(**{**TINY, "end_iter": 1, "prune_iterations": 2})).exists()


def test_co2_mode_tracks_without_evaluating(tmp_path, mnist_dir):
    the_job = job(tmp_path, mnist_dir, co2_tracking_mode=True, prune_iterations=2, valid_freq=1)
    [path] = run_job(the_job)
    results = load(path)
    assert path.name == "pp50x2_seed0_co2True_mnist_bs64_ep2.pt"
    assert results["val_accuracy"] == {} and results["test_accuracy"] == {}
    assert list(results["co2"]) == [490, 980, 1470, 1960]
    co2 = list(results["co2"].values())
    assert all(b >= a for a, b in zip(co2, co2[1:])) and co2[-1] > 0
    assert set(results["emissions"][1960]) == set(EMISSION_FIELDS) | {"cpu_seconds", "others_cpu_seconds"}
    csv = emissions_csv_path(the_job.save_dir, the_job.config)
    rows = read_csv(csv)
    assert len(rows) == 4  # one row per flush
    assert float(rows[-1]["emissions"]) == pytest.approx(co2[-1])
    assert not list(csv.parent.glob("*.partial.csv"))


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_co2_mode_resume_keeps_one_csv_row_per_recorded_flush(tmp_path, mnist_dir, monkeypatch):
    the_job = job(tmp_path, mnist_dir, co2_tracking_mode=True, prune_iterations=2, end_iter=3)
    real_train_epoch = training.train_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(the_job)
    monkeypatch.setattr(training, "train_epoch", real_train_epoch)
    the_job.resume = True
    [path] = run_job(the_job)
    results = load(path)
    assert list(results["emissions"]) == [490 * k for k in range(1, 7)]
    rows = read_csv(emissions_csv_path(the_job.save_dir, the_job.config))
    assert len(rows) == 6 and len({r["run_id"] for r in rows}) == 2  # two tracker sessions
    # The results carry the first session's totals forward: cumulative values never drop.
    emitted = [record["emissions"] for record in results["emissions"].values()]
    durations = [record["duration"] for record in results["emissions"].values()]
    assert emitted == sorted(emitted) and durations == sorted(durations)
    assert results["co2"][490 * 6] == emitted[-1]


def test_tracker_settings_are_checked_before_any_work():
    with pytest.raises(UserError, match="'XYZ' is not a country CodeCarbon knows"):
        TrackerSettings(country_iso_code="XYZ")
    assert TrackerSettings(country_iso_code="fra").country_iso_code == "fra"
    with pytest.raises(UserError, match="greater than 0"):
        TrackerSettings(measure_power_secs=0)


def test_results_files_get_the_usual_permissions(finished_run):
    import os

    path, _ = finished_run
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_killed_process_resumes_to_the_uninterrupted_result(tmp_path, mnist_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    flags = ["--end_iter", "8", "--batch_size", "64", "--prune_iterations", "3", "--prune_percent", "50",
             "--seeds", "0", "--device", "cpu", "--no_progress", "--data_dir", str(mnist_dir)]
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    config = RunConfig(end_iter=8, batch_size=64, prune_iterations=3, prune_percent=50.0)
    [reference_path] = run_job(TrainingJob(config=config, seeds=[0], data_dir=mnist_dir, save_dir=reference_dir,
                                           device="cpu", show_progress=False))

    process = subprocess.Popen([sys.executable, "lottery_ticket.py", *flags, "--save_dir", str(killed_dir)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = checkpoint_path(killed_dir, config)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # a few epochs into the run, wherever the kill lands
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not results_path(killed_dir, config).exists(), "the run ended before the kill"

    resumed = subprocess.run([sys.executable, "lottery_ticket.py", *flags, "--save_dir", str(killed_dir), "--resume"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    reference, result = load(reference_path), load(results_path(killed_dir, config))
    assert result["val_accuracy"] == reference["val_accuracy"]
    assert all(torch.equal(result["final_state_dict"][k], reference["final_state_dict"][k])
               for k in reference["final_state_dict"])
    assert not [p for p in checkpoint.parent.iterdir() if p.name.endswith((".tmp", ".checkpoint.pt"))]
