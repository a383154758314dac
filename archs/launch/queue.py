"""What SLURM says of its jobs: ``sacct`` where accounting is on, ``squeue`` where it is off.

A cluster without an accounting database (``AccountingStorageType=accounting_storage/none``)
answers ``sacct`` with an error; ``squeue -t all`` still lists the jobs that are queued or
running, and ended ones with their state for a few minutes (``MinJobAge``). A job that squeue no
longer lists has ended (GONE).
The launcher asks :class:`SlurmQueue` and says once which command answered.
"""
from __future__ import annotations

import subprocess
from typing import Iterable

from utils import get_logger

# States of a job that will still run (or run again): a rerun must not submit its run again,
# and the submitting process keeps waiting for it. PREEMPTED: submitit requeues it.
SLURM_ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                       "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED")
UNKNOWN = "UNKNOWN"     # neither command answered (or sacct does not list the job yet)
GONE = "GONE"           # squeue no longer lists the job: it ended
COMMAND_TIMEOUT_S = 60


def is_active(state: str) -> bool:
    """Whether a job in ``state`` (as sacct or squeue write it, e.g. 'CANCELLED by 0') will still run."""
    return bool(state.strip()) and state.split()[0] in SLURM_ACTIVE_STATES


def has_ended(state: str) -> bool:
    """Whether a job in ``state`` is known to have ended (UNKNOWN: nobody said)."""
    return state != UNKNOWN and not is_active(state)


def _run(command: list[str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def parse_sacct(text: str) -> dict[str, str]:
    """sacct --parsable2 (JobID first, State second) as {job id: state}; array ranges such as
    ``4242_[3-7%2]`` are expanded to 4242_3 ... 4242_7, and job steps (4242_0.batch) skipped."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    return {job_id: info.get("State", UNKNOWN) for job_id, info in SlurmInfoWatcher().read_info(text).items()}


def parse_squeue(text: str) -> dict[str, str]:
    """``squeue -h -r -t all -o %i|%T`` (one line per array element) as {job id: state}."""
    states = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and job_id:
            states[job_id] = state.strip()
    return states


class SlurmQueue:
    """The states of SLURM jobs, from sacct or, where sacct fails, from squeue."""

    def __init__(self) -> None:
        self.source: str | None = None    # "sacct" or "squeue" once one answered

    def states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Each job's state ('4242_3', or '4242' for a job of its own): sacct's; squeue's while the
        job is queued, running or just ended, GONE after; UNKNOWN where neither command answers."""
        ids = [str(job_id) for job_id in job_ids]
        if not ids:
            return {}
        if self.source != "squeue":
            command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
            for main in sorted({job_id.split("_")[0] for job_id in ids}):
                command += ["-j", main]
            code, out, err = _run(command)
            if code == 0:
                self._say("sacct", "")
                answer = parse_sacct(out)
                return {job_id: answer.get(job_id, UNKNOWN) for job_id in ids}
            why = (err.strip().splitlines() or [f"exit status {code}"])[0]
        else:
            why = ""
        code, out, err = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"])
        if code == 0:
            self._say("squeue", why)
            answer = parse_squeue(out)
            return {job_id: answer.get(job_id, GONE) for job_id in ids}
        return {job_id: UNKNOWN for job_id in ids}

    def _say(self, source: str, why: str) -> None:
        if self.source == source:
            return
        self.source = source
        if source == "sacct":
            get_logger().info("Job states from sacct (SLURM accounting)")
        else:
            get_logger().info("Job states from squeue: sacct gave none (%s); squeue lists queued, running "
                              "and recently ended jobs", why)
