"""Where a run's files lie under ``--save_dir`` (default ``saves/``)::

    {arch}/{dataset}/{stem}.pt                       results of a finished run
    {arch}/{dataset}/{stem}.csv                      CodeCarbon rows (CO2-tracking runs)
    {arch}/{dataset}/{stem}.checkpoint.pt            while it trains
    {arch}/{dataset}/{stem}.lock                     while a process trains it (PID and host)
    {arch}/{dataset}/tickets/{stem}/cycle{K}.pt      every cycle's masks and weights
    {arch}/{dataset}/inference/...                   the inference replay (see data.report.inference_tables)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from data.names import branch_file_name

if TYPE_CHECKING:
    from data.runs import RunConfig

SAVE_DIR = Path("saves")   # the default --save_dir of every script and job


def run_dir(save_dir: Path | str, arch: str, dataset: str) -> Path:
    return Path(save_dir) / arch / dataset


def _file_base(save_dir: Path | str, config: RunConfig) -> Path:
    """A run's files without extension: ``ARCH/DATASET/STEM``, or for a branch
    ``ARCH/DATASET/branches/PARENT_STEM/BRANCH_NAME``."""
    folder = run_dir(save_dir, config.arch_type, config.dataset)
    if branch_file_name(config):
        return folder / "branches" / config.parent.stem / branch_file_name(config)
    return folder / config.stem


def _file(save_dir: Path | str, config: RunConfig, extension: str) -> Path:
    base = _file_base(save_dir, config)
    return base.with_name(base.name + extension)   # not with_suffix: names hold dots (lr0.0012)


def results_path(save_dir: Path | str, config: RunConfig) -> Path:
    return _file(save_dir, config, ".pt")


def checkpoint_path(save_dir: Path | str, config: RunConfig) -> Path:
    return _file(save_dir, config, ".checkpoint.pt")


def lock_path(save_dir: Path | str, config: RunConfig) -> Path:
    return _file(save_dir, config, ".lock")


def emissions_csv_path(save_dir: Path | str, config: RunConfig) -> Path:
    return _file(save_dir, config, ".csv")


def partial_csv_path(final_csv: Path) -> Path:
    """Where CodeCarbon writes while a run or replay goes on; renamed to ``final_csv`` when done."""
    return final_csv.with_name(final_csv.stem + ".partial.csv")


def tickets_dir(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / "tickets" / config.stem


def cycle_ticket_path(results_file: Path | str, cycle: int) -> Path:
    """Where the ticket of ``cycle`` (0 = the dense network) of the run in ``results_file`` lives."""
    results_file = Path(results_file)
    return results_file.parent / "tickets" / results_file.stem / f"cycle{cycle}.pt"


def inference_dir(save_dir: Path | str, arch: str, dataset: str) -> Path:
    return run_dir(save_dir, arch, dataset) / "inference"


def inference_csv_path(save_dir: Path | str, config: RunConfig, device_kind: str, mode: str,
                       state: str = "final", cycle: int | None = None) -> Path:
    """``{cpu|gpu}_inf_pp{P}x{N}_seed{S}[_SETTINGS]_{mode}[_{state}][_cycle{K}].csv``: the original's
    name plus the run's non-default settings, the kernel mode, the weights unless they are the
    final ones, and the cycle unless it is the last, so that no two replays share a file. (One
    run per configuration and seed is replayed, so the CO2 mode need not be in the name.)"""
    name = f"{device_kind}_inf_{config.config_name}_seed{config.seed}{config.configuration_suffix}_{mode}"
    if state != "final":
        name += f"_{state}"
    if cycle is not None and cycle != config.prune_iterations - 1:
        name += f"_cycle{cycle}"
    return inference_dir(save_dir, config.arch_type, config.dataset) / f"{name}.csv"


def inference_runs_csv_path(save_dir: Path | str, arch: str, dataset: str) -> Path:
    """One row per replay (run, device, kernel mode, weights, cycle, threads, batch size)."""
    return inference_dir(save_dir, arch, dataset) / "inference_runs.csv"


def inference_summary_csv_path(save_dir: Path | str, arch: str, dataset: str) -> Path:
    """Mean and standard deviation over seeds of inference_runs.csv, per configuration, mode and
    measuring conditions."""
    return inference_dir(save_dir, arch, dataset) / "inference_summary.csv"


CHECKPOINT_MARK = ".checkpoint."   # in the name of a checkpoint and of each of its side files


def is_results_file(path: Path) -> bool:
    """A run's results file, not one of the files beside it while it trains: the checkpoint
    (``STEM.checkpoint.pt``), its side files (``STEM.checkpoint.PART-TAG.pt``) or a temporary
    (``.NAME.PID.HEX.tmp``). Readers skip those without a word."""
    return (path.suffix == ".pt" and not path.name.startswith(".")
            and CHECKPOINT_MARK not in path.name)

