"""Figures of CodeCarbon's measurements: of training (CO2-tracking runs) and of the inference replay.

Training: each cumulative record is keyed by the exact number of images seen when it was
taken, so seeds line up step by step; against time each step is drawn at the seeds' mean
tracked duration. Inference: CodeCarbon's CSV has one row per pass over the test split, so
pass k has served k * images_per_pass inferences.
"""
from __future__ import annotations

from pathlib import Path

from data.report.labels import (mode_colour, EMISSION_METRICS, X_IMAGES, X_INFERENCES, X_TRACKED_TIME, config_colour,
                         config_sort_key, describe_config, describe_mode, mode_linestyle)
from data.report.plot_cli import PlotOptions, select_inference_runs, select_training_runs
from data.energy.emissions import summarise_provenance
from data.report.plotting import FigureWriter, Series, config_series, figure_style, metric_figures
from data.results import InferenceRun, group_by, read_codecarbon_csv
from data.paths import inference_runs_csv_path
from utils import UserError, get_logger


def record_values(records: dict[int, dict[str, float]], field: str) -> dict[int, float]:
    """One field of a seed's CodeCarbon records, {step: value}."""
    return {step: record[field] for step, record in records.items()}


def tracked_duration(records: dict[int, dict[str, float]]) -> dict[int, float]:
    return record_values(records, "duration")


def plot_training_emissions(options: PlotOptions) -> list[Path]:
    """Every CodeCarbon field of the CO2-tracking training runs against images seen and time."""
    runs = select_training_runs(options, co2=True)
    groups = {name: [run.emissions for run in members] for name, members in
              sorted(group_by(runs, lambda r: r.config_name).items(),
                     key=lambda item: config_sort_key(item[0]))}
    writer = FigureWriter(options.output_dir, options.format, options.show)
    with figure_style():
        metric_figures(writer, groups, record_values, EMISSION_METRICS,
                       [(X_IMAGES, None), (X_TRACKED_TIME, tracked_duration)], config_series,
                       "training",
                       f"Training, {options.arch_type} on {options.dataset}: mean ± 1 SD over seeds (band)",
                       caption=summarise_provenance([run.provenance for run in runs]))
    return writer.finish()


def load_inference_records(options: PlotOptions) -> list[tuple[InferenceRun, dict]]:
    """Each wanted replayed run with its per-pass CodeCarbon records; unusable CSVs are skipped."""
    log = get_logger()
    loaded = []
    for run in select_inference_runs(options):
        try:
            records = read_codecarbon_csv(run.emissions_csv, max_rows=run.passes)
        except ValueError as exc:
            log.warning("warning: skipping %s: %s", run.emissions_csv, exc)
            continue
        if len(records) < run.passes:
            log.warning("warning: %s has %d of its %d passes; drawing those", run.emissions_csv,
                        len(records), run.passes)
        loaded.append((run, records))
    if not loaded:
        raise UserError(f"none of the inference CSVs listed in "
                        f"{inference_runs_csv_path(options.save_dir, options.arch_type, options.dataset)} "
                        f"could be read (see the warnings above); rerun: "
                        f"{options.command('post_training_inference.py')}")
    return loaded


def plot_inference_emissions(options: PlotOptions) -> list[Path]:
    """Every CodeCarbon field of the inference replay against inferences served and time, one
    figure set per device, one line per configuration and kernel mode."""
    loaded = load_inference_records(options)
    writer = FigureWriter(options.output_dir, options.format, options.show)

    def series_for(key, band):
        name, mode = key
        return Series(band, f"{describe_config(name)}, {describe_mode(mode)}",
                      mode_colour(config_colour(name), mode), mode_linestyle(mode))

    with figure_style():
        for device, members in sorted(group_by(loaded, lambda item: item[0].device).items()):
            by_line = group_by(members, lambda item: (item[0].config_name, item[0].mode))
            groups = {key: [keyed_by_inferences(run, records) for run, records in by_line[key]]
                      for key in sorted(by_line, key=lambda k: (config_sort_key(k[0]), k[1]))}
            metric_figures(writer, groups, record_values, EMISSION_METRICS,
                           [(X_INFERENCES, None), (X_TRACKED_TIME, tracked_duration)], series_for,
                           f"inference_{device}",
                           f"Inference on {device.upper()}, {options.arch_type} on "
                           f"{options.dataset}: mean ± 1 SD over seeds (band)",
                           caption=inference_caption([run for run, _ in members]))
    return writer.finish()


def inference_caption(runs: list[InferenceRun]) -> str:
    described = sorted({run.provenance for run in runs if run.provenance})
    if not described:
        return "Energy: how it was measured was not recorded (a table of an earlier version)"
    return ("Energy: " if len(described) == 1 else "Energy measured in several ways: ") + " | ".join(described)


def keyed_by_inferences(run: InferenceRun, records: dict[int, dict]) -> dict[int, dict]:
    """Per-pass records re-keyed by the inferences served after that pass."""
    return {run.inferences_after(k): record for k, record in records.items()}
