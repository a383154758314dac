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

Modules: :mod:`.study` (study files), :mod:`.settings` (launch settings and flags, torch-free),
:mod:`.local` and :mod:`.slurm` (the two launchers), :mod:`.queue` (SLURM job states),
:mod:`.ledger` (job intervals), :mod:`.tasks` (what runs inside a job), :mod:`.outcome` (reporting jobs) and
:mod:`.orchestration` (training studies and replays through a launcher).
"""
from __future__ import annotations

import importlib

# Old import paths (``from archs.launch import expand_study``) keep working, importing only the
# module that defines the name.
_HOMES = {
    "study": ("read_study", "expand_study", "study_seeds", "STUDY_KEYS"),
    "settings": ("LaunchSettings", "SlurmSettings", "parse_slurm_time", "parse_memory", "parse_additional",
                 "add_launcher_arguments", "launch_settings_from_args", "LAUNCHERS"),
    "local": ("visible_gpus", "gpu_for_next_job", "local_parallelism", "run_local"),
    "ledger": ("LedgerEntry", "open_ledger_entry", "close_ledger_entry", "shared_hardware"),
    "tasks": ("TrainingTask", "ReplayTask"),
    "outcome": ("Planned", "Outcome"),
    "slurm": ("slurm_parameters", "submit_slurm", "wait_slurm"),
    "queue": ("SlurmQueue",),
    "orchestration": ("launch", "launch_training", "launch_replay", "run_summary", "run_filter_for"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
