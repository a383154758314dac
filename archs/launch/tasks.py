"""What runs inside a job: one training run, or the inference replay of one run."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from archs.experiment import TrainingJob, run_job
from archs.launch.ledger import _ledger, shared_hardware
from data.runs import RunConfig, run_key
from utils import get_logger, setup_logging


def _job_id() -> str:
    try:
        from submitit import JobEnvironment

        return str(JobEnvironment().job_id)
    except Exception:   # outside a submitit job (tests call tasks directly)
        return str(os.getpid())


def guard_requeue() -> None:
    """Inside a SLURM job: let a requeue whose ``scontrol requeue`` was ended by the requeue
    itself end the job as a requeue, not as a failure.

    On preemption or time-out (SIGUSR2) submitit saves the task and runs ``scontrol requeue``.
    The requeue signals every process of the job, that ``scontrol`` too, which can end it before
    it returns; submitit then raises CalledProcessError from its signal handler, which prints a
    traceback into the job's log and writes an error result that the submitting process would
    report as a failure, although SLURM has requeued the job. This wraps submitit's handler: a
    ``scontrol requeue`` ended by a signal counts as done, and the job exits as submitit exits
    after a requeue."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signum = getattr(signal, name, None)
    previous = signal.getsignal(signum) if signum is not None and "SLURM_JOB_ID" in os.environ else None
    if not callable(previous) or getattr(previous, "requeue_guard", False):
        return

    def handler(number: int, frame: Any) -> None:
        try:
            previous(number, frame)
        except subprocess.CalledProcessError as exc:
            if exc.returncode >= 0 or list(exc.cmd)[:2] != ["scontrol", "requeue"]:
                raise
            get_logger().info("Requeued (scontrol requeue was ended by signal %d, sent by the requeue "
                              "it asked for); exiting until the job starts again", -exc.returncode)
            sys.exit(-1)   # as submitit exits after a requeue: no result file

    handler.requeue_guard = True   # type: ignore[attr-defined]
    signal.signal(signum, handler)


@dataclass
class TrainingTask(Checkpointable):
    """One run as a submitit job. Requeued as it is on preemption or time-out: the run resumes
    from its last epoch checkpoint."""

    job: TrainingJob                  # one seed, resume on
    launcher: str
    ledger: Path
    parallel_jobs: int | None         # local: jobs at a time; slurm: the array's parallelism
    allow_shared_energy: bool = False
    gpu: str | None = None            # local: CUDA_VISIBLE_DEVICES given to this job

    @property
    def config(self) -> RunConfig:
        return dataclasses.replace(self.job.config, seed=self.job.seeds[0])

    def __call__(self) -> str:
        setup_logging()
        guard_requeue()
        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu   # before torch first touches CUDA
        run = run_key(self.config)
        with _ledger(self.ledger, run, self.gpu):
            job = dataclasses.replace(self.job, annotate_results=lambda config: {"launch": self.record(run)})
            [path] = run_job(job)
        return str(path)

    def record(self, run: str) -> dict[str, Any]:
        """The results file's ``launch`` entry: how the run was launched and what shared its host."""
        return {"launcher": self.launcher, "job_id": _job_id(), "host": socket.gethostname(),
                "gpu": self.gpu, "parallel_jobs": self.parallel_jobs,
                "allow_shared_energy": self.allow_shared_energy, **shared_hardware(self.ledger, run)}

    def checkpoint(self, *args: Any, **kwargs: Any):
        get_logger().info("Preempted or out of time: requeued; the run resumes from its last checkpoint")
        return super().checkpoint(*args, **kwargs)


@dataclass
class ReplayTask(Checkpointable):
    """The inference replay of one run as a submitit job (requeued whole when preempted)."""

    job: Any                          # archs.inference.InferenceJob selecting one run
    run: str
    ledger: Path
    gpu: str | None = None

    def __call__(self) -> list[dict]:
        from archs.inference import run_inference

        setup_logging()
        guard_requeue()
        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu
        with _ledger(self.ledger, f"replay.{self.run}", self.gpu):
            return run_inference(self.job)
