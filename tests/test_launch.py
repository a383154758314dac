"""Launching a study as jobs: study files, SLURM scripts, local jobs preempted, killed and resumed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import lottery_ticket
from archs.launch.ledger import LedgerEntry, close_ledger_entry, open_ledger_entry, shared_hardware
from archs.launch.local import gpu_for_next_job, local_parallelism, visible_gpus
from archs.launch.settings import parse_additional, parse_memory, parse_slurm_time
from archs.launch.study import expand_study, read_study, study_seeds
from archs.launch.tasks import TrainingTask
from tests.conftest import ROOT
from data.paths import checkpoint_path, lock_path, results_path
from data.runs import RunConfig, run_key
from utils import UserError

STUDY = {"configurations": [{"prune_percent": 50, "prune_iterations": 3}, {"train_type": "regular"}],
         "seeds": [0, 1]}
TINY_FLAGS = ["--end_iter", "2", "--batch_size", "64", "--device", "cpu", "--no_progress"]
LOG_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
            "non_zeros_weights")


# --------------------------------------------------------------------------- study files
def test_a_study_crosses_configurations_with_its_axes_and_overrides_the_command_line():
    base = RunConfig(batch_size=64, end_iter=3, prune_percent=20.0, prune_iterations=4)
    study = {"configurations": [{"prune_percent": 90, "prune_iterations": 2},
                                {"prune_percent": 68, "prune_iterations": 3},
                                {"train_type": "regular"}],
             "co2_tracking_mode": [False, True], "lr": 0.001}
    configs = expand_study(base, study)
    assert [c.stem for c in configs] == [
        "pp90x2_seed0_co2False_mnist_lr0.001_bs64_ep3", "pp90x2_seed0_co2True_mnist_lr0.001_bs64_ep3",
        "pp68x3_seed0_co2False_mnist_lr0.001_bs64_ep3", "pp68x3_seed0_co2True_mnist_lr0.001_bs64_ep3",
        "pp0x1_seed0_co2False_mnist_lr0.001_bs64_ep3", "pp0x1_seed0_co2True_mnist_lr0.001_bs64_ep3"]
    # An entry's own value beats the axis; runs that come out the same are kept once.
    same = expand_study(base, {"configurations": [{"co2_tracking_mode": True}, {}], "co2_tracking_mode": [True]})
    assert [c.stem for c in same] == ["pp20x4_seed0_co2True_mnist_bs64_ep3"]
    # Without "configurations", the command line's configuration is crossed with the axes.
    assert [c.lr for c in expand_study(base, {"lr": [0.1, 0.01]})] == [0.1, 0.01]
    assert study_seeds({"seeds": [3, 1]}, [0]) == [3, 1]
    assert study_seeds({}, [0, 4]) == [0, 4]


@pytest.mark.parametrize("study,message", [
    ({"configurations": [{"prune_precent": 90}]},
     "study.json: configurations[0]: 'prune_precent' is not a setting; settings: arch_type, dataset"),
    ({"configurations": [{"prune_percent": 100}]},
     "study.json: configurations[0]: prune_percent: 100 is outside [0, 100)"),
    ({"configurations": [{"prune_percent": 50, "prune_iterations": 1}]},
     "study.json: configurations[0]: --train_type lt with --prune_iterations 1 prunes nothing"),
    ({"co2_tracking_mode": ["maybe"]}, "study.json: co2_tracking_mode: co2_tracking_mode: 'maybe' is not true"),
    ({"configurations": [{"seed": 3}]}, 'study.json: configurations[0]: give seeds with "seeds": [0, 1, ...]'),
    ({"configurations": {"prune_percent": 90}}, 'study.json: "configurations" must be a non-empty list'),
    ({"runs": 3}, "study.json: unknown key 'runs'"),
    ({"lr": []}, "study.json: lr lists no value"),
])
def test_a_bad_study_is_refused_in_one_line_naming_the_entry(study, message):
    with pytest.raises(UserError) as error:
        expand_study(RunConfig(), study, source="study.json")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_bad_seeds_and_bad_json_are_refused(tmp_path):
    with pytest.raises(UserError, match=r'"seeds" must be a non-empty list of whole numbers'):
        study_seeds({"seeds": [0, "1"]}, [0])
    with pytest.raises(UserError, match="lists a seed more than once"):
        study_seeds({"seeds": [2, 2]}, [0])
    broken = tmp_path / "study.json"
    broken.write_text('{"configurations": [}')
    with pytest.raises(UserError, match=r"study.json is not valid JSON \(line 1, column 21"):
        read_study(broken)


def test_a_study_over_networks_and_datasets_keeps_every_run():
    base = RunConfig(end_iter=2)
    configs = expand_study(base, {"arch_type": ["fc1", "lenet5", "conv2"]})
    assert [c.arch_type for c in configs] == ["fc1", "lenet5", "conv2"]
    assert len({c.stem for c in configs}) == 1 and len({run_key(c) for c in configs}) == 3
    grid = expand_study(base, {"arch_type": ["fc1", "conv2"], "dataset": ["mnist", "digits"]})
    assert [(c.arch_type, c.dataset) for c in grid] == [("fc1", "mnist"), ("fc1", "digits"),
                                                         ("conv2", "mnist"), ("conv2", "digits")]


def test_a_binary_study_file_is_refused_in_one_line(tmp_path, capsys):
    binary = tmp_path / "study.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(UserError) as error:
        read_study(binary)
    assert str(error.value) == (f'{binary} is not a text file (byte 0 is not UTF-8); a study file is JSON '
                                'such as {"configurations": [{"prune_percent": 90}]}')
    code, out, err = run_main(["--study", str(binary), "--save_dir", str(tmp_path)], capsys)
    assert code == 1 and err == f"error: {error.value}\n" and out == ""


# --------------------------------------------------------------------------- pure settings
def test_slurm_times_memory_and_additional_options():
    assert [parse_slurm_time(t) for t in ("90", "1:30:00", "45:30", "2-00", "1-02:03:04")] == [
        90, 90, 46, 2880, 1564]   # seconds round up to the next minute
    for bad in ("soon", "0", "1:2:3:4"):
        with pytest.raises(ValueError):
            parse_slurm_time(bad)
    assert parse_memory("16g") == "16G" and parse_memory("8000M") == "8000M"
    with pytest.raises(ValueError, match="16 GB"):
        parse_memory("16 GB")
    assert parse_additional("qos=high") == ("qos", "high")
    assert parse_additional("--mail_type=END") == ("mail-type", "END")
    assert parse_additional("exclusive") == ("exclusive", True)
    with pytest.raises(ValueError):
        parse_additional("=x")


def test_each_local_job_gets_the_least_busy_gpu():
    gpus = visible_gpus(None, 2)
    assert gpus == ["0", "1"]
    assert visible_gpus("3,GPU-5a1b", 2) == ["3", "GPU-5a1b"]   # the parent's own view is kept
    assert visible_gpus("", 0) == [] and gpu_for_next_job([], []) is None
    busy = []
    for _ in range(4):
        busy.append(gpu_for_next_job(busy, gpus))
    assert busy == ["0", "1", "0", "1"]
    assert gpu_for_next_job(["1", "0", "0"], gpus) == "1"   # job on GPU 1 ended first: it gets the next


def test_measured_jobs_never_share_hardware_unless_allowed():
    assert local_parallelism(None, 0, False, False) == (1, None)
    assert local_parallelism(None, 4, True, False) == (4, None)
    assert local_parallelism(2, 0, False, False) == (2, None)
    slots, note = local_parallelism(2, 0, True, False)
    assert slots == 1 and note.startswith("note: measured jobs (CO2 tracking, inference) run one job at a "
                                          "time on the CPU, not 2 at once")
    slots, note = local_parallelism(3, 2, True, False)
    assert slots == 2 and "one job per GPU (2)" in note
    slots, warning = local_parallelism(2, 0, True, True)
    assert slots == 2 and warning.startswith("warning: 2 measured jobs at once share hardware")


def test_the_ledger_says_which_jobs_overlapped_a_run_on_this_host(tmp_path):
    import socket

    host = socket.gethostname()

    def entry(run, start, end, gpu=None, on=host):
        path = tmp_path / f"{run}.{start}.json"
        path.write_text(json.dumps(LedgerEntry(path, run, on, 1, gpu, start, end).as_dict()))

    entry("a", 10, 20, gpu="0")
    entry("a", 30, None, gpu="0")     # a's second attempt, after a preemption, still running
    entry("b", 15, 25, gpu="0")       # overlaps a's first attempt, same GPU
    entry("c", 26, 29, gpu="1")       # between a's attempts, after b: shared nothing
    entry("d", 35, None, gpu="1")     # overlaps a's second attempt, other GPU
    entry("e", 12, 40, on="other-node")
    (tmp_path / "cut.json").write_text('{"run": "f", "ho')   # a file cut short by a crash
    assert shared_hardware(tmp_path, "a", now=50) == {
        "concurrent_runs": ["b", "d"], "shared_gpu_with": ["b"], "attempts": 2}
    assert shared_hardware(tmp_path, "c", now=50)["concurrent_runs"] == []


def test_a_dead_jobs_open_entry_is_closed_when_the_next_job_starts(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "gone.json"
    path.write_text(json.dumps({"run": "gone", "host": socket.gethostname(), "pid": dead.pid, "gpu": None,
                                "start": time.time() - 100, "end": None}))
    before = time.time()
    new = open_ledger_entry(tmp_path, "new", None)
    after = time.time()
    # Dead by now, but since when is unknown: it counts as running until this moment.
    assert before <= json.loads(path.read_text())["end"] <= after
    assert new.start <= before          # a job's interval starts with its process (its imports)
    assert shared_hardware(tmp_path, "new")["concurrent_runs"] == ["gone"]
    close_ledger_entry(new)
    assert json.loads(new.path.read_text())["end"] >= after
    later = tmp_path / "later.json"
    later.write_text(json.dumps({"run": "later", "host": socket.gethostname(), "pid": os.getpid(),
                                 "gpu": None, "start": time.time() + 1, "end": None}))
    assert shared_hardware(tmp_path, "later", now=time.time() + 2)["concurrent_runs"] == []


def test_runs_of_one_name_on_two_networks_are_two_runs_in_the_ledger(tmp_path):
    fc1, conv2 = (run_key(RunConfig(arch_type=arch)) for arch in ("fc1", "conv2"))
    entries = [open_ledger_entry(tmp_path, run, None) for run in (fc1, conv2)]
    assert shared_hardware(tmp_path, fc1) == {"concurrent_runs": [conv2], "shared_gpu_with": [], "attempts": 1}
    for entry in entries:
        close_ledger_entry(entry)
    assert len(list(tmp_path.glob("*.json"))) == 2


# --------------------------------------------------------------------------- command line
def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lottery_ticket.run_cli(lambda: lottery_ticket.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("argv,message", [
    (["--jobs", "2"], "error: --jobs is for --launcher local; add --launcher local or leave it out"),
    (["--slurm_partition", "gpu", "--launcher", "local"], "error: --slurm_partition is for --launcher slurm"),
    (["--launcher", "local", "--no_wait"], "error: --no_wait is for --launcher slurm (the local launcher keeps "
                                           "the queue itself, so it must keep running"),
    (["--study", "missing.json"], "error: cannot read the study file missing.json"),
])
def test_launcher_flags_that_do_nothing_are_refused(argv, message, capsys, tmp_path):
    code, _, err = run_main([*argv, "--save_dir", str(tmp_path)], capsys)
    assert code == 1 and err.startswith(message) and len(err.strip().splitlines()) == 1


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{capture}/$(basename "$1")"
echo "Submitted batch job 4242"
"""


def fake_slurm(tmp_path, monkeypatch):
    """sbatch and srun stand-ins first on PATH: sbatch keeps each script in CAPTURE and answers
    job 4242; a test adds sacct when it needs one."""
    bin_dir, capture = tmp_path / "bin", tmp_path / "captured"
    bin_dir.mkdir()
    capture.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(capture=capture))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir, capture


def fake_sacct(bin_dir, job_ids, state="PENDING"):
    lines = "".join(f"echo '{job_id}|{state}|'\n" for job_id in job_ids)
    (bin_dir / "sacct").write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\n{lines}")
    (bin_dir / "sacct").chmod(0o755)


def test_slurm_submission_writes_the_resources_into_the_sbatch_script(tmp_path, mnist_dir, monkeypatch, capsys):
    """sbatch and srun are stand-ins that keep the script and answer a job id."""
    bin_dir, capture = fake_slurm(tmp_path, monkeypatch)
    study = tmp_path / "study.json"
    study.write_text(json.dumps({**STUDY, "co2_tracking_mode": [False, True]}))
    save_dir = tmp_path / "saves"
    code, out, err = run_main(
        ["--study", str(study), *TINY_FLAGS, "--data_dir", str(mnist_dir), "--save_dir", str(save_dir),
         "--launcher", "slurm", "--no_wait", "--slurm_partition", "gpu", "--slurm_time", "1:30:00",
         "--slurm_gpus_per_job", "1", "--slurm_cpus_per_job", "4", "--slurm_mem", "16G",
         "--slurm_array_parallelism", "3", "--slurm_additional", "qos=high", "exclusive"], capsys)
    assert code == 0, err
    [script] = capture.iterdir()
    lines = script.read_text().splitlines()
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                     "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G", "#SBATCH --array=0-7%3",
                     "#SBATCH --qos=high", "#SBATCH --exclusive", "#SBATCH --nodes=1",
                     "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=lottery_ticket",
                     "#SBATCH --signal=USR2@90", "#SBATCH --open-mode=append"):
        assert expected in lines, expected
    assert f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" in lines
    assert any(line.startswith("srun --unbuffered") and line.endswith(
        f"-u -m submitit.core._submit {save_dir.resolve() / 'launch' / 'jobs'}") for line in lines)
    assert "8 run(s): 0 finished (skipped), 0 queued or running (skipped), 8 to launch" in out
    assert "Submitted 8 job(s) to SLURM as array 4242 (at most 3 at once)" in out
    assert "  4242_7  fc1/mnist/pp0x1_seed1_co2True_mnist_bs64_ep2" in out
    assert "Not waiting (--no_wait)" in out
    # The same command again, while SLURM still holds the jobs: nothing is submitted twice.
    fake_sacct(bin_dir, [f"4242_{i}" for i in range(8)])
    code, out, err = run_main(
        ["--study", str(study), *TINY_FLAGS, "--data_dir", str(mnist_dir), "--save_dir", str(save_dir),
         "--launcher", "slurm", "--no_wait"], capsys)
    assert code == 0, err
    assert "8 run(s): 0 finished (skipped), 8 queued or running (skipped), 0 to launch" in out
    assert "not submitted again: fc1/mnist/pp0x1_seed1_co2True_mnist_bs64_ep2 is SLURM job 4242_7" in out
    assert len(list(capture.iterdir())) == 1
    # What each array task will run: its own run, resuming, with the job's launch record.
    from submitit.core.utils import DelayedSubmission

    task = DelayedSubmission.load(save_dir / "launch" / "jobs" / "4242_3_submitted.pkl").function
    assert isinstance(task, TrainingTask)
    assert task.config.stem == "pp50x3_seed1_co2True_mnist_bs64_ep2"
    assert task.job.resume and task.launcher == "slurm" and task.parallel_jobs == 3


def test_a_study_over_networks_is_submitted_and_skipped_run_by_run(tmp_path, mnist_dir, monkeypatch, capsys):
    bin_dir, capture = fake_slurm(tmp_path, monkeypatch)
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"arch_type": ["fc1", "conv2"], "seeds": [0]}))
    argv = ["--study", str(study), *TINY_FLAGS, "--data_dir", str(mnist_dir), "--save_dir",
            str(tmp_path / "saves"), "--launcher", "slurm", "--no_wait"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "2 run(s): 0 finished (skipped), 0 queued or running (skipped), 2 to launch" in out
    assert "  4242_0  fc1/mnist/pp90x2_seed0_co2False_mnist_bs64_ep2" in out
    assert "  4242_1  conv2/mnist/pp90x2_seed0_co2False_mnist_bs64_ep2" in out
    fake_sacct(bin_dir, ["4242_0", "4242_1"], "RUNNING")
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "2 run(s): 0 finished (skipped), 2 queued or running (skipped), 0 to launch" in out
    assert "Job states from sacct" in out
    assert len(list(capture.iterdir())) == 1


def test_a_launched_run_finds_its_pretrained_state_under_its_own_save_dir(tmp_path, mnist_dir, monkeypatch,
                                                                          capsys):
    from archs import build_model

    fake_slurm(tmp_path, monkeypatch)
    save_dir = tmp_path / "elsewhere"
    (save_dir / "pretrained").mkdir(parents=True)
    torch.save(build_model("fc1", 1, 28, 10).state_dict(), save_dir / "pretrained" / "fc1.pt")
    code, out, err = run_main(["--init_from", str(save_dir / "pretrained" / "fc1.pt"), *TINY_FLAGS,
                               "--seeds", "0", "--data_dir", str(mnist_dir), "--save_dir", str(save_dir),
                               "--launcher", "slurm", "--no_wait"], capsys)
    assert code == 0, err
    assert "1 run(s): 0 finished (skipped), 0 queued or running (skipped), 1 to launch" in out


def test_without_accounting_the_queue_is_read_from_squeue(tmp_path, monkeypatch, caplog):
    from archs.launch.queue import SlurmQueue, has_ended, is_active

    bin_dir, _ = fake_slurm(tmp_path, monkeypatch)
    (bin_dir / "sacct").write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\necho '4242_0|RUNNING'\necho '4242_2|COMPLETED'\n")
    for tool in ("sacct", "squeue"):
        (bin_dir / tool).chmod(0o755)
    queue = SlurmQueue()
    with caplog.at_level("INFO"):
        states = queue.states(["4242_0", "4242_1", "4242_2"])
    assert states == {"4242_0": "RUNNING", "4242_1": "GONE", "4242_2": "COMPLETED"}
    assert queue.source == "squeue"
    assert "Job states from squeue: sacct gave none (Slurm accounting storage is disabled)" in caplog.text
    assert [is_active(s) for s in states.values()] == [True, False, False]
    assert [has_ended(s) for s in ("UNKNOWN", "PENDING", "CANCELLED by 0", "GONE")] == [False, False, True, True]


# --------------------------------------------------------------------------- real local jobs
def load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir):
    """The study trained in this process (--launcher none), as the jobs must reproduce it."""
    folder = tmp_path_factory.mktemp("reference")
    study = folder / "study.json"
    study.write_text(json.dumps(STUDY))
    with pytest.raises(SystemExit) as exit_info:
        lottery_ticket.run_cli(lambda: lottery_ticket.main(
            ["--study", str(study), *TINY_FLAGS, "--data_dir", str(mnist_dir), "--save_dir", str(folder / "saves")]))
    assert exit_info.value.code == 0
    configs = expand_study(RunConfig(end_iter=2, batch_size=64), STUDY)
    runs = [RunConfig(**{**c.identity(), "seed": seed}) for c in configs for seed in STUDY["seeds"]]
    return {run.stem: load(results_path(folder / "saves", run)) for run in runs}, runs, folder / "saves"


def assert_same_run(result, expected):
    for key in LOG_KEYS:
        assert result[key] == expected[key], key
    for state in ("final_state_dict", "best_state_dict", "initial_state_dict"):
        assert all(torch.equal(result[state][k], expected[state][k]) for k in expected[state]), state
    assert all(torch.equal(a[n], b[n]) for a, b in zip(result["masks"], expected["masks"]) for n in a)
    assert result["args"] == expected["args"]


def wait_for(condition, what, process, seconds=240):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the launcher ended first: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_local_jobs_preempted_killed_and_rerun_end_as_the_in_process_study(tmp_path, mnist_dir, reference):
    expected, runs, _ = reference
    study = tmp_path / "study.json"
    study.write_text(json.dumps(STUDY))
    save_dir = tmp_path / "saves"
    # Started from another folder: the jobs must find the toolkit wherever the user stands.
    command = [sys.executable, str(ROOT / "lottery_ticket.py"), "--study", str(study), *TINY_FLAGS, "--data_dir",
               str(mnist_dir), "--save_dir", str(save_dir), "--launcher", "local", "--jobs", "2"]
    killed, preempted = runs[0], runs[1]          # pp50x3 seeds 0 and 1 start first, side by side
    submitter = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for run, how in ((killed, signal.SIGKILL), (preempted, signal.SIGUSR2)):
            wait_for(lambda: checkpoint_path(save_dir, run).exists(), f"{run.stem}'s first checkpoint", submitter)
            pid = json.loads(lock_path(save_dir, run).read_text())["pid"]
            assert not results_path(save_dir, run).exists(), "the run ended before the signal"
            os.kill(pid, how)
        out, err = submitter.communicate(timeout=600)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    # The killed job is reported with its log's last lines; the others finished.
    assert submitter.returncode == 1, err
    assert err.strip().splitlines()[-1] == (
        "error: 1 of 4 job(s) failed (see above); rerun the same command to resubmit them: finished runs "
        "are skipped and interrupted ones resume from their checkpoint")
    failure = out[out.index("failed: " + run_key(killed)):]
    assert "it ended without a result (killed by a signal, or out of memory?)" in failure
    assert "  last lines of " in failure and "submitit INFO" in failure
    assert "Finished 3 of 4 run(s)" in out and not results_path(save_dir, killed).exists()
    # The preempted job was requeued by submitit and resumed from its checkpoint.
    [preempted_log] = [p for p in (save_dir / "launch" / "jobs").glob("*_0_log.out")
                       if f"{preempted.stem}.pt" in p.read_text()]
    log_text = preempted_log.read_text()
    assert "Preempted or out of time: requeued" in log_text and "Seed 1: resuming" in log_text

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 run(s): 3 finished (skipped), 0 queued or running (skipped), 1 to launch" in rerun.stdout
    assert rerun.stdout.count(" started: ") == 1 and f"started: {run_key(killed)}" in rerun.stdout
    assert "Finished 4 of 4 run(s)" in rerun.stdout
    for run in runs:
        result = load(results_path(save_dir, run))
        assert_same_run(result, expected[run.stem])
        assert result["launch"]["launcher"] == "local" and result["launch"]["parallel_jobs"] == 2
    for run in (killed, preempted):     # two attempts each, and each overlapped the other
        record = load(results_path(save_dir, run))["launch"]
        assert record["attempts"] == 2
        other = preempted if run is killed else killed
        assert run_key(other) in record["concurrent_runs"]
    assert "Seed 0 summary (pp50x3_bs64_ep2, fc1 on mnist):" in rerun.stdout
    assert not list(save_dir.glob("**/*.checkpoint.pt")) and not list(save_dir.glob("**/*.lock"))


def test_replays_as_local_jobs_one_at_a_time(tmp_path, reference, capsys):
    """The inference replay of two runs as two jobs, merged into one table, never side by side."""
    import shutil

    import post_training_inference
    from data.report.inference_tables import read_rows

    save_dir = tmp_path / "saves"
    shutil.copytree(reference[2], save_dir, ignore=shutil.ignore_patterns("launch", "inference"))
    with pytest.raises(SystemExit) as exit_info:
        post_training_inference.run_cli(lambda: post_training_inference.main(
            ["--save_dir", str(save_dir), "--configs", "pp0x1", "--passes", "1", "--mode", "dense",
             "--country_iso_code", "FRA", "--no_progress", "--launcher", "local", "--jobs", "2"]))
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "note: measured jobs (CO2 tracking, inference) run one job at a time on the CPU, not 2 at once" in out
    assert out.count(" started: replay of fc1/mnist/pp0x1_seed") == 2 and "Summary over seeds" in out
    rows = read_rows(save_dir / "fc1" / "mnist" / "inference" / "inference_runs.csv")
    assert sorted((r["config"], r["seed"], r["mode"]) for r in rows) == [("pp0x1", 0, "dense"),
                                                                         ("pp0x1", 1, "dense")]
    intervals = sorted((e["start"], e["end"]) for e in (json.loads(p.read_text())
                                                        for p in (save_dir / "launch" / "ledger").iterdir()))
    assert len(intervals) == 2 and intervals[0][1] <= intervals[1][0]
