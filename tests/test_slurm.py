"""The SLURM launcher on a real SLURM: a study as one job array, a rerun, --no_wait, a failed job,
and a preempted job requeued by submitit.

These run where ``sinfo`` answers for a ``debug`` partition (``.ci/slurm-up`` brings up such a
one-node cluster as root on Debian; ``.ci/run`` does when it can) and are skipped elsewhere.
Runs are tiny (fc1 on digits, a few epochs), every job asks for one CPU, and every result is
compared bit for bit with the same run trained in this process.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

import lottery_ticket
from archs.launch import settings as launch_settings
from archs.launch.queue import SlurmQueue, is_active
from data.paths import checkpoint_path, results_path
from data.runs import RunConfig
from tests.conftest import ROOT
from tests.test_launch import assert_same_run, load

PARTITION = "debug"
SLURM_FLAGS = ["--launcher", "slurm", "--slurm_partition", PARTITION, "--slurm_cpus_per_job", "1",
               "--slurm_mem", "2G"]
FLAGS = ["--dataset", "digits", "--arch_type", "fc1", "--batch_size", "64", "--device", "cpu",
         "--no_progress"]
STUDY = {"configurations": [{"prune_percent": 50, "prune_iterations": 2}, {"train_type": "regular"}],
         "seeds": [0, 1]}
TIMEOUT_S = 240


def cluster_missing() -> str | None:
    """Why these tests cannot run here (None: a SLURM with a debug partition answers)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo not found); as root on Debian, .ci/slurm-up starts a one-node cluster"
    try:
        answer = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%a"], capture_output=True, text=True,
                                timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo does not answer within 15 s (is slurmctld running? .ci/slurm-up starts it)"
    if answer.returncode != 0 or "up" not in answer.stdout.split():
        why = (answer.stderr.strip().splitlines() or ["no partition " + PARTITION])[-1]
        return f"no SLURM partition {PARTITION!r} up here ({why}); .ci/slurm-up starts one as root"
    return None


MISSING = cluster_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setitem(launch_settings.POLL_SECONDS, "slurm", 2.0)


@contextmanager
def one_thread():
    """A job that asks for one CPU is bound to it and computes with one thread; the in-process
    reference does the same (float sums over other thread counts differ in the last bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lottery_ticket.run_cli(lambda: lottery_ticket.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def wait_for(condition, what, seconds=TIMEOUT_S):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def squeue_state(job_id: str) -> str:
    """squeue's STATE|REASON of a job ('' once it has left the queue)."""
    answer = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True)
    return answer.stdout.strip()


def ended(job_id: str) -> bool:
    return not is_active(SlurmQueue().states([job_id])[job_id])


def array_id(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith("Submitted ")]
    return line.split(" as array ")[1].split()[0]


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """The study trained in this process: the reference every job must reproduce."""
    folder = tmp_path_factory.mktemp("slurm")
    study = folder / "study.json"
    study.write_text(json.dumps(STUDY))
    with pytest.raises(SystemExit) as exit_info, one_thread():
        lottery_ticket.run_cli(lambda: lottery_ticket.main(
            ["--study", str(study), *FLAGS, "--end_iter", "2", "--save_dir", str(folder / "reference")]))
    assert exit_info.value.code == 0
    base = RunConfig(arch_type="fc1", dataset="digits", batch_size=64, end_iter=2)
    runs = [RunConfig(**{**base.identity(), "prune_percent": pp, "prune_iterations": n, "seed": seed})
            for pp, n in ((50.0, 2), (0.0, 1)) for seed in STUDY["seeds"]]
    return folder, study, runs


@pytest.fixture(scope="module")
def slurm_study(study_runs):
    """The same study as one job array, once every job has left the queue: its save folder."""
    folder, study, runs = study_runs
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(launch_settings.POLL_SECONDS, "slurm", 2.0)
        with pytest.raises(SystemExit) as exit_info:
            lottery_ticket.run_cli(lambda: lottery_ticket.main(
                ["--study", str(study), *FLAGS, "--end_iter", "2", "--save_dir", str(folder / "saves"),
                 *SLURM_FLAGS]))
    assert exit_info.value.code == 0
    # A job leaves the queue (COMPLETING) a moment after its results are written.
    job_ids = [load(results_path(folder / "saves", run))["launch"]["job_id"] for run in runs]
    wait_for(lambda: all(ended(job_id) for job_id in job_ids), "the array to end")
    return folder / "saves"


def test_a_study_runs_as_one_job_array_bit_identical_to_the_in_process_runs(study_runs, slurm_study):
    folder, _, runs = study_runs
    save_dir = slurm_study
    job_ids = []
    for run in runs:
        result = load(results_path(save_dir, run))
        assert_same_run(result, load(results_path(folder / "reference", run)))
        assert result["launch"]["launcher"] == "slurm" and result["launch"]["attempts"] == 1
        job_ids.append(result["launch"]["job_id"])
    array = job_ids[0].split("_")[0]
    assert sorted(job_ids) == [f"{array}_{i}" for i in range(4)]   # one array of four jobs


def test_a_rerun_submits_only_what_is_missing_and_no_wait_returns_at_once(study_runs, slurm_study, capsys):
    folder, study, runs = study_runs
    save_dir = slurm_study
    results_path(save_dir, runs[3]).unlink()
    argv = ["--study", str(study), *FLAGS, "--end_iter", "2", "--save_dir", str(save_dir), *SLURM_FLAGS]
    code, out, err = run_main([*argv, "--no_wait"], capsys)
    assert code == 0, err
    assert "4 run(s): 3 finished (skipped), 0 queued or running (skipped), 1 to launch" in out
    assert "Submitted 1 job(s) to SLURM" in out and "Not waiting (--no_wait)" in out
    job_id = array_id(out)
    # While SLURM holds it, the same command submits nothing and says where the states came from.
    code, out, err = run_main([*argv, "--no_wait"], capsys)
    assert code == 0, err
    assert "4 run(s): 3 finished (skipped), 1 queued or running (skipped), 0 to launch" in out
    assert f"is SLURM job {job_id}" in out
    assert "Job states from" in out
    wait_for(lambda: ended(job_id), f"job {job_id} to end")
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert "4 run(s): 4 finished (skipped)" in out and "Finished 4 of 4 run(s)" in out
    assert_same_run(load(results_path(save_dir, runs[3])), load(results_path(folder / "reference", runs[3])))


def test_a_failed_job_is_reported_with_the_last_lines_of_its_log(tmp_path, capsys):
    save_dir = tmp_path / "saves"
    run = RunConfig(arch_type="fc1", dataset="digits", batch_size=64, end_iter=2, train_type="regular",
                    prune_percent=0.0, prune_iterations=1, seed=0)
    damaged = checkpoint_path(save_dir, run)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    code, out, err = run_main([*FLAGS, "--end_iter", "2", "--train_type", "regular", "--seeds", "0",
                               "--save_dir", str(save_dir), *SLURM_FLAGS], capsys)
    assert code == 1
    job_id = array_id(out)
    [failure] = [line for line in out.splitlines() if line.startswith(f"job {job_id} failed: ")]
    assert "fc1/digits/pp0x1_seed0_co2False_digits_bs64_ep2" in failure
    assert "last lines of " in out and f"{job_id}_0_log" in out
    assert err.strip() == ("error: 1 of 1 job(s) failed (see above); rerun the same command to "
                           "resubmit them: finished runs are skipped and interrupted ones resume from "
                           "their checkpoint")


def test_a_cancelled_job_is_reported_with_its_slurm_state(tmp_path):
    save_dir = tmp_path / "saves"
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "lottery_ticket.py"), *FLAGS, "--end_iter", "300", "--train_type",
         "regular", "--seeds", "0", "--save_dir", str(save_dir), *SLURM_FLAGS],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log_out = save_dir / "launch" / "jobs"
        wait_for(lambda: any(log_out.glob("*_0_log.out")), "the job to start")
        [job_log] = log_out.glob("*_0_log.out")
        job_id = job_log.name.split("_")[0]
        subprocess.run(["scancel", job_id], check=True)
        out, err = launcher.communicate(timeout=TIMEOUT_S)
    finally:
        launcher.kill()
    assert launcher.returncode == 1
    assert (f"job {job_id} failed: fc1/digits/pp0x1_seed0_co2False_digits_bs64_ep300: it ended without a "
            "result (SLURM state CANCELLED") in out
    assert "CANCELLED AT" in out and err.startswith("error: 1 of 1 job(s) failed")


def test_a_preempted_job_is_requeued_and_resumes_bit_identical(tmp_path, monkeypatch, capsys):
    """scancel --signal=USR2 --full as SLURM preempts; scontrol requeue is made slow so that the
    requeue it asks for ends it (the race that printed a traceback into the job's log)."""
    real = shutil.which("scontrol")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\n"{real}" "$@" || exit $?\n'
                                      '[ "$1" = requeue ] && exec sleep 60\nexit 0\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    epochs = ["--end_iter", "40", "--train_type", "regular", "--seeds", "0"]
    save_dir = tmp_path / "saves"
    code, out, err = run_main([*FLAGS, *epochs, "--save_dir", str(save_dir), *SLURM_FLAGS, "--no_wait"],
                              capsys)
    assert code == 0, err
    job_id = array_id(out)
    run = RunConfig(arch_type="fc1", dataset="digits", batch_size=64, end_iter=40, train_type="regular",
                    prune_percent=0.0, prune_iterations=1, seed=0)
    log_out = save_dir / "launch" / "jobs" / f"{job_id}_0_log.out"
    wait_for(lambda: checkpoint_path(save_dir, run).exists(), "the first epoch checkpoint")
    time.sleep(1.0)   # a few epochs more
    subprocess.run(["scancel", "--signal=USR2", "--full", job_id], check=True)
    # SLURM holds a requeued job for a while (BeginTime); let it start again now.
    wait_for(lambda: squeue_state(job_id).startswith("PENDING"), "the requeue")
    subprocess.run([real, "update", f"JobId={job_id}", "StartTime=now"], check=True)
    wait_for(lambda: results_path(save_dir, run).exists(), "the resumed run to finish")
    wait_for(lambda: ended(job_id), f"job {job_id} to end")
    result = load(results_path(save_dir, run))
    assert result["launch"]["attempts"] == 2
    logs = log_out.read_text() + log_out.with_name(f"{job_id}_0_log.err").read_text()
    assert "Requeued (scontrol requeue was ended by signal" in logs
    assert "resuming pp0x1_seed0_co2False_digits_bs64_ep40.checkpoint.pt at cycle 1, epoch" in logs
    assert "Traceback" not in logs and result_status(save_dir, job_id) == "success"
    with one_thread():
        code, out, err = run_main([*FLAGS, *epochs, "--save_dir", str(tmp_path / "reference")], capsys)
    assert code == 0, err
    assert_same_run(result, load(results_path(tmp_path / "reference", run)))


def result_status(save_dir, job_id) -> str:
    from submitit.core.utils import pickle_load

    status, _ = pickle_load(save_dir / "launch" / "jobs" / f"{job_id}_0_result.pkl")
    return status
