"""The study's conclusion, computed: total CO2 of training plus inference, and break-even points.

Training CO2 of a configuration is the final cumulative emissions of each of its CO2-tracking
training runs (every cycle, the dense first cycle included: that is what finding the ticket
cost). Its CO2 per inference is, for each replayed run, co2_kg_per_pass / images_per_pass from
inference_runs.csv. The arithmetic and its uncertainty are in :mod:`data.breakeven`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data.breakeven import (AFTER, BREAK_EVEN_COLUMNS, CostLine, break_even_rows, cost_lines,
                            describe_break_even, inference_horizon)
from data.csv_tables import csv_text
from data.labels import (config_colour, is_baseline, split_label, config_linestyle, config_sort_key,
                         describe_config, describe_mode)
from data.plot_cli import (PlotOptions, select_inference_runs, select_training_runs,
                           training_flags)
from data.plotting import FIGURE_SIZE, FigureWriter, figure_style
from data.results import group_by
from data.runs import inference_runs_csv_path
from utils import UserError, atomic_write_text, format_table, get_logger

# Kernel modes in the order --mode's default picks them for a ticket: the one chosen per run
# ("auto") first, then the sparse kernels that make a ticket cheap, then the ordinary ones.
MODE_PREFERENCE = ("auto", "sparse", "dense")
BREAK_EVEN_CSV = "break_even.csv"


def choose_mode(available: set[str], requested: str | None, baseline: bool) -> str | None:
    """The kernel mode whose replay stands for a configuration (None when there is none).

    The dense baseline runs dense kernels whatever is asked (sparse kernels cannot help a
    network without zeros), or any mode it was replayed with; a ticket uses ``requested``,
    or by default the first of :data:`MODE_PREFERENCE` it was replayed with.
    """
    if baseline:
        order = ("dense",) + MODE_PREFERENCE
    else:
        order = (requested,) if requested else MODE_PREFERENCE
    return next((mode for mode in order if mode in available), None)


def training_co2_by_config(options: PlotOptions) -> dict[str, list[float]]:
    """kg CO2eq of each CO2-tracking training run (all its cycles), by configuration."""
    runs = select_training_runs(options, co2=True)
    return {name: [run.final_emissions["emissions"] for run in members]
            for name, members in group_by(runs, lambda r: r.config_name).items()}


def inference_co2_by_config(options: PlotOptions, device: str, mode: str | None,
                            baseline: str) -> tuple[dict[str, list[float]], dict[str, str]]:
    """kg CO2eq per inference of each replayed run on ``device``, by configuration, and the
    kernel mode chosen for each configuration."""
    log = get_logger()
    runs = select_inference_runs(options)
    on_device = [run for run in runs if run.device == device]
    if not on_device:
        devices = sorted({run.device for run in runs})
        raise UserError(f"no inference run on {device} for {options.arch_type} on {options.dataset} "
                        f"in {inference_runs_csv_path(options.save_dir, options.arch_type, options.dataset)} "
                        f"(found: {', '.join(devices)}); use --device {devices[0]}, or replay the "
                        f"tickets on {device} with: {options.command('post_training_inference.py')}")
    per_inference: dict[str, list[float]] = {}
    modes: dict[str, str] = {}
    for name, members in group_by(on_device, lambda r: r.config_name).items():
        chosen = choose_mode({r.mode for r in members}, mode, baseline=name == baseline)
        if chosen is None:
            log.warning("warning: %s was not replayed with %s kernels on %s; left out", name, mode,
                        device)
            continue
        modes[name] = chosen
        per_inference[name] = [r.co2_kg_per_inference for r in members if r.mode == chosen]
    return per_inference, modes


def comparable_configs(training: dict[str, list[float]], inference: dict[str, list[float]],
                       baseline: str, options: PlotOptions) -> list[str]:
    """The configurations measured on both sides, baseline first; says what is missing."""
    log = get_logger()
    needs = (
        ("CO2-tracking training run", training,
         options.command("lottery_ticket.py", *training_flags(baseline), "--co2_tracking_mode")),
        ("inference replay", inference, options.command("post_training_inference.py")))
    for side, have, make in needs:
        variants = sorted(name for name in have if split_label(name)[0] == baseline and name != baseline)
        if baseline not in have and variants:
            # Dense baselines of several settings were selected: which one a ticket is compared
            # with is the user's choice, never a silent average.
            raise UserError(f"the selection holds several {baseline} configurations ("
                            f"{'; '.join(variants)}); pick one with --where KEY=VALUE on the setting that "
                            "differs (e.g. --where lr=0.0012)")
        if baseline not in have:
            raise UserError(f"the baseline {baseline} ({describe_config(baseline)}) has no {side} "
                            f"for {options.arch_type} on {options.dataset} in {options.input_dir}; "
                            f"make it with: {make}")
    for name in sorted(set(training) ^ set(inference)):
        missing = "inference replay" if name in training else "CO2-tracking training run"
        log.warning("warning: %s has no %s; left out of the break-even analysis", name, missing)
    names = sorted(set(training) & set(inference), key=config_sort_key)
    if names == [baseline]:
        raise UserError(f"nothing to compare with {baseline}: no pruned configuration has both a "
                        f"CO2-tracking training run and an inference replay in {options.input_dir}")
    return [baseline] + [name for name in names if name != baseline]


def break_even_csv_text(rows: list[dict]) -> str:
    return csv_text(BREAK_EVEN_COLUMNS, rows)


def plus_minus(mean: float, std: float) -> str:
    return f"{mean:.3g}" + ("" if math.isnan(std) else f" ± {std:.2g}")


def break_even_table(rows: list[dict]) -> str:
    def number(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    headers = ("config", "mode", "training CO2 kg", "n", "CO2 kg per inference", "n",
               "break-even (inferences)", "Welch t", "p")
    return format_table(headers, [
        (row["config"], row["mode"],
         plus_minus(row["training_co2_kg_mean"], row["training_co2_kg_std"]), row["training_runs"],
         plus_minus(row["co2_kg_per_inference_mean"], row["co2_kg_per_inference_std"]),
         row["inference_runs"], describe_break_even(row), number(row["welch_t"], ".3g"),
         number(row["welch_p"], ".3g"))
        for row in rows])


def break_even_figure(rows: list[dict], lines: dict[str, CostLine], horizon: float, title: str):
    """Total CO2 against inferences served, one line and band per configuration; each finite
    break-even point marked and labelled with its range (a horizontal error bar would run off
    the figure whenever the range is open-ended, "never")."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
    n = np.linspace(0.0, horizon, 200)
    for row in rows:
        name = row["config"]
        line = lines[name]
        mean, std = line.total(n)
        colour = config_colour(name)
        ax.plot(n, mean, color=colour, linestyle=config_linestyle(name), linewidth=1.8,
                zorder=3 if is_baseline(name) else 2,
                label=f"{describe_config(name)}, {describe_mode(row['mode'])}")
        if not np.all(np.isnan(std)):
            ax.fill_between(n, np.maximum(mean - std, 0.0), mean + std, color=colour, alpha=0.15,
                            linewidth=0)
        if row["outcome"] == AFTER:
            at = row["break_even_inferences"]
            total, _ = line.total(at)
            ax.plot([at, at], [0, total], color=colour, linestyle=":", linewidth=1.2)
            ax.plot([at], [total], color=colour, marker="o", markersize=7, markeredgecolor="white",
                    linestyle="none", zorder=4)
            ax.annotate(describe_break_even(row).replace("after", "break-even after", 1)
                        .replace(" (", "\ninferences (", 1), (at, total), textcoords="offset points",
                        xytext=(8, -30), fontsize="small", color=colour)
    ax.set_xlim(0, horizon)
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(style="sci", scilimits=(-3, 4))
    ax.set_xlabel("Inferences served (images classified)")
    ax.set_ylabel("Total CO2-equivalent emissions (kg CO2eq)\ntraining + inference")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def report_break_even(options: PlotOptions, device: str, mode: str | None, baseline: str,
                      max_inferences: float | None = None) -> list[Path]:
    """Print the break-even table, write break_even.csv and the figure; returns the files."""
    log = get_logger()
    training = training_co2_by_config(options)
    inference, modes = inference_co2_by_config(options, device, mode, baseline)
    names = comparable_configs(training, inference, baseline, options)
    lines = cost_lines({n: training[n] for n in names}, {n: inference[n] for n in names})
    rows = break_even_rows(lines, inference, baseline)
    for row in rows:
        row.update(description=describe_config(row["config"]), device=device,
                   mode=modes[row["config"]])
    log.info("Break-even against %s (%s), inference on %s, %s on %s:\n%s", baseline,
             describe_config(baseline), device, options.arch_type, options.dataset,
             break_even_table(rows))
    writer = FigureWriter(options.output_dir, options.file_format, options.show)
    csv_path = options.output_dir / BREAK_EVEN_CSV
    atomic_write_text(csv_path, break_even_csv_text(rows))
    horizon = max_inferences or inference_horizon(lines, [r["break_even_inferences"] for r in rows])
    with figure_style():
        fig = break_even_figure(rows, lines, horizon,
                                f"Training + inference CO2, {options.arch_type} on {options.dataset}, "
                                f"inference on {device.upper()}")
        writer.save(fig, f"break_even_total_co2_vs_inferences_{device}")
    return [csv_path] + writer.finish()
