"""What the launchers are told: the launch settings, SLURM resources, and their command-line flags.

Torch-free: the scripts' parsers import it.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.paths import SAVE_DIR
from data.settings import add_field_arguments, flag_name, flagged, option, values_from_args
from utils import UserError, parse_whole, positive_int

LAUNCHERS = ("none", "local", "slurm")
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = {"local": 0.5, "slurm": 30.0}
LEDGER_FOLDER = "ledger"
# One flat folder of job files ({job id}_submitted.pkl, {job id}_0_log.out...): submitit's
# per-job "%j" folders make its local controller create a folder literally named "%j".
JOBS_FOLDER = "jobs"
QUEUED_FOLDER = "queued"          # {run}.json: the SLURM job id a run was last submitted as


def parse_slurm_time(text: str) -> int:
    """Minutes from sbatch's forms: MINUTES, HH:MM:SS, MM:SS, D-HH[:MM[:SS]] (seconds rounded up)."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"{text!r} is not a time limit; give minutes (120), HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = match.groups()
    numbers = [int(n) for n in (first, second, third) if n is not None]
    if days is not None:   # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        total_s = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(numbers) == 1:
        total_s = numbers[0] * 60
    elif len(numbers) == 2:   # MM:SS
        total_s = numbers[0] * 60 + numbers[1]
    else:
        total_s = (numbers[0] * 60 + numbers[1]) * 60 + numbers[2]
    minutes = math.ceil(total_s / 60)
    if minutes < 1:
        raise ValueError(f"{text!r} is under a minute")
    return minutes


def parse_memory(text: str) -> str:
    if not re.fullmatch(r"\d+[KMGT]?B?", text.strip(), flags=re.IGNORECASE):
        raise ValueError(f"{text!r} is not an amount of memory; write it as sbatch does, e.g. 16G or 8000M")
    return text.strip().upper()


def parse_additional(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (``#SBATCH --KEY=VALUE``) or ``KEY`` alone (``#SBATCH --KEY``)."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
        raise ValueError(f"{text!r} is not KEY=VALUE with an sbatch option as KEY (e.g. qos=high, "
                         "account=proj42, exclusive)")
    return key.replace("_", "-"), (value if sep else True)


@dataclass(frozen=True)
class SlurmSettings:
    """The SLURM resources of each job: each declared once, its flag ``--slurm_...`` generated."""

    partition: str | None = option(None, flag="slurm_partition", help="partition (default: the cluster's)")
    time_min: int = option(240, flag="slurm_time", parse=parse_slurm_time, metavar="TIME",
                           help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default: "
                                "%(default)s minutes); a job that reaches it is requeued and resumes")
    gpus_per_job: int | None = option(None, flag="slurm_gpus_per_job", parse=parse_whole, metavar="N",
                                      help="GPUs per job (default: 1, or 0 with --device cpu)")
    cpus_per_job: int | None = option(None, flag="slurm_cpus_per_job", parse=positive_int, metavar="N",
                                      help="CPU cores per job (default: the cluster's)")
    mem: str | None = option(None, flag="slurm_mem", parse=parse_memory, metavar="MEM",   # as sbatch writes it
                             help="memory per job as sbatch writes it, e.g. 16G (default: the cluster's)")
    array_parallelism: int = option(256, flag="slurm_array_parallelism", parse=positive_int, metavar="N",
                                    help="jobs of the array that may run at once")
    additional: tuple[tuple[str, Any], ...] = option(
        (), flag="slurm_additional", parse=parse_additional, nargs="+", metavar="KEY=VALUE",
        help="other sbatch options, e.g. qos=high account=proj42 exclusive (a KEY alone is a switch)")


@dataclass(frozen=True)
class LaunchSettings:
    """Where the jobs run: each option declared once, its flag generated."""

    launcher: str = option("none", choices=LAUNCHERS,
                           help="none: run in this process; local: one process per run on this machine; "
                                "slurm: one SLURM job per run (a job array)")
    jobs: int | None = option(None, parse=positive_int, metavar="N",
                              help="local: runs at a time (default: one per GPU, or one on the CPU; "
                                   "measured runs never more unless --allow_shared_energy)")
    allow_shared_energy: bool = option(
        False, help="local: let measured jobs (CO2 tracking, inference) run --jobs at once although "
                    "their energy figures then include each other's")
    wait: bool = option(True, flag="no_wait",
                        help="slurm: return once the jobs are submitted (rerun the same command later "
                             "for the summary and to resubmit what is missing)")
    folder: Path | None = option(None, flag="launch_dir", parse=Path, metavar="DIR",
                                 help="submitit's job files and logs (default: SAVE_DIR/launch); on "
                                      "SLURM it must be on a file system the nodes share")
    show_progress: bool = True          # the job's (--no_progress)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    def __post_init__(self):
        if self.folder is None:   # the command line gives the job's SAVE_DIR/launch
            object.__setattr__(self, "folder", SAVE_DIR / "launch")


# --------------------------------------------------------------------------- command line
def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose where the jobs run (the same in lottery_ticket.py and the replay)."""
    group = parser.add_argument_group("launching jobs (one per configuration and seed)")
    add_field_arguments(group, flagged(LaunchSettings))
    add_field_arguments(parser.add_argument_group("SLURM resources of each job (with --launcher slurm)"),
                        flagged(SlurmSettings))


def launch_settings_from_args(args: argparse.Namespace, save_dir: Path) -> LaunchSettings:
    """The launch settings of a command line, refusing flags that do nothing with its launcher."""
    launch = values_from_args(flagged(LaunchSettings), args)
    slurm = values_from_args(flagged(SlurmSettings), args)
    launcher = launch["launcher"]
    if launcher != "local":
        for flag in ("jobs", "allow_shared_energy"):
            if launch[flag]:
                raise UserError(f"--{flag} is for --launcher local; add --launcher local or leave it out")
    if launcher != "slurm":
        given = [flag_name(f) for f in flagged(SlurmSettings) if slurm[f.name] != f.default]
        given += ["no_wait"] if not launch["wait"] else []
        if given:
            hint = (" (the local launcher keeps the queue itself, so it must keep running: start "
                    "it under nohup or in tmux)" if given == ["no_wait"] and launcher == "local" else "")
            raise UserError(f"--{given[0]} is for --launcher slurm{hint}; add --launcher slurm or leave it out")
    if launcher == "none" and launch["folder"] is not None:
        raise UserError("--launch_dir is for --launcher local or slurm; add one or leave it out")
    if slurm["gpus_per_job"] is not None and slurm["gpus_per_job"] < 0:
        raise UserError(f"--slurm_gpus_per_job {slurm['gpus_per_job']} must be 0 or more")
    launch["folder"] = Path(launch["folder"] or Path(save_dir) / "launch").resolve()
    return LaunchSettings(**launch, show_progress=not getattr(args, "no_progress", False),
                          slurm=SlurmSettings(**slurm))
