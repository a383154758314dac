"""Training studies and inference replays through a launcher: skip what is done, launch the rest, report."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from archs.experiment import TrainingJob, check_pruning_schedule, run_job
from archs.launch.local import run_local, visible_gpus
from archs.launch.outcome import Outcome, Planned, _failures
from archs.launch.settings import JOBS_FOLDER, LEDGER_FOLDER, LaunchSettings
from archs.launch.queue import SlurmQueue
from archs.launch.slurm import queue_marker, queued_job, submit_slurm, wait_slurm
from archs.launch.tasks import ReplayTask, TrainingTask
from data.paths import lock_path, results_path
from data.runs import RunConfig, run_key, setting_fields, setting_role
from data.selection import RunFilter, read_run_settings
from data.settings import MEASUREMENT, SEED
from utils import (LockHeld, ProcessLock, UserError, atomic_write_text, ensure_writable_dir,
                   format_table, get_logger)


def launch(planned: list[Planned], settings: LaunchSettings, *, job_name: str, on_gpu: bool,
           gpus: list[str], queue: SlurmQueue | None = None) -> list[Outcome] | None:
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
            atomic_write_text(queue_marker(settings, run_key(item.task.config)),
                              json.dumps({"job_id": str(job.job_id)}))
    if not settings.wait:
        get_logger().info("Not waiting (--no_wait). Follow them with squeue; rerun the same command "
                          "to see the summary: finished runs are skipped, missing ones resubmitted.")
        return None
    return wait_slurm(planned, jobs, settings, queue or SlurmQueue())


def _gpus(device: str) -> list[str]:
    if device == "cpu":
        return []
    import torch

    return visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


# --------------------------------------------------------------------------- training studies
def run_summary(config: RunConfig, path: Path) -> str:
    """The summary a run prints when it finishes, from its results file."""
    from archs.train.summary import SUMMARY_HEADERS, summary_rows
    from data.store import load_checkpoint

    results = load_checkpoint(path)
    shared = results.get("launch", {}).get("concurrent_runs")
    note = f"\nShared its host with: {', '.join(shared)}" if shared else ""
    tracked = ", CO2 tracked" if config.co2_tracking_mode else ""
    name = config.config_name + config.configuration_suffix
    return (f"\nSeed {config.seed} summary ({name}{tracked}, {config.arch_type} on {config.dataset}):\n"
            f"{format_table(SUMMARY_HEADERS, summary_rows(results['cycles']))}\nSaved {path}{note}")


def _run_state(job: TrainingJob, config: RunConfig, settings: LaunchSettings, queue: SlurmQueue) -> str:
    """'finished', 'busy' (a live process trains it, or a SLURM job will) or 'todo'."""
    out_path = results_path(job.save_dir, config)
    if out_path.exists():
        if read_run_settings(out_path).identity() != config.identity():
            raise UserError(f"{out_path} holds a run with other settings; use another --save_dir or "
                            "delete it to retrain")
        return "finished"
    queued = queued_job(settings, run_key(config), queue)
    if queued is not None:
        get_logger().info("not submitted again: %s is SLURM job %s", run_key(config), queued)
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
        check_pruning_schedule(config, template.save_dir)
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
    queue = SlurmQueue()
    states = {run_key(run): _run_state(base, run, settings, queue) for run in runs}
    todo = [run for run in runs if states[run_key(run)] == "todo"]
    finished = [run for run in runs if states[run_key(run)] == "finished"]
    busy = [run for run in runs if states[run_key(run)] == "busy"]
    log.info("%d run(s): %d finished (skipped), %d queued or running (skipped), %d to launch with the "
             "%s launcher", len(runs), len(finished), len(busy), len(todo), settings.launcher)

    outcomes: list[Outcome] = []
    if todo:
        ledger = settings.folder / LEDGER_FOLDER
        planned = [Planned(run_key(run), TrainingTask(dataclasses.replace(base, config=run, seeds=[run.seed]),
                                                  settings.launcher, ledger, None,
                                                  settings.allow_shared_energy),
                           measured=run.co2_tracking_mode) for run in todo]
        on_gpu = template.device != "cpu"
        result = launch(planned, settings, job_name="lottery_ticket", on_gpu=on_gpu,
                        gpus=_gpus(template.device) if settings.launcher == "local" else [], queue=queue)
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
    from data.report.inference_tables import read_rows, summarise, summary_table
    from data.paths import inference_runs_csv_path

    if settings.launcher == "none":
        return run_inference(job)
    log = get_logger()
    runs = select_runs(job)
    save_dir = Path(job.save_dir).resolve()
    base = dataclasses.replace(job, save_dir=save_dir, show_progress=False,
                               data_dir=Path(job.data_dir).resolve() if job.data_dir else None)
    ledger = settings.folder / LEDGER_FOLDER
    planned = [Planned(f"replay of {run_key(run.config)}",
                       ReplayTask(dataclasses.replace(base, run_filter=run_filter_for(run.config)),
                                  run_key(run.config), ledger), measured=True) for run in runs]
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
