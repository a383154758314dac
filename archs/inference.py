"""Inference replay: run the saved tickets over their test split and measure the cost.

For every saved training run found (or those the filters name) the ticket is rebuilt from
its results file, converted to the requested kernels (:mod:`archs.sparse`), checked
against the dense forward, run once untimed (a warm-up), then replayed ``passes`` times over
the run's own test split under a CodeCarbon tracker flushed after each pass (one CSV row per
pass, as the study did). Each pass is the forward, the loss and the argmax of every batch,
exactly what :func:`archs.train.loop.evaluate` computes. One row per replayed run goes to
``inference_runs.csv``; the mean and standard deviation over seeds, per configuration, kernel
mode and measuring conditions (weights, threads, batch size), to ``inference_summary.csv``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from archs import build_model
from archs.sparse.timing import KernelTimingCache, default_timing_cache_path
from archs.pruning import is_denormal, masks_from_state, percent_remaining, prunable_names
from archs.sparse import CONVOLUTION_REASON, compare_outputs, sparsify
from archs.sparse.cuda import agreement_tolerance
from archs.train.loop import evaluate
from data.datasets import Split, get_spec, load_dataset, make_test_split
from data.energy.emissions import MIN_POWER_SAMPLES, EmissionsRecorder, describe_provenance
from data.energy.process import others_share
from data.report.inference_tables import STATES, merge_into_tables, read_rows, summary_table
from data.jobs import InferenceJob  # noqa: F401  (declared torch-free for the parser; re-exported)
from data.paths import (cycle_ticket_path, inference_csv_path, inference_dir, inference_runs_csv_path,
                        inference_summary_csv_path, partial_csv_path, run_dir)
from data.settings import REPLAY_MODES
from data.selection import (RunFilter, RunRecord, describe_groups, find_runs, select_runs as filter_runs,
                            flags_for_config)
from data.analysis.statistics import Estimate
from archs.runtime import flush_denormals, pin_threads, replay_runtime, resolve_device, synchronise
from data.store import load_checkpoint
from utils import LockHeld, ProcessLock, UserError, ensure_writable_dir, first_line, format_table, get_logger, replace_durably

MODE_CHOICES = REPLAY_MODES


def modes_for(mode: str) -> list[str]:
    return ["dense", "sparse"] if mode == "both" else [mode]


def select_runs(job: InferenceJob) -> list[RunRecord]:
    """The training runs to replay, through the same filter as every script: one per
    configuration and seed (the run made without CO2 tracking when both exist)."""
    log = get_logger()
    on_disk = find_runs(job.save_dir, job.arch, job.dataset)
    folder = run_dir(job.save_dir, job.arch, job.dataset)
    if not on_disk:
        raise UserError(f"no saved training runs in {folder}; make them with: python3 "
                        f"lottery_ticket.py --arch_type {job.arch} --dataset {job.dataset} "
                        f"--save_dir {job.save_dir}")
    chosen: dict[tuple[str, int], RunRecord] = {}
    for run in sorted(filter_runs(on_disk, job.run_filter), key=lambda r: r.co2, reverse=True):
        chosen[(run.config.configuration_id, run.seed)] = run   # the non-CO2 run overrides
    selected = [run for _, run in sorted(chosen.items())]
    if not selected:
        raise UserError(f"no saved run in {folder} matches {job.run_filter.describe()}; found: "
                        f"{describe_groups(filter_runs(on_disk, RunFilter()))}")
    if job.cycle is not None:
        if job.cycle < 0:
            raise UserError(f"--cycle {job.cycle} is below 0: cycles count from 0 (the dense network)")
        has_cycle = [run for run in selected
                     if run.config.is_dense_baseline or job.cycle < run.config.prune_iterations]
        # The dense baselines (cycle 0 only) come along; a cycle no pruned run has is an error,
        # not a replay of the baselines alone.
        if not any(not run.config.is_dense_baseline for run in has_cycle) and (
                job.cycle > 0 or not has_cycle):
            longest = max((run.config.prune_iterations for run in selected), default=1)
            raise UserError(f"no selected run has a cycle {job.cycle} (cycles count from 0, the "
                            f"dense network; the selected runs have up to {longest}); choose "
                            f"--cycle {longest - 1} or less")
        if len(has_cycle) < len(selected):
            log.info("Skipping %d run(s) with fewer than %d cycles (--cycle %d)",
                     len(selected) - len(has_cycle), job.cycle + 1, job.cycle)
        selected = has_cycle
    return selected


def replay_lock(job: InferenceJob, device_kind: str) -> ProcessLock:
    """The lock (acquired) held while a replay measures: one replay per device at a time in a folder, since a second
    one would measure its energy while the first runs, and its rows would replace the first's
    (same run, same conditions). GPU replays on different GPUs (CUDA_VISIBLE_DEVICES) do not
    share a lock. Refused in one line, or waited for with ``job.wait``."""
    import os

    where = device_kind + os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "_") \
        if device_kind == "gpu" else device_kind
    lock = ProcessLock(inference_dir(job.save_dir, job.arch, job.dataset) / f"replay_{where}.lock",
                       f"the {device_kind.upper()} inference replay of {job.arch} on {job.dataset}")
    said = False
    while True:
        try:
            return lock.acquire()
        except LockHeld as exc:
            if not job.wait:
                raise LockHeld(f"{exc}; or pass --wait to start when it ends") from None
            if not said:
                get_logger().info("Waiting for another replay to end (%s)", lock.path)
                said = True
            time.sleep(1.0)


def cycle_for(run: RunRecord, cycle: int | None) -> int:
    """The cycle replayed for ``run``: the one asked for, its last by default; the dense baseline
    has only cycle 0."""
    last = run.config.prune_iterations - 1
    if cycle is None or run.config.is_dense_baseline:
        return last
    if not 0 <= cycle <= last:
        raise UserError(f"{run.path.name} has cycles 0 to {last}; --cycle {cycle} is not one of them")
    return cycle


def load_ticket(run: RunRecord, state_name: str, cycle: int, device: torch.device):
    """The model of a saved run with the chosen weights of the chosen cycle, and the saved results
    (of the cycle's ticket file when it is not the last cycle)."""
    results = load_checkpoint(run.path)
    key = STATES[state_name]
    if cycle != run.config.prune_iterations - 1:
        ticket_file = cycle_ticket_path(run.path, cycle)
        if not ticket_file.is_file():
            raise UserError(f"{ticket_file} is missing: the run kept no weights for cycle {cycle} "
                            "(made before every cycle was kept, or with --save_cycle_weights none); "
                            f"retrain it with: python3 lottery_ticket.py "
                            f"{' '.join(flags_for_config(run.config))} --seeds {run.seed}")
        ticket = load_checkpoint(ticket_file)
        if key not in ticket:
            raise UserError(f"{ticket_file} holds no {state_name} weights (saved with "
                            "--save_cycle_weights); replay another --state")
        results = {**results, key: ticket[key]}
    if key not in results or "args" not in results:
        raise UserError(f"{run.path} is not a training results file of this toolkit (no {key}); "
                        "remake it with lottery_ticket.py")
    config = run.config
    spec = get_spec(config.dataset)
    model = build_model(config.arch_type, spec.in_channels, spec.image_size, spec.num_classes)
    try:
        model.load_state_dict(results[key])
    except RuntimeError as exc:
        raise UserError(f"the weights in {run.path} do not fit {config.arch_type} on {config.dataset} "
                        f"({first_line(exc)}); was it made by another version?") from exc
    return model.to(device).eval(), results


def replay(model, split: Split, job: InferenceJob, device: torch.device, csv_path: Path,
           progress: tqdm) -> dict:
    """One untimed warm-up pass, then ``job.passes`` timed passes under a tracker flushed after each."""
    partial = partial_csv_path(csv_path)
    partial.unlink(missing_ok=True)
    evaluate(model, split, job.batch_size)  # warm-up: first-call allocations stay out of the figures
    recorder = EmissionsRecorder(partial, job.tracker, project_name=csv_path.stem)
    provenance = {**recorder.provenance(), "device": str(device)}
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
    replace_durably(partial, csv_path)
    return {"seconds": Estimate.from_samples(seconds), "loss": Estimate.from_samples(losses).mean,
            "accuracy": Estimate.from_samples(accuracies).mean,
            "provenance": describe_provenance(provenance), "energy_kwh": record.get("energy_consumed", math.nan),
            "co2_kg": record.get("emissions", math.nan), "cpu_seconds": record.get("cpu_seconds", math.nan),
            "sample_seconds": provenance.get("sample_seconds") or job.tracker.measure_power_secs,
            "others_cpu_share": others_share(record, provenance["cpus"])}


def count_denormal(model: torch.nn.Module) -> int:
    """How many of ``model``'s parameters are denormal (read from their bits)."""
    return sum(int(is_denormal(parameter).sum()) for parameter in model.parameters())


def run_inference(job: InferenceJob) -> list[dict]:
    """Replay every selected run in every requested mode; returns the rows written.

    Each run's rows are merged into inference_runs.csv as soon as its replays finish, so an
    interruption or a later failure keeps every replay already done. A results file that cannot
    be read is skipped with a warning, as the plotting scripts do.
    """
    # Denormal floats (below 1.2e-38) cost x86 CPUs tens of cycles per operation: a dense fc1
    # trained 120 epochs on digits held 2,802 denormal weights, and its first layer ran 30x
    # slower than with them read as zero. Pruning removes the smallest weights first, so
    # replaying them as they are would credit the tickets with the dense network's denormals.
    flush_denormals(True)
    device = resolve_device(job.device)
    replay_runtime(device)
    pin_threads(job.threads)
    device_kind = "gpu" if device.type == "cuda" else "cpu"
    runs = select_runs(job)
    ensure_writable_dir(inference_dir(job.save_dir, job.arch, job.dataset), "inference folder")
    lock = replay_lock(job, device_kind)
    try:
        return _replay_runs(job, runs, device, device_kind)
    finally:
        lock.release()


def _replay_runs(job: InferenceJob, runs: list[RunRecord], device: torch.device, device_kind: str) -> list[dict]:
    log = get_logger()
    runs_csv = inference_runs_csv_path(job.save_dir, job.arch, job.dataset)
    summary_csv = inference_summary_csv_path(job.save_dir, job.arch, job.dataset)
    read_rows(runs_csv)   # a table the merge could not read is refused before any replay is spent
    modes = modes_for(job.mode)
    datasets: dict[str, Split] = {}
    test_splits: dict[tuple[str, int], Split] = {}   # seeds share a test split across configurations
    rows, said_convolutions, tables_shown, summary = [], False, set(), None
    log.info("Replaying %d run(s) x %d mode(s) (%s), %d pass(es) each on %s with %d thread(s)",
             len(runs), len(modes), ", ".join(modes), job.passes, device, torch.get_num_threads())
    # auto times every candidate kernel on this machine, once per layer shape, batch and thread
    # count: the timings are kept between replays.
    timing_cache = KernelTimingCache(job.kernel_cache or default_timing_cache_path())
    progress = tqdm(total=len(runs) * len(modes) * job.passes, unit="pass", desc="inference",
                    dynamic_ncols=True, disable=not job.show_progress)
    with progress:
        for run in runs:
            cycle = cycle_for(run, job.cycle)
            try:
                model, results = load_ticket(run, job.state, cycle, device)
            except UserError as exc:
                log.warning("warning: %s; skipped", exc)
                progress.update(len(modes) * job.passes)
                continue
            data_dir = str(job.data_dir or results.get("data_dir", "data"))
            split_key = (data_dir, run.seed, run.config.test_split)
            if split_key not in test_splits:
                if data_dir not in datasets:
                    datasets[data_dir] = load_dataset(run.config.dataset, data_dir)
                test_splits[split_key] = make_test_split(
                    datasets[data_dir], run.seed, official_test=run.config.test_split == "official").to(device)
            test = test_splits[split_key]
            state = results[STATES[job.state]]
            remaining = percent_remaining(masks_from_state(state, prunable_names(model)))
            log.info("\n%s seed %d, cycle %d (%s weights, %.2f%% of prunable weights left)",
                     run.config_name, run.seed, cycle, job.state, remaining)
            denormal = count_denormal(model)
            if denormal and device.type == "cpu":
                log.info("%d weight(s) are denormal (nonzero, below 1.2e-38): read as zero, "
                         "as the replay flushes denormals", denormal)
            run_rows = []
            for mode in modes:
                converted, choices = sparsify(model, mode, example_input=test.images[:job.batch_size],
                                              timing_cache=timing_cache)
                if not said_convolutions and any(c.reason == CONVOLUTION_REASON for c in choices):
                    log.info("Note: some convolutions run dense: numba's sparse convolution "
                             "covers float32 on the CPU, zero padding and no dilation.")
                    said_convolutions = True
                if mode != "dense" and (run.config_name, cycle, mode) not in tables_shown:
                    tables_shown.add((run.config_name, cycle, mode))
                    log.info("Kernels in %s mode:\n%s", mode, format_table(
                        ["layer", "sparsity", "kernel", "why"],
                        [(c.name, f"{100 * c.sparsity:.1f}%", c.kernel, c.reason) for c in choices]))
                # half precision where a layer runs 2:4 semi-structured (archs/sparse/cuda.py)
                agreement = compare_outputs(model, converted, test.images[:job.batch_size],
                                            agreement_tolerance(choices))
                if not agreement.agrees:
                    raise UserError(f"the {mode} kernels disagree with the dense forward on "
                                    f"{run.path.name} (relative error {agreement.relative_error:.2e}, "
                                    f"tolerance {agreement.tolerance:.0e}); this is a bug, please "
                                    "report it; --mode dense avoids the sparse kernels")
                csv_path = inference_csv_path(job.save_dir, run.config, device_kind, mode, job.state, cycle)
                measured = replay(converted, test, job, device, csv_path, progress)
                row = run_row(job, run, cycle, device_kind, mode, len(test) * job.sweeps_per_pass,
                              remaining, measured, csv_path)
                log.info("%s: %.4f s per pass (%.0f images/s), test accuracy %.2f%%, %.3e kg CO2 per pass",
                         mode, row["seconds_per_pass"], row["images_per_second"], row["test_accuracy"],
                         row["co2_kg_per_pass"])
                run_rows.append(row)
            summary = merge_into_tables(runs_csv, summary_csv, run_rows)
            rows += run_rows
    if not rows:
        raise UserError(f"none of the {len(runs)} selected run(s) could be replayed (see the warnings above)")
    warn_if_passes_too_short(rows, job)
    log.info("\nSummary over seeds (mean ± std; CodeCarbon estimates for energy and CO2):\n%s",
             format_table(*summary_table(summary)))
    log.info("\nWrote %s and %s", runs_csv, summary_csv)
    return rows


def evaluate_tickets(job: InferenceJob) -> list[dict]:
    """Fraction of prunable weights pruned (per layer and overall) and test accuracy of every
    selected run's ticket (``job.cycle``, ``job.state``) on the run's own test split, evaluated
    with the batch size the run was evaluated with, so that the best state's accuracy is the one
    its log holds. Nothing is measured or written; returns one dict per run."""
    log = get_logger()
    device = resolve_device(job.device)
    datasets: dict[str, Split] = {}
    rows = []
    for run in select_runs(job):
        cycle = cycle_for(run, job.cycle)
        try:
            model, results = load_ticket(run, job.state, cycle, device)
        except UserError as exc:
            log.warning("warning: %s; skipped", exc)
            continue
        data_dir = str(job.data_dir or results.get("data_dir", "data"))
        if data_dir not in datasets:
            datasets[data_dir] = load_dataset(run.config.dataset, data_dir)
        test = make_test_split(datasets[data_dir], run.seed,
                               official_test=run.config.test_split == "official").to(device)
        masks = masks_from_state(results[STATES[job.state]], prunable_names(model))
        layers = {name: 1 - int(mask.sum()) / mask.numel() for name, mask in masks.items()}
        pruned = 1 - percent_remaining(masks) / 100
        loss, accuracy = evaluate(model, test, run.config.batch_size)
        rows.append({"run": run.path.stem, "config": run.config_name, "seed": run.seed, "cycle": cycle,
                     "state": job.state, "fraction_pruned": pruned, "layers": layers,
                     "test_loss": loss, "test_accuracy": accuracy, "test_images": len(test)})
        log.info("\n%s seed %d, cycle %d, %s weights (%s)\n%s", run.config_name, run.seed, cycle, job.state,
                 run.path.name, format_table(["layer", "fraction pruned", "nonzeros / total"],
                                             [(name, f"{fraction:.4f}", f"{int(masks[name].sum())} / {masks[name].numel()}")
                                              for name, fraction in layers.items()]))
        log.info("%.4f of prunable weights pruned, test accuracy %.2f%% (loss %.4f) on the run's own "
                 "test split of %d images", pruned, accuracy, loss, len(test))
    if not rows:
        raise UserError("none of the selected runs could be evaluated (see the warnings above)")
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


def run_row(job: InferenceJob, run: RunRecord, cycle: int, device_kind: str, mode: str, images: int,
            remaining: float, measured: dict, csv_path: Path) -> dict:
    """The inference_runs.csv row of one replay (see data.report.inference_tables.RUN_COLUMNS)."""
    seconds: Estimate = measured["seconds"]
    config = run.config
    return {
        "arch": config.arch_type, "dataset": config.dataset, "config": config.config_name,
        "configuration": config.configuration_id, "run": run.path.stem, "cycle": cycle,
        "prune_percent": config.prune_percent, "prune_iterations": config.prune_iterations,
        "seed": run.seed, "device": device_kind, "mode": mode, "state": job.state,
        "threads": torch.get_num_threads(), "batch_size": job.batch_size, "passes": job.passes,
        "images_per_pass": images, "percent_remaining": remaining, "test_loss": measured["loss"],
        "test_accuracy": measured["accuracy"], "seconds_per_pass": seconds.mean,
        "seconds_per_pass_std": seconds.std,   # NaN (an empty cell) for a single pass
        "images_per_second": images / seconds.mean,
        "energy_kwh_per_pass": measured["energy_kwh"] / job.passes,
        "co2_kg_per_pass": measured["co2_kg"] / job.passes, "emissions_csv": csv_path.name,
        "energy_provenance": measured["provenance"], "sample_seconds": measured["sample_seconds"],
        "cpu_seconds_per_pass": measured["cpu_seconds"] / job.passes,
        "others_cpu_share": measured["others_cpu_share"],
    }
