"""lottery_ticket.py as a user meets it: --help, bad input, and a tiny end-to-end run of each model."""
import subprocess
import sys

import pytest
import torch

import lottery_ticket
from tests.conftest import ROOT


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "lottery_ticket.py", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def run_main(argv, capsys):
    """lottery_ticket.py in-process, as `python3 lottery_ticket.py ...` would exit."""
    with pytest.raises(SystemExit) as exit_info:
        lottery_ticket.run_cli(lambda: lottery_ticket.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_explains_every_flag():
    result = run_script("--help")
    assert result.returncode == 0
    for flag in ("--arch_type", "--dataset", "--prune_percent", "--prune_iterations", "--lr", "--decay",
                 "--batch_size", "--end_iter", "--print_freq", "--valid_freq", "--train_type",
                 "--co2_tracking_mode", "--seeds", "--data_dir", "--save_dir", "--device", "--resume",
                 "--country_iso_code"):
        assert flag in result.stdout
    assert "--end_epoch" in result.stdout  # the original's name is still accepted


BAD_FLAGS = [
    (["--arch_type", "vgg7"], "invalid choice: 'vgg7'"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--prune_percent", "100"], "outside [0, 100)"),
    (["--prune_percent", "-5"], "outside [0, 100)"),
    (["--prune_iterations", "0"], "must be at least 1"),
    (["--batch_size", "0"], "must be at least 1"),
    (["--end_iter", "-2"], "must be at least 1"),
    (["--end_epoch", "zero"], "not a whole number"),
    (["--lr", "0"], "greater than 0"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS)
def test_bad_flags_get_one_line_and_exit_code_2(argv, message, capsys):
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_flag_through_a_real_process_has_no_traceback():
    result = run_script("--prune_percent", "150")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "lottery_ticket.py: error: argument --prune_percent: 150 is outside [0, 100): give the percent "
        "of surviving weights to prune each cycle, e.g. 90 (see --help)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(tmp_path, mnist_dir, capsys):
    code, _, err = run_main(["--device", "cuda", "--data_dir", str(mnist_dir), "--save_dir", str(tmp_path)], capsys)
    assert code == 1 and err.strip() == ("error: --device cuda was asked for but no CUDA GPU is available; "
                                         "use --device cpu or --device auto")


def test_unwritable_save_directory(tmp_path, mnist_dir, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_main(["--save_dir", str(blocker / "saves"), "--data_dir", str(mnist_dir)], capsys)
    assert code == 1 and err.startswith("error: cannot write to the save directory") and "Traceback" not in err


def test_dataset_that_cannot_be_downloaded_says_where_to_put_it(tmp_path):
    result = run_script("--data_dir", str(tmp_path / "empty"), "--save_dir", str(tmp_path / "saves"),
                        "--device", "cpu", "--end_iter", "1", "--seeds", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not be downloaded" in result.stderr
    assert str(tmp_path / "empty" / "MNIST" / "raw") in result.stderr
    assert not list((tmp_path / "saves").rglob("*.pt"))


@pytest.mark.parametrize("arch", ["fc1", "lenet5", "resnet18"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_end_to_end_for_each_architecture_and_dataset(arch, dataset, tmp_path, request, capsys):
    data_dir = request.getfixturevalue(f"small_{dataset}_dir")
    code, out, err = run_main(["--arch_type", arch, "--dataset", dataset, "--data_dir", str(data_dir),
                               "--save_dir", str(tmp_path), "--device", "cpu", "--end_iter", "1",
                               "--prune_iterations", "2", "--prune_percent", "80", "--batch_size", "64",
                               "--seeds", "7", "--no_progress"], capsys)
    assert code == 0, err
    path = tmp_path / arch / dataset / f"pp80x2_seed7_co2False_{dataset}_bs64_ep1.pt"
    results = torch.load(path, weights_only=True)
    assert [round(c["percent_remaining"], 1) for c in results["cycles"]] == [100.0, 20.0]
    assert "Seed 7 summary" in out and "compression rate: 5.00x" in out
    first_weight = results["prunable"][0]
    assert results["final_state_dict"][first_weight].shape == results["initial_state_dict"][first_weight].shape
