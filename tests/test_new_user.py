"""What a new user hit (issue 17), by behaviour: aliases in every script, replays that would
collide, selections validated before any work, settings that would be dropped, damaged tables,
silent side files, stale temporaries, full disks and the folders a failed command leaves."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time

import pytest
import torch

import lottery_ticket
import post_training_inference
from archs.experiment import TrainingJob, run_job
from data.report.inference_tables import read_rows
from data.paths import cycle_ticket_path, inference_dir, inference_runs_csv_path, results_path
from data.report.plot_cli import plot_parser
from data.runs import RunConfig
from data.selection import find_runs, group_labels
from utils import ProcessLock, UserError

DIGITS = dict(arch_type="fc1", dataset="digits", end_iter=1, batch_size=64)


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """fc1 on digits: pp50x2 and the dense baseline, seed 0, one epoch per cycle."""
    save_dir = tmp_path_factory.mktemp("saves")
    for config in (RunConfig(prune_percent=50, **DIGITS), RunConfig(train_type="regular", **DIGITS)):
        run_job(TrainingJob(config=config, seeds=[0], data_dir=save_dir / "absent", save_dir=save_dir,
                            device="cpu", show_progress=False))
    return save_dir


def copy_saves(saves, tmp_path):
    shutil.copytree(saves / "fc1", tmp_path / "fc1")
    return tmp_path


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lottery_ticket.run_cli(lambda: main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def replay_args(save_dir, *more):
    return ["--arch_type", "fc1", "--dataset", "digits", "--save_dir", str(save_dir), "--mode", "dense",
            "--passes", "1", "--country_iso_code", "FRA", "--no_progress", *more]


# ------------------------------------------------------------------ aliases
@pytest.mark.parametrize("script", ["lottery_ticket_performance", "lottery_ticket_emissions",
                                    "post_training_inference_emissions", "inference_emission"])
def test_every_figure_script_reads_the_runs_of_an_alias(script):
    module = __import__(script)
    args = module.build_parser().parse_args(["--arch_type", "lenet300_100"])
    assert args.arch_type == "fc1"


def test_the_replay_finds_runs_trained_under_an_alias(saves, capsys):
    argv = ["--arch_type", "lenet300_100", *replay_args(saves, "--evaluate_only")[2:]]
    code, out, err = run(post_training_inference.main, argv, capsys)
    assert code == 0, err
    assert "pp50x2 seed 0" in out and "pp0x1 seed 0" in out


# ------------------------------------------------------------------ selections before any work
def test_a_negative_cycle_is_a_flag_error(saves, capsys):
    code, _, err = run(post_training_inference.main, replay_args(saves, "--cycle", "-1"), capsys)
    assert code == 2 and "--cycle: -1 is below 0" in err and len(err.strip().splitlines()) == 1


def test_a_cycle_no_ticket_has_is_refused_before_any_replay(saves, tmp_path, capsys):
    save_dir = copy_saves(saves, tmp_path)
    code, _, err = run(post_training_inference.main, replay_args(save_dir, "--cycle", "99"), capsys)
    assert code == 1 and "no selected run has a cycle 99" in err and "--cycle 1 or less" in err
    assert not inference_dir(save_dir, "fc1", "digits").exists()   # nothing replayed, nothing written


def test_settings_a_dense_baseline_would_drop_are_refused(tmp_path, capsys):
    code, _, err = run(lottery_ticket.main, ["--train_type", "regular", "--prune_type", "reinit",
                                             "--dataset", "digits", "--save_dir", str(tmp_path / "s")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--prune_type reinit: no effect with --train_type regular" in err
    assert not (tmp_path / "s").exists()


def test_labels_of_runs_with_and_without_an_output_layer_rate():
    labels = group_labels([RunConfig(output_prune_percent=45.0), RunConfig()])
    assert sorted(labels.values()) == ["pp90x2, output layer 45% per round",
                                       "pp90x2, output layer at the same rate"]
    for f in dataclasses.fields(RunConfig):   # every setting can be said at its default
        if f.metadata["words"] is not None and f.name != "ticket_source":
            assert isinstance(f.metadata["words"](f.default), str)


# ------------------------------------------------------------------ two replays at once
def test_a_second_replay_gets_one_line_while_the_first_measures(saves, tmp_path, capsys):
    save_dir = copy_saves(saves, tmp_path)
    lock = inference_dir(save_dir, "fc1", "digits") / "replay_cpu.lock"
    with ProcessLock(lock, "the first replay"):
        code, _, err = run(post_training_inference.main, replay_args(save_dir), capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "being written by process" in err and "--wait" in err
    assert not inference_runs_csv_path(save_dir, "fc1", "digits").exists()


def test_with_wait_the_second_replay_starts_when_the_first_ends(saves, tmp_path, capsys):
    save_dir = copy_saves(saves, tmp_path)
    lock = ProcessLock(inference_dir(save_dir, "fc1", "digits") / "replay_cpu.lock", "the first replay")
    lock.acquire()
    released = []
    timer = threading.Timer(1.5, lambda: (released.append(time.monotonic()), lock.release()))
    timer.start()
    code, out, err = run(post_training_inference.main, replay_args(save_dir, "--wait"), capsys)
    timer.join()
    assert code == 0, err
    assert "Waiting for another replay to end" in out
    assert len(read_rows(inference_runs_csv_path(save_dir, "fc1", "digits"))) == 2   # both runs


# ------------------------------------------------------------------ damaged tables
def test_a_cut_table_and_a_garbage_table_are_refused_and_kept(saves, tmp_path, capsys):
    save_dir = copy_saves(saves, tmp_path)
    assert run(post_training_inference.main, replay_args(save_dir), capsys)[0] == 0
    table = inference_runs_csv_path(save_dir, "fc1", "digits")
    whole = table.read_bytes()
    for damaged in (whole[:-150], b"garbage\n"):
        table.write_bytes(damaged)
        code, _, err = run(post_training_inference.main, replay_args(save_dir), capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1
        assert ("cut short" in err) if damaged != b"garbage\n" else ("is not an inference table" in err)
        assert table.read_bytes() == damaged   # refused, not replaced


# ------------------------------------------------------------------ leftovers
def test_readers_skip_checkpoint_side_files_without_a_word(saves, tmp_path, caplog):
    save_dir = copy_saves(saves, tmp_path)
    folder = save_dir / "fc1" / "digits"
    stem = RunConfig(prune_percent=50, seed=0, **DIGITS).stem
    torch.save({"parts": {}}, folder / f"{stem}.checkpoint.pt")
    torch.save({"value": torch.ones(3)}, folder / f"{stem}.checkpoint.masks-c1.pt")
    with caplog.at_level(logging.WARNING, logger="lottery"):
        found = find_runs(save_dir, "fc1", "digits")
    assert len(found) == 2 and caplog.records == []


def test_a_run_removes_the_temporaries_a_kill_left(tmp_path):
    config = RunConfig(prune_percent=50, **DIGITS)
    out = results_path(tmp_path, config)
    stale = [cycle_ticket_path(out, 0).with_name(".cycle0.pt.4242.abcd1234.tmp"),
             out.with_name(f".{out.name}.4242.0badf00d.tmp")]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    run_job(TrainingJob(config=config, seeds=[0], data_dir=tmp_path / "absent", save_dir=tmp_path,
                        device="cpu", show_progress=False, resume=True))
    assert out.exists() and not any(path.exists() for path in stale)


def test_a_failed_command_leaves_no_empty_folders(tmp_path, monkeypatch):
    import archs.experiment

    def offline(name, data_dir):
        (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)   # what torchvision leaves
        raise UserError("MNIST is not in data and cannot be downloaded (offline)")

    (tmp_path / "data").mkdir()
    monkeypatch.setattr(archs.experiment, "load_dataset", offline)
    with pytest.raises(UserError, match="offline"):
        run_job(TrainingJob(config=RunConfig(end_iter=1), seeds=[0], data_dir=tmp_path / "data",
                            save_dir=tmp_path / "saves", device="cpu", show_progress=False))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data"]


# ------------------------------------------------------------------ full disk
def test_too_little_space_is_refused_before_training(tmp_path, monkeypatch):
    import data.store

    monkeypatch.setattr(data.store, "free_bytes", lambda folder: 1000)
    with pytest.raises(UserError, match=r"needs about [0-9.]+ MB in .*digits, but only 0.0 MB are free"):
        run_job(TrainingJob(config=RunConfig(prune_percent=50, **DIGITS), seeds=[0],
                            data_dir=tmp_path / "absent", save_dir=tmp_path, device="cpu",
                            show_progress=False))
    assert not list(tmp_path.rglob("*.pt"))


def test_a_write_that_does_not_fit_is_one_line_and_the_previous_file_stays(tmp_path, monkeypatch):
    import data.store

    target = tmp_path / "results.pt"
    torch.save({"before": torch.zeros(2)}, target)
    before = target.read_bytes()

    def full(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed "
                           "writing file data/0: file write failed")

    monkeypatch.setattr(data.store.torch, "save", full)
    with pytest.raises(UserError, match=r"the disk holding .* is full: writing results.pt needs about "
                                        r"4.0 MB"):
        data.store.atomic_torch_save({"weights": torch.zeros(1024, 1024)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.pt"]
