"""A whole study as jobs: one job per (configuration, seed), through submitit, on this machine or SLURM.

``--launcher none`` (the default) trains in the calling process, as always. With ``local`` or
``slurm`` every run (one configuration, one seed) becomes a submitit job:

* ``local`` starts the jobs as processes on this machine, ``--jobs N`` at a time, each with a
  GPU of its own when there are GPUs (the submitting process keeps the queue, so it must stay);
* ``slurm`` submits one job array to the cluster, with the resources given as ``--slurm_*`` flags.

A job trains its run exactly as ``lottery_ticket.py --resume`` would: a finished run is
skipped, an interrupted one continues from its checkpoint. When SLURM (or the local executor)
warns a job of its time limit or of a preemption (SIGUSR2), submitit calls the job's
``checkpoint`` hook, which requeues the same job; it then resumes from the run's last epoch
checkpoint. The submitting process skips finished runs, submits the missing ones, prints the
job ids, waits with a progress bar over jobs (or returns at once with ``--no_wait`` on SLURM),
reports a failed job with the last lines of its log, and ends with each run's summary.

Energy. Two jobs that share a CPU socket or a GPU cannot have their energy told apart, so the
local launcher runs measured work (CO2-tracking training runs, every inference replay) one job
per GPU, or one at a time on the CPU, unless ``--allow_shared_energy``. Every launched
training run records in its results file, under ``launch``, which other launched jobs ran on
its host while it did (:func:`shared_hardware`), read from a ledger of job intervals kept in
the launch folder.

Study files (``--study FILE``) list several configurations for one command; see
:func:`expand_study`.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from submitit.helpers import Checkpointable

from archs.experiment import TrainingJob, check_pruning_schedule, run_job
from data.runs import (MEASUREMENT, SEED, RunConfig, RunFilter, lock_path, parse_setting,
                       read_run_settings, results_path, setting_fields, setting_names, setting_role)
from utils import (LockHeld, ProcessLock, UserError, atomic_write_text, ensure_writable_dir,
                   first_line, format_table, get_logger, positive_int, setup_logging)

LAUNCHERS = ("none", "local", "slurm")
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_TIMEOUT_MIN = 60 * 24 * 365     # local jobs have no time limit of their own
POLL_SECONDS = {"local": 0.5, "slurm": 30.0}
LOG_TAIL_LINES = 12
LEDGER_FOLDER = "ledger"
# One flat folder of job files ({job id}_submitted.pkl, {job id}_0_log.out...): submitit's
# per-job "%j" folders make its local controller create a folder literally named "%j".
JOBS_FOLDER = "jobs"
QUEUED_FOLDER = "queued"          # {run}.json: the SLURM job id a run was last submitted as
# sacct states of a SLURM job that will still train its run: a rerun must not submit it again.
SLURM_ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                       "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT")


# --------------------------------------------------------------------------- study files
STUDY_KEYS = ("configurations", "seeds")


def read_study(path: Path | str) -> dict:
    """A study file's JSON object (UserError naming the file and the problem otherwise)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read the study file {path} ({exc.strerror or exc})") from exc
    try:
        study = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg})") from None
    if not isinstance(study, dict):
        raise UserError(f"{path} must hold a JSON object such as "
                        '{"configurations": [{"prune_percent": 90}], "co2_tracking_mode": [false, true]}')
    return study


def _setting_value(name: str, value: Any, where: str) -> Any:
    """A JSON value checked and converted as the command line would convert it."""
    if name == "seed":
        raise UserError(f"{where}: give seeds with \"seeds\": [0, 1, ...], not \"seed\"")
    if name not in setting_names():
        raise UserError(f"{where}: {name!r} is not a setting; settings: {', '.join(setting_names())}")
    default = {f.name: f.default for f in setting_fields()}[name]
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise UserError(f"{where}: {name} takes a list of values, not {json.dumps(value)}")
        return tuple(_setting_value_text(name, item, where) for item in value)
    if isinstance(value, (list, dict)) or value is None:
        raise UserError(f"{where}: {name} takes one value, not {json.dumps(value)}")
    return _setting_value_text(name, value, where)


def _setting_value_text(name: str, value: Any, where: str) -> Any:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return parse_setting(name, text)
    except ValueError as exc:
        raise UserError(f"{where}: {name}: {exc}") from None


def expand_study(base: RunConfig, study: dict, source: str = "the study") -> list[RunConfig]:
    """The runs' settings (seed left at the base's) a study asks for.

    ``base`` holds the command line's settings. A top-level key of the study that names a setting
    overrides them: a list is an axis of a grid (every value is combined with every other
    axis), a single value applies to every run. ``configurations`` is a list of objects whose
    keys are settings; each one overrides the command line and the top-level keys, and every
    configuration is crossed with the axes. ``seeds`` (optional) replaces ``--seeds``. Runs that
    come out identical are kept once, in order.
    """
    unknown = [key for key in study if key not in STUDY_KEYS and key not in setting_names()]
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}; a study has \"configurations\", "
                        f"\"seeds\" and settings ({', '.join(setting_names())})")
    axes: list[tuple[str, list[Any]]] = []
    fixed: dict[str, Any] = {}
    for name, value in study.items():
        if name in STUDY_KEYS:
            continue
        default = {f.name: f.default for f in setting_fields()}.get(name)
        is_axis = isinstance(value, list) and not (isinstance(default, tuple)
                                                   and not all(isinstance(v, list) for v in value))
        if is_axis:
            if not value:
                raise UserError(f"{source}: {name} lists no value")
            axes.append((name, [_setting_value(name, v, f"{source}: {name}") for v in value]))
        else:
            fixed[name] = _setting_value(name, value, f"{source}: {name}")
    entries = study.get("configurations", [{}])
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{source}: \"configurations\" must be a non-empty list of objects such as "
                        '{"prune_percent": 90, "prune_iterations": 2}')
    configs: dict[str, RunConfig] = {}
    for index, entry in enumerate(entries):
        where = f"{source}: configurations[{index}]"
        own = {name: _setting_value(name, value, where) for name, value in entry.items()}
        for combination in itertools.product(*(values for _, values in axes)):
            values = {**fixed, **dict(zip((name for name, _ in axes), combination)), **own}
            config = dataclasses.replace(base, **values)
            try:
                config.validate()
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            configs.setdefault(config.stem, config)
    return list(configs.values())


def study_seeds(study: dict, default: Sequence[int], source: str = "the study") -> list[int]:
    """The study's ``seeds``, or ``default`` (the command line's) when it has none."""
    seeds = study.get("seeds", list(default))
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{source}: \"seeds\" must be a non-empty list of whole numbers such as [0, 1, 2]")
    values = [_setting_value_text("seed", s, f"{source}: seeds") for s in seeds]
    if len(set(values)) < len(values):
        raise UserError(f"{source}: \"seeds\" lists a seed more than once")
    return values


# --------------------------------------------------------------------------- launch settings
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
    folder: Path = Path("saves/launch")
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


def slurm_parameters(settings: SlurmSettings, *, job_name: str, on_gpu: bool) -> dict[str, Any]:
    """SlurmExecutor.update_parameters's arguments for one job per run (one node, one task)."""
    gpus = settings.gpus_per_job if settings.gpus_per_job is not None else (1 if on_gpu else 0)
    parameters: dict[str, Any] = {
        "job_name": job_name, "time": settings.time_min, "nodes": 1, "ntasks_per_node": 1,
        "array_parallelism": settings.array_parallelism,
        # The jobs import this toolkit from its folder wherever sbatch starts them.
        "setup": [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
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


# --------------------------------------------------------------------------- local parallelism
def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPUs local jobs are spread over, as CUDA_VISIBLE_DEVICES names them: those this
    process sees (its own CUDA_VISIBLE_DEVICES, indices or UUIDs) or 0..count-1."""
    if cuda_visible_devices is not None and cuda_visible_devices.strip():
        return [g.strip() for g in cuda_visible_devices.split(",") if g.strip()][:device_count]
    return [str(i) for i in range(device_count)]


def gpu_for_next_job(busy: Sequence[str], gpus: Sequence[str]) -> str | None:
    """CUDA_VISIBLE_DEVICES of the next local job: the GPU running the fewest jobs now (the
    first such in order); None on a machine without GPUs."""
    if not gpus:
        return None
    return min(gpus, key=lambda gpu: (busy.count(gpu), list(gpus).index(gpu)))


def local_parallelism(requested: int | None, gpus: int, measured: bool,
                      allow_shared_energy: bool) -> tuple[int, str | None]:
    """Local jobs at a time, and a line to tell the user when the request was changed or risky.

    Measured work (CO2 tracking, inference replays) runs one job per GPU, or one at a time on
    the CPU: concurrent jobs' energy cannot be told apart.
    """
    clean = max(gpus, 1)
    if requested is None:
        return clean, None
    if not measured or requested <= clean:
        return requested, None
    hardware = f"one job per GPU ({gpus})" if gpus else "one job at a time on the CPU"
    if allow_shared_energy:
        return requested, (f"warning: {requested} measured jobs at once share hardware: their energy "
                           "and CO2 figures include each other's (--allow_shared_energy)")
    return clean, (f"note: measured jobs (CO2 tracking, inference) run {hardware}, not {requested} at "
                   "once, so that each one's energy is its own; --allow_shared_energy overrides this")


# --------------------------------------------------------------------------- ledger of jobs
@dataclass
class LedgerEntry:
    path: Path
    run: str
    host: str
    pid: int
    gpu: str | None
    start: float
    end: float | None = None

    def as_dict(self) -> dict:
        return {"run": self.run, "host": self.host, "pid": self.pid, "gpu": self.gpu,
                "start": self.start, "end": self.end}


def _read_entries(folder: Path) -> list[LedgerEntry]:
    entries = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            entries.append(LedgerEntry(path, str(data["run"]), str(data["host"]), int(data["pid"]),
                                       data.get("gpu"), float(data["start"]), data.get("end")))
        except (OSError, ValueError, KeyError, TypeError):
            continue   # a file cut short by a crash says nothing reliable
    return entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_ledger_entry(folder: Path, run: str, gpu: str | None) -> LedgerEntry:
    """Record that ``run`` starts now on this host. Entries of this host's dead jobs are closed
    first: they ended before now, whenever exactly, so they overlap nothing that starts now."""
    folder.mkdir(parents=True, exist_ok=True)
    host, now = socket.gethostname(), time.time()
    for entry in _read_entries(folder):
        if entry.end is None and entry.host == host and not _alive(entry.pid):
            entry.end = now
            atomic_write_text(entry.path, json.dumps(entry.as_dict()))
    entry = LedgerEntry(folder / f"{run}.{host}.{os.getpid()}.{time.time_ns()}.json", run, host,
                        os.getpid(), gpu, _process_start(now))
    atomic_write_text(entry.path, json.dumps(entry.as_dict()))
    return entry


def _process_start(fallback: float) -> float:
    """When this process started: its imports competed for the CPU too."""
    try:
        import psutil   # CodeCarbon's own dependency

        return min(psutil.Process(os.getpid()).create_time(), fallback)
    except Exception:
        return fallback


def close_ledger_entry(entry: LedgerEntry) -> None:
    entry.end = time.time()
    atomic_write_text(entry.path, json.dumps(entry.as_dict()))


def shared_hardware(folder: Path, run: str, now: float | None = None) -> dict[str, Any]:
    """Which other launched jobs ran on this host while any attempt at ``run`` did.

    ``concurrent_runs``: those jobs (they shared the CPU socket and memory); ``shared_gpu_with``:
    those among them given the same GPU. Jobs not started by a launcher (or by another user)
    are not seen.
    """
    now = time.time() if now is None else now
    host = socket.gethostname()
    entries = [e for e in _read_entries(folder) if e.host == host]
    mine = [e for e in entries if e.run == run]
    others = [e for e in entries if e.run != run]

    def overlaps(a: LedgerEntry, b: LedgerEntry) -> bool:
        a_end = a.end if a.end is not None else now
        b_end = b.end if b.end is not None else now
        return a.start < b_end and b.start < a_end

    concurrent = [o for o in others if any(overlaps(o, m) for m in mine)]
    my_gpus = {m.gpu for m in mine if m.gpu}
    return {"concurrent_runs": sorted({o.run for o in concurrent}),
            "shared_gpu_with": sorted({o.run for o in concurrent if o.gpu and o.gpu in my_gpus}),
            "attempts": len(mine)}


# --------------------------------------------------------------------------- tasks (run inside a job)
@contextmanager
def _ledger(folder: Path, run: str, gpu: str | None) -> Iterator[LedgerEntry]:
    entry = open_ledger_entry(folder, run, gpu)
    try:
        yield entry
    finally:
        close_ledger_entry(entry)


def _job_id() -> str:
    try:
        from submitit import JobEnvironment

        return str(JobEnvironment().job_id)
    except Exception:   # outside a submitit job (tests call tasks directly)
        return str(os.getpid())


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
        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu   # before torch first touches CUDA
        run = self.config.stem
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
        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu
        with _ledger(self.ledger, f"replay.{self.run}", self.gpu):
            return run_inference(self.job)


# --------------------------------------------------------------------------- submitting and waiting
@dataclass
class Planned:
    """A job to launch: what it does, and whether its energy is measured."""

    label: str
    task: Any
    measured: bool


@dataclass
class Outcome:
    planned: Planned
    job_id: str
    value: Any = None
    error: str | None = None          # None: the job succeeded
    log_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables the local executor's processes inherit, for the submission only."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{REPO_ROOT}{os.pathsep}{current}" if current else str(REPO_ROOT)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").rstrip("\n").splitlines()[-lines:]
    except OSError:
        return []


def _outcome(planned: Planned, job, launcher: str) -> Outcome:
    outcome = Outcome(planned, str(job.job_id))
    if launcher == "local" and not job.paths.result_pickle.exists():
        # A local job that left no result was killed (no Python exception to report).
        outcome.error = "it ended without a result (killed by a signal, or out of memory?)"
    else:
        try:
            outcome.value = job.result()
            return outcome
        except Exception as exc:   # submitit's FailedJobError / UncompletedJobError, with the trace
            outcome.error = _last_error_line(str(exc))
    for path in (job.paths.stderr, job.paths.stdout):
        lines = tail(path)
        if lines:
            outcome.log_tail, outcome.log_path = lines, path
            break
    return outcome


def _last_error_line(text: str) -> str:
    """The exception line of a traceback submitit passes on (its last 'Error: ...' line)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("-")]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Held|Interrupt)\b.*:", line)]
    return (errors[-1] if errors else (lines[0] if lines else "it failed")).strip()


def _progress(total: int, settings: LaunchSettings):
    from tqdm import tqdm

    return tqdm(total=total, unit="job", desc="jobs", dynamic_ncols=True, disable=not settings.show_progress)


def _say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)


def run_local(planned: list[Planned], settings: LaunchSettings, gpus: list[str]) -> list[Outcome]:
    """Run the jobs on this machine: unmeasured ones first (``--jobs`` at a time), then the
    measured ones (one per GPU, or one at a time, see :func:`local_parallelism`)."""
    import submitit

    log = get_logger()
    executor = submitit.LocalExecutor(folder=settings.folder / JOBS_FOLDER)
    phases = [[p for p in planned if not p.measured], [p for p in planned if p.measured]]
    outcomes: list[Outcome] = []
    running: dict[Any, tuple[Planned, str | None]] = {}
    with _progress(len(planned), settings) as bar:
        try:
            for phase, measured in zip(phases, (False, True)):
                if not phase:
                    continue
                slots, message = local_parallelism(settings.jobs, len(gpus), measured,
                                                   settings.allow_shared_energy)
                if message and len(phase) > 1:
                    log.warning(message)
                for item in phase:
                    if isinstance(item.task, TrainingTask):
                        item.task.parallel_jobs = slots
                queue = list(phase)
                while queue or running:
                    while queue and len(running) < slots:
                        item = queue.pop(0)
                        gpu = gpu_for_next_job([g for _, g in running.values() if g], gpus)
                        item.task.gpu = gpu
                        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
                        with _environment(PYTHONPATH=_pythonpath()):
                            job = executor.submit(item.task)
                        running[job] = (item, gpu)
                        _say(f"job {job.job_id} started: {item.label}"
                             + (f" (GPU {gpu})" if gpu is not None else ""))
                    time.sleep(POLL_SECONDS["local"])
                    for job in [j for j in running if j.done()]:
                        item, _ = running.pop(job)
                        outcomes.append(_report(_outcome(item, job, "local"), bar))
        except BaseException:
            for job in running:   # Ctrl-C or a crash here: stop what this process started
                job.cancel(check=False)
            raise
    return outcomes


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


def wait_slurm(planned: list[Planned], jobs: list, settings: LaunchSettings) -> list[Outcome]:
    pending = dict(zip(jobs, planned))
    outcomes: list[Outcome] = []
    with _progress(len(jobs), settings) as bar:
        while pending:
            for job in [j for j in pending if j.done()]:
                outcomes.append(_report(_outcome(pending.pop(job), job, "slurm"), bar))
            if pending:
                time.sleep(POLL_SECONDS["slurm"])
    return outcomes


def _report(outcome: Outcome, bar) -> Outcome:
    bar.update(1)
    if outcome.error is not None:
        lines = [f"job {outcome.job_id} failed: {outcome.planned.label}: {outcome.error}"]
        if outcome.log_tail:
            lines.append(f"  last lines of {outcome.log_path}:")
            lines += [f"    {line}" for line in outcome.log_tail]
        _say("\n".join(lines))
    return outcome


def launch(planned: list[Planned], settings: LaunchSettings, *, job_name: str, on_gpu: bool,
           gpus: list[str]) -> list[Outcome] | None:
    """Run ``planned`` through the chosen launcher; None when not waiting for SLURM jobs."""
    ensure_writable_dir(settings.folder, "launch folder")
    if settings.launcher == "local":
        return run_local(planned, settings, gpus)
    jobs = submit_slurm(planned, settings, job_name=job_name, on_gpu=on_gpu)
    first = str(jobs[0].job_id).split("_")[0] if jobs else "-"
    get_logger().info("Submitted %d job(s) to SLURM as array %s (at most %d at once); logs in %s:\n%s",
                      len(jobs), first, min(settings.slurm.array_parallelism, len(jobs)),
                      settings.folder / JOBS_FOLDER,
                      "\n".join(f"  {job.job_id}  {item.label}" for job, item in zip(jobs, planned)))
    for job, item in zip(jobs, planned):
        if isinstance(item.task, TrainingTask):
            atomic_write_text(settings.folder / QUEUED_FOLDER / f"{item.label}.json",
                              json.dumps({"job_id": str(job.job_id)}))
    if not settings.wait:
        get_logger().info("Not waiting (--no_wait). Follow them with squeue; rerun the same command "
                          "to see the summary: finished runs are skipped, missing ones resubmitted.")
        return None
    return wait_slurm(planned, jobs, settings)


def _failures(outcomes: list[Outcome], rerun_hint: str) -> None:
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} job(s) failed (see above); {rerun_hint}")


def _gpus(device: str) -> list[str]:
    if device == "cpu":
        return []
    import torch

    return visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


# --------------------------------------------------------------------------- training studies
def run_summary(config: RunConfig, path: Path) -> str:
    """The summary a run prints when it finishes, from its results file."""
    from archs.training import SUMMARY_HEADERS, summary_rows
    from utils import load_checkpoint

    results = load_checkpoint(path)
    shared = results.get("launch", {}).get("concurrent_runs")
    note = f"\nShared its host with: {', '.join(shared)}" if shared else ""
    tracked = ", CO2 tracked" if config.co2_tracking_mode else ""
    name = config.config_name + config.configuration_suffix
    return (f"\nSeed {config.seed} summary ({name}{tracked}, {config.arch_type} on {config.dataset}):\n"
            f"{format_table(SUMMARY_HEADERS, summary_rows(results['cycles']))}\nSaved {path}{note}")


def slurm_job_state(folder: Path, job_id: str) -> str:
    """sacct's state of a SLURM job ('UNKNOWN' when sacct cannot say)."""
    import submitit

    try:
        return submitit.SlurmJob(folder=folder / JOBS_FOLDER, job_id=job_id).watcher.get_state(job_id, mode="force")
    except Exception:   # no sacct here, or an answer submitit cannot read
        return "UNKNOWN"


def _queued_job(settings: LaunchSettings, config: RunConfig) -> str | None:
    """The SLURM job that will still train ``config`` (submitted earlier, pending or running)."""
    marker = settings.folder / QUEUED_FOLDER / f"{config.stem}.json"
    if settings.launcher != "slurm" or not marker.is_file():
        return None
    try:
        job_id = str(json.loads(marker.read_text())["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    state = slurm_job_state(settings.folder, job_id)
    return job_id if state.split()[0] in SLURM_ACTIVE_STATES else None


def _run_state(job: TrainingJob, config: RunConfig, settings: LaunchSettings) -> str:
    """'finished', 'busy' (a live process trains it, or a SLURM job will) or 'todo'."""
    out_path = results_path(job.save_dir, config)
    if out_path.exists():
        if read_run_settings(out_path).identity() != config.identity():
            raise UserError(f"{out_path} holds a run with other settings; use another --save_dir or "
                            "delete it to retrain")
        return "finished"
    queued = _queued_job(settings, config)
    if queued is not None:
        get_logger().info("not submitted again: %s is SLURM job %s", config.stem, queued)
        return "busy"
    try:
        with ProcessLock(lock_path(job.save_dir, config), f"run {out_path}"):
            pass
    except LockHeld as exc:
        get_logger().warning("warning: not submitted: %s", exc)
        return "busy"
    return "todo"


def launch_training(template: TrainingJob, configs: Sequence[RunConfig], seeds: Sequence[int],
                    settings: LaunchSettings) -> list[Path]:
    """Train every configuration with every seed; each run a job unless ``launcher == "none"``.

    Returns the results files of the finished runs. Raises UserError when a job failed (after
    waiting for all of them), naming how many.
    """
    log = get_logger()
    for config in configs:   # every configuration checked before any is trained
        check_pruning_schedule(config)
        dataclasses.replace(template, config=config, seeds=list(seeds))   # checks the seeds
    if settings.launcher == "none":
        written: list[Path] = []
        for config in configs:
            written += run_job(dataclasses.replace(template, config=config, seeds=list(seeds)))
        return written

    save_dir = Path(template.save_dir).resolve()
    ensure_writable_dir(save_dir, "save directory")
    base = dataclasses.replace(template, save_dir=save_dir, data_dir=Path(template.data_dir).resolve(),
                               resume=True, show_progress=False)
    runs = [dataclasses.replace(config, seed=seed) for config in configs for seed in seeds]
    states = {run.stem: _run_state(base, run, settings) for run in runs}
    todo = [run for run in runs if states[run.stem] == "todo"]
    finished = [run for run in runs if states[run.stem] == "finished"]
    busy = [run for run in runs if states[run.stem] == "busy"]
    log.info("%d run(s): %d finished (skipped), %d queued or running (skipped), %d to launch with the "
             "%s launcher", len(runs), len(finished), len(busy), len(todo), settings.launcher)

    outcomes: list[Outcome] = []
    if todo:
        ledger = settings.folder / LEDGER_FOLDER
        planned = [Planned(run.stem, TrainingTask(dataclasses.replace(base, config=run, seeds=[run.seed]),
                                                  settings.launcher, ledger, None,
                                                  settings.allow_shared_energy),
                           measured=run.co2_tracking_mode) for run in todo]
        on_gpu = template.device != "cpu"
        result = launch(planned, settings, job_name="lottery_ticket", on_gpu=on_gpu,
                        gpus=_gpus(template.device) if settings.launcher == "local" else [])
        if result is None:
            return []
        outcomes = result
    done = [run for run in runs if results_path(save_dir, run).exists()]
    for run in done:
        log.info("%s", run_summary(run, results_path(save_dir, run)))
    paths = [results_path(save_dir, run) for run in done]
    log.info("\nFinished %d of %d run(s); results:\n%s", len(done), len(runs),
             "\n".join(f"  {p}" for p in paths))
    _failures(outcomes, "rerun the same command to resubmit them: finished runs are skipped and "
                        "interrupted ones resume from their checkpoint")
    return paths


# --------------------------------------------------------------------------- inference replays
def run_filter_for(config: RunConfig) -> RunFilter:
    """The filter that selects exactly the runs of ``config``'s configuration and seed."""
    where = tuple((f.name, getattr(config, f.name)) for f in setting_fields()
                  if setting_role(f.name) not in (SEED, MEASUREMENT))
    return RunFilter(configs=(config.config_name,), seeds=(config.seed,), where=where)


def launch_replay(job, settings: LaunchSettings) -> list[dict]:
    """The inference replay (``archs.inference.InferenceJob``), one job per selected run.

    Each job merges its rows into inference_runs.csv under a lock, so jobs may end in any order.
    """
    from archs.inference import run_inference, select_runs, warn_if_passes_too_short
    from data.inference_tables import read_rows, summarise, summary_table
    from data.runs import inference_runs_csv_path

    if settings.launcher == "none":
        return run_inference(job)
    log = get_logger()
    runs = select_runs(job)
    save_dir = Path(job.save_dir).resolve()
    base = dataclasses.replace(job, save_dir=save_dir, show_progress=False,
                               data_dir=Path(job.data_dir).resolve() if job.data_dir else None)
    ledger = settings.folder / LEDGER_FOLDER
    planned = [Planned(f"replay of {run.path.stem}",
                       ReplayTask(dataclasses.replace(base, run_filter=run_filter_for(run.config)),
                                  run.path.stem, ledger), measured=True) for run in runs]
    log.info("%d run(s) to replay with the %s launcher", len(planned), settings.launcher)
    outcomes = launch(planned, settings, job_name="inference", on_gpu=job.device != "cpu",
                      gpus=_gpus(job.device) if settings.launcher == "local" else [])
    if outcomes is None:
        return []
    rows = [row for o in outcomes if o.error is None for row in o.value]
    if rows:
        warn_if_passes_too_short(rows, job)
        runs_csv = inference_runs_csv_path(save_dir, job.arch, job.dataset)
        log.info("\nSummary over seeds (mean ± std; CodeCarbon estimates for energy and CO2):\n%s",
                 format_table(*summary_table(summarise(read_rows(runs_csv)))))
        log.info("\nWrote %s and %s", runs_csv, runs_csv.with_name("inference_summary.csv"))
    _failures(outcomes, "rerun the same command to replay them again")
    return rows


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
    slurm.add_argument("--slurm_time", type=_argument(parse_slurm_time), default=240, metavar="TIME",
                       help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default: 240 "
                            "minutes); a job that reaches it is requeued and resumes")
    slurm.add_argument("--slurm_gpus_per_job", type=int, default=None, metavar="N",
                       help="GPUs per job (default: 1, or 0 with --device cpu)")
    slurm.add_argument("--slurm_cpus_per_job", type=positive_int, default=None, metavar="N",
                       help="CPU cores per job (default: the cluster's)")
    slurm.add_argument("--slurm_mem", type=_argument(parse_memory), default=None, metavar="MEM",
                       help="memory per job as sbatch writes it, e.g. 16G (default: the cluster's)")
    slurm.add_argument("--slurm_array_parallelism", type=positive_int, default=256, metavar="N",
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
        given += ["slurm_time"] if args.slurm_time != 240 else []
        given += ["slurm_array_parallelism"] if args.slurm_array_parallelism != 256 else []
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
