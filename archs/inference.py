"""Inference replay: run the saved tickets over their test split and measure the cost.

For every saved training run found (or those the filters name) the ticket is rebuilt from
its results file, converted to the requested kernels (:mod:`archs.sparse`), checked
against the dense forward, run once untimed (a warm-up), then replayed ``passes`` times over
the run's own test split under a CodeCarbon tracker flushed after each pass (one CSV row per
pass, as the study did). Each pass is the forward, the loss and the argmax of every batch,
exactly what :func:`archs.training.evaluate` computes. One row per replayed run goes to
``inference_runs.csv``; the mean and standard deviation over seeds, per configuration, kernel
mode and measuring conditions (weights, threads, batch size), to ``inference_summary.csv``.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from archs import build_model
from archs.masks import masks_from_state, percent_remaining, prunable_names
from archs.sparse import CONVOLUTION_REASON, KERNEL_MODES, compare_outputs, sparsify
from archs.training import evaluate
from data.csv_tables import csv_text
from data.datasets import Split, get_spec, load_dataset, make_test_split
from data.emissions import MIN_POWER_SAMPLES, EmissionsRecorder, TrackerSettings
from data.runs import (DEFAULT_DECAY, DEFAULT_LR, RunFileInfo, find_run_files, inference_csv_path,
                       inference_dir, inference_runs_csv_path, inference_summary_csv_path,
                       partial_csv_path, run_dir)
from data.statistics import Estimate
from utils import (UserError, atomic_write_text, ensure_writable_dir, first_line, format_table,
                   get_logger, load_checkpoint, resolve_device, synchronise)

MODE_CHOICES = KERNEL_MODES + ("both",)
STATES = {"final": "final_state_dict", "best": "best_state_dict"}
DEFAULT_STATE = "final"   # the weights the original replayed; tables older than --state hold these

# inference_runs.csv: one row per replayed run. Units in the names; see the README.
RUN_COLUMNS = ("arch", "dataset", "config", "prune_percent", "prune_iterations", "seed", "device", "mode",
               "state", "threads", "batch_size", "passes", "images_per_pass", "percent_remaining",
               "test_loss", "test_accuracy", "seconds_per_pass", "seconds_per_pass_std",
               "images_per_second", "energy_kwh_per_pass", "co2_kg_per_pass", "emissions_csv")
# A later replay replaces the row with the same values of these; any other difference (other
# weights, threads or batch size) is another measurement and gets its own row.
ROW_KEY = ("config", "seed", "device", "mode", "state", "threads", "batch_size")
# What a time or an energy depends on besides the ticket and its kernels: rows are only
# averaged or compared (speed-up) under the same values.
CONDITIONS = ("device", "state", "threads", "batch_size")
SUMMARY_METRICS = ("percent_remaining", "test_accuracy", "seconds_per_pass", "images_per_second",
                   "energy_kwh_per_pass", "co2_kg_per_pass", "speedup_vs_dense")
SUMMARY_GROUP = ("arch", "dataset", "config", "mode") + CONDITIONS
SUMMARY_COLUMNS = ("arch", "dataset", "config", "device", "mode", "state", "threads", "batch_size",
                   "seeds") + tuple(f"{metric}_{stat}" for metric in SUMMARY_METRICS
                                    for stat in ("mean", "std"))

# How the cells of inference_runs.csv are read back (any other column is a number).
TEXT_COLUMNS = ("arch", "dataset", "config", "device", "mode", "state", "emissions_csv")
WHOLE_NUMBER_COLUMNS = ("prune_iterations", "seed", "threads", "batch_size", "passes", "images_per_pass")
REQUIRED_COLUMNS = ("arch", "dataset", "config", "seed", "device", "mode")


@dataclass
class InferenceJob:
    arch: str = "fc1"
    dataset: str = "mnist"
    save_dir: Path = Path("saves")
    data_dir: Path | None = None          # None: the folder each run was trained with
    configs: list[str] | None = None      # e.g. ["pp90x2", "pp0x1"]; None: all found
    seeds: list[int] | None = None
    state: str = DEFAULT_STATE
    passes: int = 10
    sweeps_per_pass: int = 1              # times each pass classifies the whole test split
    device: str = "cpu"
    batch_size: int = 512
    threads: int | None = None
    mode: str = "auto"
    measure_auto: bool = False
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    show_progress: bool = True


def modes_for(mode: str) -> list[str]:
    return ["dense", "sparse"] if mode == "both" else [mode]


def select_runs(job: InferenceJob) -> list[RunFileInfo]:
    """The training runs to replay: one per configuration and seed (the non-CO2 run if both exist).

    Runs of a hyperparameter grid (another learning rate or weight decay than the defaults) are
    not replayed; the log says how many were left out.
    """
    log = get_logger()
    on_disk = find_run_files(job.save_dir, job.arch, job.dataset)
    found = [info for info in on_disk if info.lr == DEFAULT_LR and info.decay == DEFAULT_DECAY]
    folder = run_dir(job.save_dir, job.arch, job.dataset)
    grid_runs = len(on_disk) - len(found)
    if not found:
        held = f" (only {grid_runs} run(s) of a hyperparameter grid, which are not replayed)" \
            if grid_runs else ""
        raise UserError(f"no saved training runs in {folder}{held}; make them with: python3 "
                        f"lottery_ticket.py --arch_type {job.arch} --dataset {job.dataset} "
                        f"--save_dir {job.save_dir}")
    if grid_runs:
        log.info("Skipping %d run(s) of a hyperparameter grid (non-default --lr/--decay) in %s: "
                 "they are not replayed", grid_runs, folder)
    chosen: dict[tuple[str, int], RunFileInfo] = {}
    for info in sorted(found, key=lambda i: i.co2, reverse=True):  # CO2-mode runs first, then overridden
        chosen[(info.config_name, info.seed)] = info
    selected = [info for key, info in sorted(chosen.items())
                if (job.configs is None or info.config_name in job.configs)
                and (job.seeds is None or info.seed in job.seeds)]
    if not selected:
        available = sorted({f"{c} seed {s}" for c, s in chosen})
        raise UserError(f"no saved run in {folder} matches --configs {job.configs or 'any'} --seeds "
                        f"{job.seeds or 'any'}; found: {', '.join(available)}")
    return selected


def load_ticket(info: RunFileInfo, state_name: str, arch: str, device: torch.device):
    """The model of a saved run with the chosen weights, and the saved results."""
    results = load_checkpoint(info.path)
    key = STATES[state_name]
    if key not in results or "args" not in results:
        raise UserError(f"{info.path} is not a training results file of this toolkit (no {key}); "
                        "remake it with lottery_ticket.py")
    args = results["args"]
    if args.get("arch_type") != arch:
        raise UserError(f"{info.path} holds a {args.get('arch_type')} run, not {arch}")
    spec = get_spec(args["dataset"])
    model = build_model(arch, spec.in_channels, spec.image_size, spec.num_classes)
    try:
        model.load_state_dict(results[key])
    except RuntimeError as exc:
        raise UserError(f"the weights in {info.path} do not fit {arch} on {args['dataset']} "
                        f"({first_line(exc)}); was it made by another version?") from exc
    return model.to(device).eval(), results


def replay(model, split: Split, job: InferenceJob, device: torch.device, csv_path: Path,
           progress: tqdm) -> dict:
    """One untimed warm-up pass, then ``job.passes`` timed passes under a tracker flushed after each."""
    partial = partial_csv_path(csv_path)
    partial.unlink(missing_ok=True)
    evaluate(model, split, job.batch_size)  # warm-up: first-call allocations stay out of the figures
    recorder = EmissionsRecorder(partial, job.tracker, project_name=csv_path.stem)
    seconds, losses, accuracies, record = [], [], [], {}
    try:
        for index in range(job.passes):
            synchronise(device)
            start = time.perf_counter()
            for _ in range(job.sweeps_per_pass):
                loss, accuracy = evaluate(model, split, job.batch_size)
            synchronise(device)
            seconds.append(time.perf_counter() - start)
            losses.append(loss)
            accuracies.append(accuracy)
            record = recorder.stop() if index == job.passes - 1 else recorder.flush()
            progress.update()
    except BaseException:
        recorder.stop()
        partial.unlink(missing_ok=True)
        raise
    partial.replace(csv_path)
    return {"seconds": Estimate.from_samples(seconds), "loss": Estimate.from_samples(losses).mean,
            "accuracy": Estimate.from_samples(accuracies).mean,
            "energy_kwh": record.get("energy_consumed", math.nan),
            "co2_kg": record.get("emissions", math.nan)}


def run_inference(job: InferenceJob) -> list[dict]:
    """Replay every selected run in every requested mode; returns the rows written."""
    log = get_logger()
    device = resolve_device(job.device)
    if job.threads:
        torch.set_num_threads(job.threads)
    device_kind = "gpu" if device.type == "cuda" else "cpu"
    runs = select_runs(job)
    ensure_writable_dir(inference_dir(job.save_dir, job.arch, job.dataset), "inference folder")
    modes = modes_for(job.mode)
    datasets: dict[str, Split] = {}
    test_splits: dict[tuple[str, int], Split] = {}   # seeds share a test split across configurations
    rows, said_convolutions, tables_shown = [], False, set()
    log.info("Replaying %d run(s) x %d mode(s) (%s), %d pass(es) each on %s with %d thread(s)",
             len(runs), len(modes), ", ".join(modes), job.passes, device, torch.get_num_threads())
    progress = tqdm(total=len(runs) * len(modes) * job.passes, unit="pass", desc="inference",
                    dynamic_ncols=True, disable=not job.show_progress)
    with progress:
        for info in runs:
            model, results = load_ticket(info, job.state, job.arch, device)
            data_dir = str(job.data_dir or results.get("data_dir", "data"))
            if (data_dir, info.seed) not in test_splits:
                if data_dir not in datasets:
                    datasets[data_dir] = load_dataset(job.dataset, data_dir)
                test_splits[data_dir, info.seed] = make_test_split(datasets[data_dir], info.seed).to(device)
            test = test_splits[data_dir, info.seed]
            state = results[STATES[job.state]]
            remaining = percent_remaining(masks_from_state(state, prunable_names(model)))
            log.info("\n%s seed %d (%s weights, %.2f%% of prunable weights left)", info.config_name,
                     info.seed, job.state, remaining)
            for mode in modes:
                measure = job.measure_auto and mode == "auto"
                converted, choices = sparsify(model, mode, measure=measure,
                                              example_input=test.images[:job.batch_size] if measure else None)
                if not said_convolutions and any(c.reason == CONVOLUTION_REASON for c in choices):
                    log.info("Note: convolutions run dense in every mode (torch has no sparse CPU "
                             "convolution kernel); only linear layers use sparse kernels.")
                    said_convolutions = True
                if mode != "dense" and (info.config_name, mode) not in tables_shown:
                    tables_shown.add((info.config_name, mode))
                    log.info("Kernels in %s mode:\n%s", mode, format_table(
                        ["layer", "sparsity", "kernel", "why"],
                        [(c.name, f"{100 * c.sparsity:.1f}%", c.kernel, c.reason) for c in choices]))
                agreement = compare_outputs(model, converted, test.images[:job.batch_size])
                if not agreement.agrees:
                    raise UserError(f"the {mode} kernels disagree with the dense forward on "
                                    f"{info.config_name} seed {info.seed} (relative error "
                                    f"{agreement.relative_error:.2e}, tolerance {agreement.tolerance:.0e}); "
                                    "this is a bug, please report it; --mode dense avoids the sparse kernels")
                csv_path = inference_csv_path(job.save_dir, job.arch, job.dataset, device_kind,
                                              info.prune_percent, info.prune_iterations, info.seed, mode,
                                              job.state)
                measured = replay(converted, test, job, device, csv_path, progress)
                row = run_row(job, info, device_kind, mode, len(test) * job.sweeps_per_pass, remaining,
                              measured, csv_path)
                log.info("%s: %.4f s per pass (%.0f images/s), test accuracy %.2f%%, %.3e kg CO2 per pass",
                         mode, row["seconds_per_pass"], row["images_per_second"], row["test_accuracy"],
                         row["co2_kg_per_pass"])
                rows.append(row)
    warn_if_passes_too_short(rows, job)
    runs_csv = inference_runs_csv_path(job.save_dir, job.arch, job.dataset)
    summary_csv = inference_summary_csv_path(job.save_dir, job.arch, job.dataset)
    all_rows = merge_rows(read_rows(runs_csv), rows)
    atomic_write_text(runs_csv, csv_text(RUN_COLUMNS, all_rows))
    summary = summarise(all_rows)
    atomic_write_text(summary_csv, csv_text(SUMMARY_COLUMNS, summary))
    log.info("\nSummary over seeds (mean ± std; CodeCarbon estimates for energy and CO2):\n%s",
             format_table(*summary_table(summary)))
    log.info("\nWrote %s and %s", runs_csv, summary_csv)
    return rows


def warn_if_passes_too_short(rows: list[dict], job: InferenceJob) -> None:
    shortest = min((row["seconds_per_pass"] for row in rows), default=math.inf)
    if job.tracker.too_short_to_measure(shortest):
        wanted = MIN_POWER_SAMPLES * job.tracker.measure_power_secs
        sweeps = math.ceil(job.sweeps_per_pass * wanted / shortest)
        get_logger().warning(
            "\nWarning: the shortest passes lasted %.3f s, under %d of CodeCarbon's %g s power samples: "
            "their energy and CO2 figures are mostly sampling noise. For figures you can trust, "
            "make each pass longer with --sweeps_per_pass %d (times are fine as they are).",
            shortest, MIN_POWER_SAMPLES, job.tracker.measure_power_secs, sweeps)


def run_row(job: InferenceJob, info: RunFileInfo, device_kind: str, mode: str, images: int,
            remaining: float, measured: dict, csv_path: Path) -> dict:
    """The inference_runs.csv row of one replay (see RUN_COLUMNS)."""
    seconds: Estimate = measured["seconds"]
    return {
        "arch": job.arch, "dataset": job.dataset, "config": info.config_name,
        "prune_percent": info.prune_percent, "prune_iterations": info.prune_iterations,
        "seed": info.seed, "device": device_kind, "mode": mode, "state": job.state,
        "threads": torch.get_num_threads(), "batch_size": job.batch_size, "passes": job.passes,
        "images_per_pass": images, "percent_remaining": remaining, "test_loss": measured["loss"],
        "test_accuracy": measured["accuracy"], "seconds_per_pass": seconds.mean,
        "seconds_per_pass_std": seconds.std,   # NaN (an empty cell) for a single pass
        "images_per_second": images / seconds.mean,
        "energy_kwh_per_pass": measured["energy_kwh"] / job.passes,
        "co2_kg_per_pass": measured["co2_kg"] / job.passes, "emissions_csv": csv_path.name,
    }


# ---------------------------------------------------------------------------- tables
def parse_run_row(row: dict) -> dict:
    """A row of inference_runs.csv as written by :func:`run_row`; raises ValueError when it cannot be.

    Tables written by earlier versions lack columns (``state``, ``threads``, ``batch_size``...):
    a missing state is the final one, a missing number is None (whole numbers) or NaN.
    """
    missing = [column for column in REQUIRED_COLUMNS if not (row.get(column) or "").strip()]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    parsed = {}
    for column in RUN_COLUMNS:
        text = (row.get(column) or "").strip()
        if column in TEXT_COLUMNS:
            parsed[column] = text
        elif column in WHOLE_NUMBER_COLUMNS:
            parsed[column] = int(text) if text else None
        else:
            parsed[column] = float(text) if text else math.nan
    parsed["state"] = parsed["state"] or DEFAULT_STATE
    return parsed


def read_rows(path: Path) -> list[dict]:
    """The rows of an existing inference_runs.csv; a row that cannot be read is left out, with a warning."""
    if not path.exists():
        return []
    log = get_logger()
    rows = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append(parse_run_row(row))
            except ValueError as exc:
                log.warning("warning: line %d of %s cannot be read (%s); it is left out of the "
                            "rewritten table", line, path, exc)
    return rows


def _sortable(value) -> tuple:
    """Tables of earlier versions have None where newer ones have a number: those sort first."""
    return (value is not None, value if value is not None else 0)


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows updated by this invocation's (same :data:`ROW_KEY`)."""
    merged = {tuple(row[k] for k in ROW_KEY): row for row in old}
    merged.update({tuple(row[k] for k in ROW_KEY): row for row in new})
    order = ("config", "device", "mode", "state", "threads", "batch_size", "seed")
    return sorted(merged.values(), key=lambda r: tuple(_sortable(r[k]) for k in order))


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per configuration, mode and :data:`CONDITIONS`.

    The speed-up of a mode is dense seconds per pass over its own, seed by seed (same ticket),
    both measured under the same conditions. An empty cell (NaN) is left out of its metric.
    """
    def conditions(row: dict) -> tuple:
        return tuple(row[c] for c in CONDITIONS)

    dense_seconds = {(r["config"], r["seed"], conditions(r)): r["seconds_per_pass"]
                     for r in rows if r["mode"] == "dense"}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in SUMMARY_GROUP), []).append(row)
    summary = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(map(_sortable, item[0]))):
        out = dict(zip(SUMMARY_GROUP, key)) | {"seeds": len(members)}
        for metric in SUMMARY_METRICS:
            if metric == "speedup_vs_dense":
                values = [dense_seconds.get((r["config"], r["seed"], conditions(r)), math.nan)
                          / r["seconds_per_pass"] for r in members if r["seconds_per_pass"] > 0]
            else:
                values = [r[metric] for r in members]
            estimate = Estimate.from_samples(v for v in values if not math.isnan(v))
            out[f"{metric}_mean"], out[f"{metric}_std"] = estimate.mean, estimate.std
        summary.append(out)
    return summary


def summary_table(summary: list[dict]) -> tuple[list[str], list[tuple]]:
    def pm(row, metric, fmt):
        mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
        if math.isnan(mean):
            return "-"
        return f"{mean:{fmt}}" + ("" if math.isnan(std) else f" ± {std:{fmt}}")

    def known(value):
        return "-" if value is None else value

    headers = ["config", "device", "mode", "state", "threads", "batch", "seeds", "% weights left",
               "test acc %", "s / pass", "images / s", "kWh / pass", "kg CO2 / pass", "speed-up vs dense"]
    rows = [(r["config"], r["device"], r["mode"], r["state"], known(r["threads"]), known(r["batch_size"]),
             r["seeds"], pm(r, "percent_remaining", ".2f"), pm(r, "test_accuracy", ".2f"),
             pm(r, "seconds_per_pass", ".4f"), pm(r, "images_per_second", ".0f"),
             pm(r, "energy_kwh_per_pass", ".2e"), pm(r, "co2_kg_per_pass", ".2e"),
             pm(r, "speedup_vs_dense", ".2f")) for r in summary]
    return headers, rows
