"""Inference replay: run the saved tickets over their test split and measure the cost.

For every saved training run found (or those the filters name) the ticket is rebuilt from
its results file, converted to the requested kernels (:mod:`archs.sparse`), checked
against the dense forward, and replayed ``passes`` times over the run's own test split
under a CodeCarbon tracker flushed after each pass (one CSV row per pass, as the study
did). One row per replayed run goes to ``inference_runs.csv``; the mean and standard
deviation over seeds to ``inference_summary.csv``.
"""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from archs import build_model
from archs.masks import prunable_names
from archs.sparse import CONVOLUTION_REASON, KERNEL_MODES, compare_outputs, sparsify
from data.datasets import Split, get_spec, iterate_batches, load_dataset, make_splits
from data.emissions import EmissionsRecorder, TrackerSettings
from data.runs import (DEFAULT_DECAY, DEFAULT_LR, RunFileInfo, find_run_files, inference_csv_path,
                       inference_runs_csv_path, inference_summary_csv_path, run_dir)
from utils import UserError, atomic_write_text, format_table, get_logger, load_checkpoint, resolve_device

MODE_CHOICES = KERNEL_MODES + ("both",)
STATES = {"final": "final_state_dict", "best": "best_state_dict"}

# inference_runs.csv: one row per replayed run. Units in the names; see the README.
RUN_COLUMNS = ("arch", "dataset", "config", "prune_percent", "prune_iterations", "seed", "device", "mode",
               "state", "threads", "passes", "images_per_pass", "percent_remaining", "test_loss",
               "test_accuracy", "seconds_per_pass", "seconds_per_pass_std", "images_per_second",
               "energy_kwh_per_pass", "co2_kg_per_pass", "emissions_csv")
SUMMARY_METRICS = ("percent_remaining", "test_accuracy", "seconds_per_pass", "images_per_second",
                   "energy_kwh_per_pass", "co2_kg_per_pass", "speedup_vs_dense")
SUMMARY_COLUMNS = ("arch", "dataset", "config", "device", "mode", "seeds") + tuple(
    f"{metric}_{stat}" for metric in SUMMARY_METRICS for stat in ("mean", "std"))


@dataclass
class InferenceJob:
    arch: str = "fc1"
    dataset: str = "mnist"
    save_dir: Path = Path("saves")
    data_dir: Path | None = None          # None: the folder each run was trained with
    configs: list[str] | None = None      # e.g. ["pp90x2", "pp0x1"]; None: all found
    seeds: list[int] | None = None
    state: str = "final"
    passes: int = 10
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
    """The training runs to replay: one per configuration and seed (the non-CO2 run if both exist)."""
    found = [info for info in find_run_files(job.save_dir, job.arch, job.dataset)
             if info.lr == DEFAULT_LR and info.decay == DEFAULT_DECAY]
    folder = run_dir(job.save_dir, job.arch, job.dataset)
    if not found:
        raise UserError(f"no saved training runs in {folder}; make them with: python3 lottery_ticket.py "
                        f"--arch_type {job.arch} --dataset {job.dataset} --save_dir {job.save_dir}")
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
                        f"({str(exc).splitlines()[0]}); was it made by another version?") from exc
    return model.to(device).eval(), results


def prunable_percent_remaining(state: dict[str, torch.Tensor], names: list[str]) -> float:
    alive = sum(int(torch.count_nonzero(state[n])) for n in names)
    total = sum(state[n].numel() for n in names)
    return 100.0 * alive / total if total else 100.0


@torch.inference_mode()
def one_pass(model, split: Split, batch_size: int) -> tuple[float, float]:
    """Loss and accuracy (percent) over ``split``: the work that is timed and measured."""
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.int64)
    for images, labels in iterate_batches(split, batch_size):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def replay(model, split: Split, job: InferenceJob, device: torch.device, csv_path: Path,
           project_name: str) -> dict:
    """``job.passes`` timed passes under a tracker flushed after each one."""
    partial = csv_path.with_name(csv_path.stem + ".partial.csv")
    partial.unlink(missing_ok=True)
    one_pass(model, split, job.batch_size)  # warm-up: first-call allocations stay out of the figures
    recorder = EmissionsRecorder(partial, job.tracker, project_name)
    seconds, losses, accuracies, record = [], [], [], {}
    try:
        for index in range(job.passes):
            synchronise(device)
            start = time.perf_counter()
            loss, accuracy = one_pass(model, split, job.batch_size)
            synchronise(device)
            seconds.append(time.perf_counter() - start)
            losses.append(loss)
            accuracies.append(accuracy)
            record = recorder.stop() if index == job.passes - 1 else recorder.flush()
    except BaseException:
        recorder.stop()
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, csv_path)
    return {"seconds": seconds, "loss": statistics.fmean(losses), "accuracy": statistics.fmean(accuracies),
            "energy_kwh": record.get("energy_consumed", math.nan), "co2_kg": record.get("emissions", math.nan)}


def run_inference(job: InferenceJob) -> list[dict]:
    """Replay every selected run in every requested mode; returns the rows written."""
    log = get_logger()
    device = resolve_device(job.device)
    if job.threads:
        torch.set_num_threads(job.threads)
    device_kind = "gpu" if device.type == "cuda" else "cpu"
    runs = select_runs(job)
    modes = modes_for(job.mode)
    datasets: dict[str, Split] = {}
    rows, said_convolutions, tables_shown = [], False, set()
    log.info("Replaying %d run(s) x %d mode(s) (%s), %d pass(es) each on %s with %d thread(s)",
             len(runs), len(modes), ", ".join(modes), job.passes, device, torch.get_num_threads())
    for info in runs:
        model, results = load_ticket(info, job.state, job.arch, device)
        data_dir = str(job.data_dir or results.get("data_dir", "data"))
        if data_dir not in datasets:
            datasets[data_dir] = load_dataset(job.dataset, data_dir)
        test = make_splits(datasets[data_dir], info.seed).test.to(device)
        remaining = prunable_percent_remaining(results[STATES[job.state]], prunable_names(model))
        log.info("\n%s seed %d (%s weights, %.2f%% of prunable weights left)", info.config_name, info.seed,
                 job.state, remaining)
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
                raise RuntimeError(f"{mode} kernels disagree with the dense forward "
                                   f"(relative error {agreement.relative_error:.2e})")
            csv_path = inference_csv_path(job.save_dir, job.arch, job.dataset, device_kind,
                                          info.prune_percent, info.prune_iterations, info.seed, mode)
            measured = replay(converted, test, job, device, csv_path,
                              project_name=f"{device_kind}_inf_{info.config_name}_seed{info.seed}_{mode}")
            per_pass = statistics.fmean(measured["seconds"])
            row = {
                "arch": job.arch, "dataset": job.dataset, "config": info.config_name,
                "prune_percent": info.prune_percent, "prune_iterations": info.prune_iterations,
                "seed": info.seed, "device": device_kind, "mode": mode, "state": job.state,
                "threads": torch.get_num_threads(), "passes": job.passes, "images_per_pass": len(test),
                "percent_remaining": remaining, "test_loss": measured["loss"],
                "test_accuracy": measured["accuracy"], "seconds_per_pass": per_pass,
                "seconds_per_pass_std": statistics.stdev(measured["seconds"]) if job.passes > 1 else 0.0,
                "images_per_second": len(test) / per_pass,
                "energy_kwh_per_pass": measured["energy_kwh"] / job.passes,
                "co2_kg_per_pass": measured["co2_kg"] / job.passes, "emissions_csv": csv_path.name,
            }
            log.info("%s: %.4f s per pass (%.0f images/s), test accuracy %.2f%%, %.3e kg CO2 per pass",
                     mode, per_pass, row["images_per_second"], row["test_accuracy"], row["co2_kg_per_pass"])
            rows.append(row)
    all_rows = merge_rows(read_rows(inference_runs_csv_path(job.save_dir, job.arch, job.dataset)), rows)
    write_csv(inference_runs_csv_path(job.save_dir, job.arch, job.dataset), RUN_COLUMNS, all_rows)
    summary = summarise(all_rows)
    write_csv(inference_summary_csv_path(job.save_dir, job.arch, job.dataset), SUMMARY_COLUMNS, summary)
    log.info("\nSummary over seeds (mean ± std; CodeCarbon estimates for energy and CO2):\n%s",
             format_table(*summary_table(summary)))
    log.info("\nWrote %s and %s", inference_runs_csv_path(job.save_dir, job.arch, job.dataset),
             inference_summary_csv_path(job.save_dir, job.arch, job.dataset))
    return rows


# ---------------------------------------------------------------------------- tables
ROW_KEY = ("config", "seed", "device", "mode", "state")


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows updated by this invocation's (same configuration, seed, device, mode, state)."""
    def key(row):
        return tuple(str(row[k]) for k in ROW_KEY)

    merged = {key(row): row for row in old}
    merged.update({key(row): row for row in new})
    return sorted(merged.values(), key=lambda r: (r["config"], r["device"], r["mode"], int(r["seed"])))


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (configuration, device, mode, state).

    The speed-up of a mode is dense seconds per pass over its own, seed by seed (same ticket).
    """
    dense_seconds = {(r["config"], r["device"], r["state"], str(r["seed"])): float(r["seconds_per_pass"])
                     for r in rows if r["mode"] == "dense"}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["arch"], row["dataset"], row["config"], row["device"], row["mode"],
                           row["state"]), []).append(row)
    summary = []
    for (arch, dataset, config, device, mode, state), members in sorted(groups.items()):
        out = {"arch": arch, "dataset": dataset, "config": config, "device": device, "mode": mode,
               "seeds": len(members)}
        for metric in SUMMARY_METRICS:
            if metric == "speedup_vs_dense":
                values = [dense_seconds[key] / float(r["seconds_per_pass"]) for r in members
                          if (key := (config, device, state, str(r["seed"]))) in dense_seconds]
            else:
                values = [float(r[metric]) for r in members]
            out[f"{metric}_mean"], out[f"{metric}_std"] = mean_std(values)
        summary.append(out)
    return summary


def summary_table(summary: list[dict]) -> tuple[list[str], list[tuple]]:
    def pm(row, metric, fmt):
        mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
        return "-" if math.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}"

    headers = ["config", "device", "mode", "seeds", "% weights left", "test acc %", "s / pass", "images / s",
               "kWh / pass", "kg CO2 / pass", "speed-up vs dense"]
    rows = [(r["config"], r["device"], r["mode"], r["seeds"], pm(r, "percent_remaining", ".2f"),
             pm(r, "test_accuracy", ".2f"), pm(r, "seconds_per_pass", ".4f"), pm(r, "images_per_second", ".0f"),
             pm(r, "energy_kwh_per_pass", ".2e"), pm(r, "co2_kg_per_pass", ".2e"),
             pm(r, "speedup_vs_dense", ".2f")) for r in summary]
    return headers, rows
