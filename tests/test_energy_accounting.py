"""Energy accounting of training: phases measured apart, resumes that lose and double nothing,
provenance, cheap checkpoints.

Most tests inject a fake recorder whose every task measures a known amount, so totals can be
compared exactly and the phase open while each piece of work ran can be asserted. The tests
marked "real CodeCarbon" use the real tracker.
"""
import json
import math
import time
from types import SimpleNamespace

import pytest
import torch

import archs.train.checkpoint as checkpoint_module
import archs.train.cycles as training
import archs.train.steps as steps
from archs.experiment import TrainingJob, run_job
from archs.train import Checkpointer, LotteryRun
from data.datasets import load_dataset, make_splits
from data.energy.emissions import (EMISSION_FIELDS, PROVENANCE_IDENTITY, EmissionsRecorder, TrackerSettings,
                            accumulate, describe_provenance, hardware_provenance, is_usable, zero_record)
from data.paths import checkpoint_path, emissions_csv_path, results_path
from data.runs import RunConfig
from utils import UserError

KWH_PER_SECOND_AT_1W = 1 / 3.6e6


class Meter:
    """What the fake recorders of one test measured, and which phase was open when work ran."""

    def __init__(self, watts=None):
        self.open_phase = None
        self.seen: list[tuple[str, str | None]] = []   # (work, phase open while it ran)
        self.tasks: list[str] = []
        self.watts = watts or {"training": 10.0, "evaluation": 20.0, "checkpoint": 40.0}
        self.fail_tasks: set[int] = set()   # indices of tasks whose measurement comes back unusable
        self.provenance = {"power_source": "estimated (TDP x load)", "cpu_power_source": "estimated (TDP x load)",
                           "gpu_power_source": "none", "ram_power_source": "estimated",
                           "cpu_model": "Fake CPU", "gpu_model": "", "measure_power_secs": 1.0,
                           "sample_seconds": 1.0, "tracking_mode": "process", "country_iso_code": "FRA",
                           "codecarbon_version": "3.3.2", "cpu_tdp_w": 8.0}

    def factory(self):
        return FakeRecorder(self)


class FakeRecorder:
    """Each task lasts one second at the phase's wattage, whatever the real time."""

    def __init__(self, meter: Meter):
        self.meter = meter
        self.rows = []

    def start_task(self, phase):
        assert self.meter.open_phase is None, f"{phase} started inside {self.meter.open_phase}"
        self.meter.open_phase = phase

    def stop_task(self):
        phase, self.meter.open_phase = self.meter.open_phase, None
        index = len(self.meter.tasks)
        self.meter.tasks.append(phase)
        if index in self.meter.fail_tasks:
            return None
        kwh = self.meter.watts[phase] * KWH_PER_SECOND_AT_1W
        return {**zero_record(), "duration": 1.0, "cpu_energy": kwh, "energy_consumed": kwh,
                "emissions": kwh * 0.05, "cpu_power": self.meter.watts[phase]}

    def append_row(self, row):
        self.rows.append(row)

    def provenance(self):
        return dict(self.meter.provenance)

    def stop(self):
        self.meter.open_phase = None
        return {}


@pytest.fixture(scope="module")
def splits(mnist_dir):
    return make_splits(load_dataset("mnist", mnist_dir), seed=0)


@pytest.fixture
def watched(monkeypatch):
    """Patches training's work so that each call notes the phase open while it ran."""
    meter = Meter()
    real_train, real_evaluate = training.train_epoch, steps.evaluate

    def train_epoch(*args, **kwargs):
        meter.seen.append(("train_epoch", meter.open_phase))
        return real_train(*args, **kwargs)

    def evaluate(*args, **kwargs):
        meter.seen.append(("evaluate", meter.open_phase))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", train_epoch)
    monkeypatch.setattr(steps, "evaluate", evaluate)
    return meter


def co2_config(**changes):
    return RunConfig(**{**dict(end_iter=6, valid_freq=3, batch_size=128, co2_tracking_mode=True,
                               train_type="regular"), **changes})


def new_run(config, splits, meter):
    return LotteryRun(config, splits, torch.device("cpu"), recorder_factory=meter.factory)


class Interrupted(Exception):
    pass


def save_then_interrupt(checkpointer):
    def checkpoint(run):
        checkpointer(run)
        raise Interrupted

    return checkpoint


def run_with_kill(config, splits, meter, folder, kill_after_checkpoint, checkpoint_every=1):
    """Run, interrupt right after the given checkpoint, resume from disk; returns the resumed run."""
    checkpointer = Checkpointer(folder / "run.checkpoint.pt")
    calls = {"n": 0}

    def checkpoint(run):
        checkpointer(run)
        meter.seen.append(("checkpoint", meter.open_phase))
        calls["n"] += 1
        if calls["n"] == kill_after_checkpoint:
            raise Interrupted

    first = new_run(config, splits, meter)
    with pytest.raises(Interrupted):
        first.run(checkpoint=checkpoint, show_progress=False, checkpoint_every=checkpoint_every)
    resumed = new_run(config, splits, meter)
    resumed.load_state_dict(Checkpointer(folder / "run.checkpoint.pt").load())
    resumed.run(checkpoint=checkpointer, show_progress=False, checkpoint_every=checkpoint_every)
    return resumed


def uninterrupted(config, splits, **kwargs):
    meter = Meter(**kwargs)
    run = new_run(config, splits, meter)
    run.run(show_progress=False)
    return run, meter


# --------------------------------------------------------------------------- phases kept apart
def test_evaluation_and_checkpoints_never_run_inside_a_training_task(splits, watched, tmp_path):
    config = co2_config(train_type="lt", prune_iterations=2, prune_percent=50.0, end_iter=3, valid_freq=1,
                        co2_evaluate=True)
    run = new_run(config, splits, watched)
    checkpointer = Checkpointer(tmp_path / "x.checkpoint.pt")

    def checkpoint(r):
        watched.seen.append(("checkpoint", watched.open_phase))
        checkpointer(r)

    run.run(checkpoint=checkpoint, show_progress=False)
    expected_phase = {"train_epoch": "training", "evaluate": "evaluation", "checkpoint": "checkpoint"}
    assert watched.seen and all(phase == expected_phase[work] for work, phase in watched.seen), watched.seen
    counts = {work: sum(1 for w, _ in watched.seen if w == work) for work in expected_phase}
    assert counts == {"train_epoch": 6, "evaluate": 12, "checkpoint": 6}   # val + test each epoch
    # Training tasks: 6 epochs + 1 pruning; evaluation: 6 (val and test together); 6 checkpoints.
    assert watched.tasks.count("training") == 7 and watched.tasks.count("evaluation") == 6
    final = run.emissions[max(run.emissions)]
    assert final["duration"] == 7.0 and final["cpu_power"] == pytest.approx(10.0)
    assert final["energy_consumed"] == pytest.approx(7 * 10 * KWH_PER_SECOND_AT_1W)
    assert run.evaluation_emissions[max(run.evaluation_emissions)]["duration"] == 6.0
    # One run gives both accuracies and training energy.
    assert len(run.logs["val_accuracy"]) == 6 and len(run.logs["co2"]) == 6
    results = run.results({})
    assert results["energy_by_phase"]["checkpoint"]["duration"] == 6.0
    assert results["energy_by_phase"]["evaluation"]["cpu_power"] == pytest.approx(20.0)


def test_plain_co2_mode_evaluates_nothing(splits, watched):
    run = new_run(co2_config(end_iter=2, valid_freq=1), splits, watched)
    run.run(show_progress=False)
    assert [work for work, _ in watched.seen] == ["train_epoch", "train_epoch"]
    assert run.logs["val_accuracy"] == {} and run.evaluation_emissions == {}
    assert list(run.emissions) == [490, 980] and run.emissions[980]["duration"] == 2.0


def test_co2_evaluate_implies_co2_tracking_and_names_its_runs_apart():
    config = RunConfig(co2_evaluate=True)
    assert config.co2_tracking_mode is True
    assert config.stem == "pp90x2_seed0_co2True_mnist_co2evalTrue"
    assert RunConfig(co2_tracking_mode=True).stem == "pp90x2_seed0_co2True_mnist"


# --------------------------------------------------------------------------- resume accounting
@pytest.fixture(scope="module")
def references(splits):
    """Uninterrupted runs, one per configuration, shared by the resume tests."""
    cache = {}

    def reference(config):
        if config not in cache:
            cache[config] = uninterrupted(config, splits)[0]
        return cache[config]

    return reference


# Killed before the first record point, right after one, and between two.
@pytest.mark.parametrize("valid_freq, kill_after", [(2, 1), (2, 3), (3, 2), (3, 5)])
def test_resume_loses_and_doubles_nothing(splits, tmp_path, references, valid_freq, kill_after):
    config = co2_config(valid_freq=valid_freq, co2_evaluate=True)
    reference = references(config)
    resumed = run_with_kill(config, splits, Meter(), tmp_path, kill_after)
    assert resumed.emissions == reference.emissions
    assert resumed.evaluation_emissions == reference.evaluation_emissions
    assert resumed.emissions[6 * 490]["duration"] == 6.0   # the case: 4.0 before
    assert resumed.energy["training"] == reference.energy["training"]
    assert resumed.logs["val_accuracy"] == reference.logs["val_accuracy"]


def test_resume_between_sparse_checkpoints_redoes_and_counts_each_epoch_once(splits, tmp_path):
    config = co2_config(valid_freq=3, train_type="lt", prune_iterations=2, prune_percent=50.0, end_iter=5)
    reference, _ = uninterrupted(config, splits)
    # Checkpoints every 2 epochs: at epochs 2, 4, 5 (cycle end) of each cycle; killed after the
    # 4th (cycle 2, epoch 2), i.e. between two record points.
    resumed = run_with_kill(config, splits, Meter(), tmp_path, kill_after_checkpoint=4, checkpoint_every=2)
    assert list(resumed.emissions) == list(reference.emissions) == [1470, 2450, 3920, 4900]
    assert resumed.emissions == reference.emissions
    assert resumed.emissions[4900]["duration"] == 11.0   # 10 epochs + 1 pruning


def test_a_kill_inside_an_epoch_drops_that_epochs_energy(splits, tmp_path, monkeypatch, references):
    config = co2_config(valid_freq=3, co2_evaluate=True)
    reference = references(config)
    real_train, calls = training.train_epoch, {"n": 0}

    def train_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", train_epoch)
    meter, checkpointer = Meter(), Checkpointer(tmp_path / "k.checkpoint.pt")
    with pytest.raises(KeyboardInterrupt):
        new_run(config, splits, meter).run(checkpoint=checkpointer, show_progress=False)
    assert meter.open_phase is None   # the recorder was stopped, closing the task
    monkeypatch.setattr(training, "train_epoch", real_train)
    resumed = new_run(config, splits, meter)
    resumed.load_state_dict(checkpointer.load())
    resumed.run(checkpoint=checkpointer, show_progress=False)
    assert resumed.emissions == reference.emissions


def test_power_after_a_resume_is_the_time_weighted_mean_of_the_whole_run(splits, tmp_path):
    config = co2_config(valid_freq=3)
    meter = Meter()
    checkpointer = Checkpointer(tmp_path / "p.checkpoint.pt")
    calls = {"n": 0}

    def checkpoint(run):
        checkpointer(run)
        calls["n"] += 1
        if calls["n"] == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        new_run(config, splits, meter).run(checkpoint=checkpoint, show_progress=False)
    meter.watts = {"training": 40.0, "evaluation": 0.0, "checkpoint": 0.0}   # a hotter second session
    resumed = new_run(config, splits, meter)
    resumed.load_state_dict(checkpointer.load())
    resumed.run(checkpoint=checkpointer, show_progress=False)
    final = resumed.emissions[6 * 490]
    # 5 one-second epochs at 10 W then one at 40 W: 90 J over 6 s = 15 W (a mean of the
    # sessions' own averages, as CodeCarbon's fields would give, is 25 W).
    assert final["cpu_power"] == pytest.approx(15.0)
    assert final["energy_consumed"] == pytest.approx(90 * KWH_PER_SECOND_AT_1W)
    assert final["emissions_rate"] == pytest.approx(final["emissions"] / 6.0)


def test_an_unusable_measurement_is_counted_apart_and_never_poisons_later_totals(splits):
    meter = Meter()
    meter.fail_tasks = {1}   # the second epoch's measurement is lost
    run = new_run(co2_config(end_iter=4, valid_freq=1), splits, meter)
    run.run(show_progress=False)
    durations = [record["duration"] for record in run.emissions.values()]
    assert durations == [1.0, 1.0, 2.0, 3.0]
    assert all(math.isfinite(v) for record in run.emissions.values() for v in record.values())
    assert run.unmeasured["training"]["tasks"] == 1 and run.unmeasured["training"]["seconds"] > 0
    assert run.results({})["energy_unmeasured"]["training"]["tasks"] == 1


def test_the_real_recorder_turns_a_nan_measurement_into_none(tmp_path, caplog):
    recorder = EmissionsRecorder(tmp_path / "r.csv", TrackerSettings(country_iso_code="FRA"), "t", per_task=True)
    nan_data = SimpleNamespace(**{name: 1.0 for name in EMISSION_FIELDS})
    nan_data.energy_consumed = math.nan
    recorder._tracker = SimpleNamespace(start_task=lambda phase: None, stop_task=lambda: nan_data,
                                        stop=lambda: None)
    recorder.start_task("training")
    assert recorder.stop_task() is None
    assert "unusable measurement" in caplog.text
    assert not is_usable({**zero_record(), "duration": math.nan}) and is_usable(zero_record())
    total = accumulate(None, {**zero_record(), "duration": 2.0, "cpu_energy": 1e-6})
    assert total["cpu_power"] == pytest.approx(1e-6 * 3.6e6 / 2.0)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("key, other", [("country_iso_code", "CAN"), ("measure_power_secs", 5.0),
                                        ("tracking_mode", "machine"), ("cpu_model", "Other CPU"),
                                        ("power_source", "measured (RAPL)")])
def test_resume_with_other_tracker_settings_or_hardware_is_refused(splits, tmp_path, key, other):
    config = co2_config(end_iter=2, valid_freq=1)
    meter = Meter()
    checkpointer = Checkpointer(tmp_path / "s.checkpoint.pt")
    with pytest.raises(Interrupted):
        new_run(config, splits, meter).run(checkpoint=save_then_interrupt(checkpointer), show_progress=False)
    meter.provenance[key] = other
    resumed = new_run(config, splits, meter)
    resumed.load_state_dict(checkpointer.load())
    with pytest.raises(UserError, match=f"cannot resume.*{key}") as error:
        resumed.run(checkpoint=checkpointer, show_progress=False)
    assert "\n" not in str(error.value)
    assert resumed.epoch == 1 and meter.open_phase is None   # refused before any work


def test_resume_on_another_device_is_refused(splits, tmp_path):
    config = co2_config(end_iter=2, valid_freq=1)
    meter = Meter()
    checkpointer = Checkpointer(tmp_path / "d.checkpoint.pt")
    with pytest.raises(Interrupted):
        new_run(config, splits, meter).run(checkpoint=save_then_interrupt(checkpointer), show_progress=False)
    state = checkpointer.load()
    assert state["energy_provenance"]["device"] == "cpu"
    state["energy_provenance"]["device"] = "cuda"   # as if the checkpoint had been made on a GPU
    resumed = new_run(config, splits, meter)
    resumed.load_state_dict(state)
    with pytest.raises(UserError, match="device 'cuda' then, 'cpu' now"):
        resumed.run(show_progress=False)


# --------------------------------------------------------------------------- provenance
def test_provenance_reads_how_codecarbon_gets_power(tmp_path):
    from codecarbon.external.hardware import CPU

    settings = TrackerSettings(country_iso_code="fra", measure_power_secs=2.0)
    load_cpu = CPU(output_dir=str(tmp_path), mode="cpu_load", model="Some Xeon", tdp=85, tracking_mode="process")
    rapl_cpu = CPU.__new__(CPU)
    rapl_cpu._mode = "intel_rapl"

    def tracker(cpu):
        return SimpleNamespace(_ensure_hardware_ready=lambda: None, _hardware=[cpu],
                               _conf={"cpu_model": "Some Xeon", "gpu_model": "", "codecarbon_version": "3.3.2"},
                               _scheduler_monitor_power=SimpleNamespace(interval=1))

    estimated = hardware_provenance(tracker(load_cpu), settings)
    # a Xeon CodeCarbon's table does not know: its figure is a fallback, said in words and numbers
    assert estimated["cpu_power_w"] == 85.0 and estimated["cpu_power_fallback"]
    assert estimated["cpu_power_source"].startswith("model: 85 W, FALLBACK: Some Xeon unknown to CodeCarbon")
    assert estimated["country_iso_code"] == "FRA" and estimated["measure_power_secs"] == 2.0
    measured = hardware_provenance(tracker(rapl_cpu), settings)
    assert measured["power_source"] == "counter (RAPL)" and measured["cpu_power_w"] is None
    assert not measured["cpu_power_fallback"]
    known = CPU(output_dir=str(tmp_path), mode="cpu_load", model="Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz",
                tdp=65, tracking_mode="process")
    table = hardware_provenance(tracker(known), settings)
    assert table["cpu_power_source"] == "model: 65 W, CodeCarbon's CPU table (TDP of Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz)"
    own = hardware_provenance(tracker(load_cpu), TrackerSettings(cpu_power_watts=30.0, ram_power_watts=4.0))
    assert own["cpu_power_w"] == 30.0 and "the user's own figure (--cpu_power_watts)" in own["cpu_power_source"]
    assert own["ram_power_w"] == 4.0 and "--ram_power_watts" in own["ram_power_source"]
    line = describe_provenance(estimated)
    assert "\n" not in line and "FALLBACK" in line and "85 W" in line and "FRA" in line
    assert describe_provenance(None) == "energy not tracked"


def test_real_provenance_is_plain_json_with_every_identity_key(tmp_path):
    recorder = EmissionsRecorder(tmp_path / "r.csv", TrackerSettings(country_iso_code="FRA"), "t", per_task=True)
    provenance = recorder.provenance()
    recorder.stop()
    assert json.loads(json.dumps(provenance)) == provenance
    assert set(PROVENANCE_IDENTITY) - {"device"} <= set(provenance)
    assert provenance["cpu_power_source"].startswith(("counter (", "model: "))
    assert provenance["cpu_model"]


# --------------------------------------------------------------------------- real CodeCarbon, end to end
def test_real_codecarbon_resume_between_flushes_keeps_every_epoch(tmp_path, mnist_dir, monkeypatch):
    """The issue's reproduction: end_iter 6, valid_freq 3, killed after the epoch-5 checkpoint."""
    epoch_seconds = []
    real_train = training.train_epoch

    def slow_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        time.sleep(0.6)   # an epoch counted twice adds more than CodeCarbon's overhead on six tasks
        result = real_train(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        return result

    real_call, calls = Checkpointer.__call__, {"n": 0}

    def killing_call(self, run):
        real_call(self, run)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    # Each training task's window: from before CodeCarbon starts it to after it stops it. A task's
    # tracked duration lies inside its window whatever the load, so the windows bound the total.
    windows, real_start, real_stop = [], EmissionsRecorder.start_task, EmissionsRecorder.stop_task

    def timed_start(self, phase):
        self.test_window = (phase, time.perf_counter())
        real_start(self, phase)

    def timed_stop(self):
        record = real_stop(self)
        phase, start = self.test_window
        if phase == "training" and record is not None:
            windows.append(time.perf_counter() - start)
        return record

    monkeypatch.setattr(training, "train_epoch", slow_train_epoch)
    monkeypatch.setattr(Checkpointer, "__call__", killing_call)
    monkeypatch.setattr(EmissionsRecorder, "start_task", timed_start)
    monkeypatch.setattr(EmissionsRecorder, "stop_task", timed_stop)
    config = co2_config(batch_size=256)
    job = TrainingJob(config=config, seeds=[0], data_dir=mnist_dir, save_dir=tmp_path, device="cpu",
                      show_progress=False, tracker=TrackerSettings(country_iso_code="FRA"))
    with pytest.raises(KeyboardInterrupt):
        run_job(job)
    assert len(epoch_seconds) == 5 and checkpoint_path(tmp_path, config).exists()

    # Other tracker settings are refused, in one line, before any work.
    job.resume = True
    job.tracker = TrackerSettings(country_iso_code="CAN")
    with pytest.raises(UserError, match="country_iso_code 'FRA' then, 'CAN' now"):
        run_job(job)
    assert len(epoch_seconds) == 5

    job.tracker = TrackerSettings(country_iso_code="FRA")
    [path] = run_job(job)
    results = torch.load(path, weights_only=True)
    tracked = results["emissions"][6 * 490]["duration"]
    assert len(epoch_seconds) == 6
    # Tracked training time is the six epochs, none lost (not four): at least the epochs' own
    # time; none twice: at most the six tasks' windows (a doubled epoch would add one more epoch,
    # 0.6 s or longer, beyond what the windows hold). Neither bound depends on the load.
    assert len(windows) == 6
    assert sum(epoch_seconds) - 0.01 <= tracked <= sum(windows) + 0.01
    assert results["energy_provenance"]["country_iso_code"] == "FRA"
    assert results["energy_provenance"]["device"] == "cpu"
    assert results["energy_by_phase"]["checkpoint"]["duration"] > 0
    assert results["energy_by_phase"]["evaluation"]["duration"] == 0   # plain CO2 mode
    rows = read_csv(emissions_csv_path(tmp_path, config))
    assert [int(r["images_seen"]) for r in rows] == [3 * 490, 6 * 490]
    assert float(rows[-1]["duration"]) == pytest.approx(tracked)
    assert not [p for p in path.parent.iterdir() if ".checkpoint." in p.name]


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_co2_evaluate_gives_accuracies_and_training_energy(tmp_path, mnist_dir):
    import lottery_ticket

    code = lottery_ticket.main(["--co2_evaluate", "--train_type", "regular", "--end_iter", "2",
                                "--batch_size", "128", "--seeds", "0", "--device", "cpu", "--no_progress",
                                "--data_dir", str(mnist_dir), "--save_dir", str(tmp_path),
                                "--country_iso_code", "FRA", "--checkpoint_every", "2"])
    assert code == 0
    config = RunConfig(train_type="regular", end_iter=2, batch_size=128, co2_tracking_mode=True, co2_evaluate=True)
    results = torch.load(results_path(tmp_path, config), weights_only=True)
    assert results["args"]["co2_tracking_mode"] and results["args"]["co2_evaluate"]
    assert list(results["val_accuracy"]) == list(results["co2"]) == [490, 980]
    assert list(results["evaluation_emissions"]) == [490, 980]
    phases = results["energy_by_phase"]
    assert phases["training"]["duration"] > 0 and phases["evaluation"]["duration"] > 0
    assert results["emissions"][980] == phases["training"]
    assert results["energy_provenance"]["power_source"]


# --------------------------------------------------------------------------- cheap checkpoints
def test_checkpoints_rewrite_masks_and_best_weights_only_when_they_change(splits, tmp_path, monkeypatch):
    writes = []
    real_save = checkpoint_module.atomic_torch_save

    def counting_save(obj, path):
        writes.append(path.name)
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", counting_save)
    config = RunConfig(end_iter=4, batch_size=128, prune_iterations=2, prune_percent=50.0, lr=1e-2)
    run = LotteryRun(config, splits, torch.device("cpu"))
    checkpointer = Checkpointer(tmp_path / "c.checkpoint.pt")
    best_tags = []
    run.run(checkpoint=lambda r: (best_tags.append(r.state_dict()["parts"]["best"]["tag"]), checkpointer(r)),
            show_progress=False)

    main = [w for w in writes if w == "c.checkpoint.pt"]
    masks = [w for w in writes if w.startswith("c.checkpoint.masks-")]
    best = [w for w in writes if w.startswith("c.checkpoint.best-")]
    assert len(main) == 8
    # Masks: the first save, then once per cycle change (cycle end then new cycle, both at the
    # save after epoch 4 of a cycle).
    assert len(masks) == len(set(masks)) == 3
    # Best weights: only when they changed since the last save (a new best, or none after pruning).
    changes = 1 + sum(a != b for a, b in zip(best_tags, best_tags[1:]))
    assert len(best) == changes < 8
    checkpointer.remove()
    assert not list(tmp_path.iterdir())


def test_a_kill_between_side_file_and_main_file_leaves_a_loadable_checkpoint(splits, tmp_path, monkeypatch):
    config = RunConfig(end_iter=3, batch_size=128, prune_iterations=2, prune_percent=50.0)
    run = LotteryRun(config, splits, torch.device("cpu"))
    checkpointer = Checkpointer(tmp_path / "c.checkpoint.pt")
    saved = {}

    def checkpoint(r):
        checkpointer(r)
        if r.cycle == 1 and r.epoch == 0:   # the cycle-end save: masks changed
            saved["state"] = r.state_dict()
            raise Interrupted

    with pytest.raises(Interrupted):
        run.run(checkpoint=checkpoint, show_progress=False)
    real_save = checkpoint_module.atomic_torch_save

    def dying_save(obj, path):
        if path.name == "c.checkpoint.pt":
            raise KeyboardInterrupt   # killed after the side files, before the main file
        real_save(obj, path)

    run.epoch = 0
    run.masks = {k: torch.zeros_like(v) for k, v in run.masks.items()}   # new masks -> new side file
    run.cycle = 5
    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer(run)
    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", real_save)
    loaded = Checkpointer(tmp_path / "c.checkpoint.pt").load()
    assert loaded["cycle"] == 1
    assert all(torch.equal(loaded["parts"]["masks"]["value"]["masks"][k], saved["state"]["parts"]["masks"]["value"]["masks"][k])
               for k in run.masks)


def test_checkpoint_every_n_epochs_gives_the_same_results(splits):
    config = RunConfig(end_iter=5, batch_size=128, prune_iterations=2, prune_percent=50.0)
    results = {}
    for every in (1, 2):
        run = LotteryRun(config, splits, torch.device("cpu"))
        epochs = []
        run.run(checkpoint=lambda r: epochs.append((r.cycle, r.epoch)), show_progress=False, checkpoint_every=every)
        results[every] = (run.logs["val_accuracy"], run.results({})["final_state_dict"], epochs)
    assert results[1][2] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 5)]
    assert results[2][2] == [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 5)]
    assert results[1][0] == results[2][0]
    assert all(torch.equal(results[1][1][k], results[2][1][k]) for k in results[1][1])
