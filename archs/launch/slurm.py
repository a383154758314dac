"""SLURM: the sbatch parameters of a job, one job array per launch, waiting, and the queue."""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from archs.launch.outcome import Outcome, Planned, _outcome, _progress, _report
from archs.launch.settings import (JOBS_FOLDER, POLL_SECONDS, QUEUED_FOLDER, REPO_ROOT, LaunchSettings,
                                   SlurmSettings)
from archs.launch.queue import SlurmQueue, has_ended, is_active
from archs.launch.tasks import TrainingTask
from utils import UserError, first_line, get_logger

def slurm_parameters(settings: SlurmSettings, *, job_name: str, on_gpu: bool) -> dict[str, Any]:
    """SlurmExecutor.update_parameters's arguments for one job per run (one node, one task)."""
    gpus = settings.gpus_per_job if settings.gpus_per_job is not None else (1 if on_gpu else 0)
    parameters: dict[str, Any] = {
        "job_name": job_name, "time": settings.time_min, "nodes": 1, "ntasks_per_node": 1,
        "array_parallelism": settings.array_parallelism,
        # The jobs import this toolkit from its folder wherever sbatch starts them. The batch
        # shell outlives a SIGUSR2 sent to the whole job (scancel --signal=USR2 --full): by
        # default bash would die of it and end the job before the task could requeue it.
        "setup": [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
                  "trap : USR2"],
    }
    if settings.partition:
        parameters["partition"] = settings.partition
    if gpus:
        parameters["gpus_per_node"] = gpus
    if settings.cpus_per_job:
        parameters["cpus_per_task"] = settings.cpus_per_job
    if settings.mem:
        parameters["mem"] = settings.mem
    if settings.additional:
        parameters["additional_parameters"] = dict(settings.additional)
    return parameters


def submit_slurm(planned: list[Planned], settings: LaunchSettings, *, job_name: str, on_gpu: bool):
    """Submit every job as one SLURM job array; returns the jobs, in the order given."""
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=settings.folder / JOBS_FOLDER)
    except RuntimeError as exc:
        raise UserError(f"--launcher slurm needs SLURM's commands (sbatch, srun) on this machine "
                        f"({first_line(exc)}); use --launcher local here") from exc
    for item in planned:
        if isinstance(item.task, TrainingTask):
            item.task.parallel_jobs = settings.slurm.array_parallelism
    if any(item.measured for item in planned) and "exclusive" not in dict(settings.slurm.additional):
        get_logger().warning("note: measured jobs (CO2 tracking, inference) share their node with other "
                             "jobs unless you add --slurm_additional exclusive; each run records which "
                             "of this toolkit's jobs shared its node, not other users' jobs")
    try:
        executor.update_parameters(**slurm_parameters(settings.slurm, job_name=job_name, on_gpu=on_gpu))
    except ValueError as exc:
        raise UserError(f"SLURM settings refused by submitit: {first_line(exc)}") from exc
    try:
        jobs = executor.submit_array([item.task for item in planned])
    except Exception as exc:   # sbatch's own refusal (unknown partition, time over the limit...)
        raise UserError(f"sbatch refused the jobs: {first_line(exc)}") from exc
    return jobs


def wait_slurm(planned: list[Planned], jobs: list, settings: LaunchSettings,
               queue: SlurmQueue) -> list[Outcome]:
    """Wait for every job: done when its result file is there, or when SLURM says it ended
    (without a result: killed, cancelled, out of time or memory). Polls after 1 s, then twice as
    long each time up to POLL_SECONDS["slurm"]."""
    pending = dict(zip(jobs, planned))
    outcomes: list[Outcome] = []
    delay = 1.0
    with _progress(len(jobs), settings) as bar:
        while pending:
            states = queue.states(str(job.job_id) for job in pending)   # before the result files
            for job in list(pending):
                state = states[str(job.job_id)]
                if job.paths.result_pickle.exists() or has_ended(state):
                    outcomes.append(_report(_outcome(pending.pop(job), job, "slurm", state), bar))
            if pending:
                time.sleep(delay)
                delay = min(2 * delay, POLL_SECONDS["slurm"])
    return outcomes


def queued_job(settings: LaunchSettings, key: str, queue: SlurmQueue) -> str | None:
    """The SLURM job that will still train the run ``key`` (submitted earlier, pending or running)."""
    marker = queue_marker(settings, key)
    if settings.launcher != "slurm" or not marker.is_file():
        return None
    try:
        job_id = str(json.loads(marker.read_text())["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return job_id if is_active(queue.states([job_id])[job_id]) else None


def queue_marker(settings: LaunchSettings, key: str) -> Path:
    """Where the SLURM job id a run was last submitted as is kept ({arch}.{dataset}.{stem}.json)."""
    return settings.folder / QUEUED_FOLDER / f"{key.replace('/', '.')}.json"
