"""The local launcher: jobs as processes on this machine, a few at a time, one GPU each."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from archs.launch.outcome import Outcome, Planned, _outcome, _progress, _report, _say
from archs.launch.settings import JOBS_FOLDER, POLL_SECONDS, REPO_ROOT, LaunchSettings
from archs.launch.tasks import TrainingTask
from utils import get_logger

LOCAL_TIMEOUT_MIN = 60 * 24 * 365     # local jobs have no time limit of their own


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
