"""What the launchers are told: the launch settings, SLURM resources, and their command-line flags.

Torch-free: the scripts' parsers import it.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data.paths import SAVE_DIR
from utils import UserError, positive_int

LAUNCHERS = ("none", "local", "slurm")
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = {"local": 0.5, "slurm": 30.0}
LEDGER_FOLDER = "ledger"
# One flat folder of job files ({job id}_submitted.pkl, {job id}_0_log.out...): submitit's
# per-job "%j" folders make its local controller create a folder literally named "%j".
JOBS_FOLDER = "jobs"
QUEUED_FOLDER = "queued"          # {run}.json: the SLURM job id a run was last submitted as


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    time_min: int = 240
    gpus_per_job: int | None = None     # None: 1 unless the runs are on the CPU
    cpus_per_job: int | None = None
    mem: str | None = None              # as sbatch writes it: 16G, 8000M
    array_parallelism: int = 256
    additional: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class LaunchSettings:
    launcher: str = "none"
    jobs: int | None = None             # local: jobs at a time (None: one per GPU, or one)
    allow_shared_energy: bool = False
    wait: bool = True
    folder: Path = SAVE_DIR / "launch"
    show_progress: bool = True
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


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


# --------------------------------------------------------------------------- command line
def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.replace("parse_", "")
    return convert


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose where the jobs run (the same in lottery_ticket.py and the replay)."""
    group = parser.add_argument_group("launching jobs (one per configuration and seed)")
    group.add_argument("--launcher", default="none", choices=list(LAUNCHERS),
                       help="none: run in this process; local: one process per run on this machine; "
                            "slurm: one SLURM job per run (a job array)")
    group.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                       help="local: runs at a time (default: one per GPU, or one on the CPU; "
                            "measured runs never more unless --allow_shared_energy)")
    group.add_argument("--allow_shared_energy", action="store_true",
                       help="local: let measured jobs (CO2 tracking, inference) run --jobs at once "
                            "although their energy figures then include each other's")
    group.add_argument("--no_wait", action="store_true",
                       help="slurm: return once the jobs are submitted (rerun the same command "
                            "later for the summary and to resubmit what is missing)")
    group.add_argument("--launch_dir", type=Path, default=None, metavar="DIR",
                       help="submitit's job files and logs (default: SAVE_DIR/launch); on SLURM it "
                            "must be on a file system the nodes share")
    slurm = parser.add_argument_group("SLURM resources of each job (with --launcher slurm)")
    slurm.add_argument("--slurm_partition", default=None, help="partition (default: the cluster's)")
    slurm.add_argument("--slurm_time", type=_argument(parse_slurm_time), default=SlurmSettings.time_min,
                       metavar="TIME",
                       help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default: "
                            "%(default)s minutes); a job that reaches it is requeued and resumes")
    slurm.add_argument("--slurm_gpus_per_job", type=int, default=None, metavar="N",
                       help="GPUs per job (default: 1, or 0 with --device cpu)")
    slurm.add_argument("--slurm_cpus_per_job", type=positive_int, default=None, metavar="N",
                       help="CPU cores per job (default: the cluster's)")
    slurm.add_argument("--slurm_mem", type=_argument(parse_memory), default=None, metavar="MEM",
                       help="memory per job as sbatch writes it, e.g. 16G (default: the cluster's)")
    slurm.add_argument("--slurm_array_parallelism", type=positive_int,
                       default=SlurmSettings.array_parallelism, metavar="N",
                       help="jobs of the array that may run at once")
    slurm.add_argument("--slurm_additional", type=_argument(parse_additional), nargs="+", default=(),
                       metavar="KEY=VALUE",
                       help="other sbatch options, e.g. qos=high account=proj42 exclusive "
                            "(a KEY alone is a switch)")


SLURM_FLAGS = ("slurm_partition", "slurm_gpus_per_job", "slurm_cpus_per_job", "slurm_mem")


def launch_settings_from_args(args: argparse.Namespace, save_dir: Path) -> LaunchSettings:
    """The launch settings of a command line, refusing flags that do nothing with its launcher."""
    launcher = args.launcher
    if launcher != "local":
        for flag in ("jobs", "allow_shared_energy"):
            if getattr(args, flag):
                raise UserError(f"--{flag} is for --launcher local; add --launcher local or leave it out")
    if launcher != "slurm":
        given = [name for name in SLURM_FLAGS if getattr(args, name) is not None]
        given += ["slurm_additional"] if args.slurm_additional else []
        defaults = SlurmSettings()
        given += ["slurm_time"] if args.slurm_time != defaults.time_min else []
        given += (["slurm_array_parallelism"] if args.slurm_array_parallelism != defaults.array_parallelism
                  else [])
        given += ["no_wait"] if args.no_wait else []
        if given:
            hint = (" (the local launcher keeps the queue itself, so it must keep running: start "
                    "it under nohup or in tmux)" if given == ["no_wait"] and launcher == "local" else "")
            raise UserError(f"--{given[0]} is for --launcher slurm{hint}; add --launcher slurm or leave it out")
    if launcher == "none" and args.launch_dir is not None:
        raise UserError("--launch_dir is for --launcher local or slurm; add one or leave it out")
    gpus = args.slurm_gpus_per_job
    if gpus is not None and gpus < 0:
        raise UserError(f"--slurm_gpus_per_job {gpus} must be 0 or more")
    return LaunchSettings(
        launcher=launcher, jobs=args.jobs, allow_shared_energy=args.allow_shared_energy,
        wait=not args.no_wait, folder=Path(args.launch_dir or Path(save_dir) / "launch").resolve(),
        show_progress=not getattr(args, "no_progress", False),
        slurm=SlurmSettings(partition=args.slurm_partition, time_min=args.slurm_time,
                            gpus_per_job=gpus, cpus_per_job=args.slurm_cpus_per_job, mem=args.slurm_mem,
                            array_parallelism=args.slurm_array_parallelism,
                            additional=tuple(args.slurm_additional)))
