"""Figures of how well the networks learn: training curves and the Lottery-Ticket figure.

Uses the evaluated training runs (those made without --co2_tracking_mode, which skip
evaluation). Curves are averaged across seeds step by step (see ``band_over_seeds``): against
images seen the steps line up exactly; against time each step is drawn at the seeds' mean
elapsed time, which includes the evaluation passes.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import numpy as np

from data.report.labels import (TRAINING_METRICS, is_baseline, X_IMAGES, X_TRAINING_TIME,
                         config_colour, config_linestyle, config_sort_key, describe_hyperparameters,
                         describe_schedule)
from data.report.plot_cli import PlotOptions, select_training_runs
from data.report.plotting import (FIGURE_SIZE, FigureWriter, Series, config_series, figure_style,
                           metric_figures, percent_tick_label, place_legend, set_title, shared_seed_count,
                           sparse_log_ticks, with_seed_count)
from data.results import SeedBand, TrainingRun, band_over_seeds, group_by


def cycle_band(runs: list[TrainingRun], field: str) -> SeedBand:
    """A per-cycle summary (e.g. test accuracy at best validation) across seeds, at the mean
    percent of weights remaining in each cycle."""
    return band_over_seeds([{k: c[field] for k, c in by_level(run).items()} for run in runs],
                           [{k: c["percent_remaining"] for k, c in by_level(run).items()} for run in runs])


def hyperparameter_series(keys: list[tuple[float, float]]) -> Callable[..., Series]:
    """Colours by position in the grid: every hyperparameter figure draws the same groups."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", len(keys))
    return lambda key, band: Series(band, describe_hyperparameters(*key), palette[keys.index(key)])


def log_values(run: TrainingRun, key: str) -> dict[int, float]:
    return run.logs[key]


def elapsed_time(run: TrainingRun) -> dict[int, float]:
    return run.logs["time"]


CURVE_AXES = ((X_IMAGES, None), (X_TRAINING_TIME, elapsed_time))


def lottery_ticket_figure(groups: dict[str, list[TrainingRun]], field: str, ylabel: str, title: str):
    """``field`` of each cycle against the percent of weights left (log scale, sparser to the
    right), error bars across seeds; the dense baseline as a horizontal line and band."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
    bands = {name: cycle_band(runs, field) for name, runs in groups.items()}
    title, shared = shared_seed_count(f"{title}: mean ± 1 SD over seeds (bars, band)",
                                      [band.n for band in bands.values() if len(band.x)])
    ticks = {100.0}   # the dense network, where every ticket starts and the baseline stays
    for name, band in bands.items():
        if not len(band.x):
            continue
        colour = config_colour(name)
        label = describe_schedule(name) if shared else with_seed_count(describe_schedule(name), band.n)
        if is_baseline(name):
            mean, std = float(band.mean[-1]), float(band.std[-1])
            ax.axhline(mean, color=colour, linestyle="--", linewidth=1.5, label=label)
            if not math.isnan(std):
                ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
            continue
        ax.errorbar(band.x, band.mean, yerr=None if band.n < 2 else band.std, color=colour,
                    linestyle=config_linestyle(name), marker="o", markersize=5, capsize=4,
                    linewidth=1.8, label=label)
        ticks.update(float(x) for x in band.x)
    ax.set_xscale("log")
    shown = sparse_log_ticks(ticks)
    ax.set_xticks(shown, [percent_tick_label(x) for x in shown])
    ax.set_xticks([], minor=True)
    ax.set_xlim(max(ticks) * 1.25, min(ticks) / 1.25)  # reversed: sparser to the right
    ax.set_xlabel("Weights left (% of prunable weights, log scale)")
    ax.set_ylabel(ylabel)
    set_title(ax, title)
    place_legend(fig, ax)
    return fig


CONTROL_COLUMNS = ("configuration", "cycle", "percent_remaining", "control", "seeds",
                   "ticket_test_accuracy_mean", "control_test_accuracy_mean", "difference_mean",
                   "difference_ci_low", "difference_ci_high", "confidence_level")


def by_level(run: TrainingRun) -> dict[int, dict]:
    """A run's (or branch's) cycle summaries by level: a branch's ``cycle`` is the level it grew
    from (lmc trains two copies per level: the first, trained in the ticket's batch order, is kept)."""
    levels: dict[int, dict] = {}
    for summary in run.cycles:
        levels.setdefault(summary["cycle"], summary)
    return levels


def control_comparison_rows(runs: list[TrainingRun], level: float = 0.95) -> list[dict]:
    """Per pruning level, the winning ticket's test accuracy (at best validation) minus each
    control's, paired by seed (a control branch grows from the ticket run of its seed and
    replays that level's initialisation draw and batch order), with a Student-t ``level``
    interval over the seeds.

    The controls are the branches of the ticket runs that declare themselves one (``reinit``
    and ``random_mask``: ``lottery_ticket.py ... --branch reinit``; see data.conditions);
    iterative ``--prune_type`` runs are not controls.
    """
    from data.analysis.statistics import paired_difference
    from data.conditions import control_names

    families = group_by(runs, lambda r: dataclasses.replace(
        r.config, seed=0, co2_tracking_mode=False, co2_evaluate=False).parent.configuration_id)
    rows = []
    for family, members in sorted(families.items()):
        tickets = {r.config.seed: by_level(r) for r in members
                   if not r.config.branch and r.config.prune_type == "lt"}
        for control, name in control_names().items():
            controls: dict[int, dict[int, dict]] = {}
            for r in members:   # a seed's levels may lie in several files (--branch_levels)
                if r.config.branch == control and not r.config.branch_args:
                    for k, summary in by_level(r).items():
                        controls.setdefault(r.config.seed, {}).setdefault(k, summary)
            seeds = sorted(set(tickets) & set(controls))
            levels = sorted(set.intersection(*(set(tickets[s]) & set(controls[s]) for s in seeds))) if seeds else []
            for cycle in (k for k in levels if k > 0):
                ticket_acc = [tickets[s][cycle]["test_accuracy_at_best"] for s in seeds]
                control_acc = [controls[s][cycle]["test_accuracy_at_best"] for s in seeds]
                difference = paired_difference(ticket_acc, control_acc, level)
                rows.append({
                    "configuration": family, "cycle": cycle,
                    "percent_remaining": float(np.mean([tickets[s][cycle]["percent_remaining"] for s in seeds])),
                    "control": name, "seeds": len(seeds),
                    "ticket_test_accuracy_mean": float(np.mean(ticket_acc)),
                    "control_test_accuracy_mean": float(np.mean(control_acc)),
                    "difference_mean": difference.mean, "difference_ci_low": difference.low,
                    "difference_ci_high": difference.high, "confidence_level": level})
    return rows


def control_comparison_table(rows: list[dict]) -> str:
    from utils import format_table

    def interval(row):
        if math.isnan(row["difference_ci_low"]):
            return f"{row['difference_mean']:+.2f} (one seed)"
        return (f"{row['difference_mean']:+.2f} [{row['difference_ci_low']:+.2f}, "
                f"{row['difference_ci_high']:+.2f}]")

    return format_table(
        ["% weights left", "control", "seeds", "ticket acc %", "control acc %",
         "ticket - control (95% CI, paired by seed)"],
        [(f"{r['percent_remaining']:.3g}", r["control"],
          r["seeds"], f"{r['ticket_test_accuracy_mean']:.2f}", f"{r['control_test_accuracy_mean']:.2f}",
          interval(r)) for r in rows])


def instability_figure(runs: list[TrainingRun], title: str):
    """LMC instability (test-error barrier) against weights left, one line per rewind point,
    mean ± std over seeds; None when no lmc branch is selected."""
    import matplotlib.pyplot as plt

    lmc = [r for r in runs if r.config.branch == "lmc" and r.branch_levels]
    if not lmc:
        return None
    fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
    ticks = set()
    for rewind, members in sorted(group_by(lmc, lambda r: r.config.rewind_to).items()):
        band = band_over_seeds([{e["level"]: e["instability"] for e in r.branch_levels} for r in members],
                               [{e["level"]: e["percent_remaining"] for e in r.branch_levels} for r in members])
        label = with_seed_count(f"rewound to {rewind}", band.n)
        ax.errorbar(band.x, band.mean, yerr=None if band.n < 2 else band.std, marker="o", markersize=5,
                    capsize=4, linewidth=1.8, label=label)
        ticks.update(float(x) for x in band.x)
    ax.set_xscale("log")
    shown = sparse_log_ticks(ticks)
    ax.set_xticks(shown, [percent_tick_label(x) for x in shown])
    ax.set_xticks([], minor=True)
    ax.set_xlim(max(ticks) * 1.25, min(ticks) / 1.25)
    ax.set_xlabel("Weights left (% of prunable weights, log scale)")
    ax.set_ylabel("Instability: test-error barrier (percentage points)")
    ax.set_title(title)
    place_legend(fig, ax)
    return fig


def plot_performance(options: PlotOptions) -> list[Path]:
    """Training curves of every configuration selected, and the Lottery-Ticket figures."""
    runs = select_training_runs(options, co2=False)
    groups = dict(sorted(group_by(runs, lambda r: r.config_name).items(),
                         key=lambda item: config_sort_key(item[0])))
    title = f"{options.arch_type} on {options.dataset}: mean ± 1 SD over seeds (band)"
    writer = FigureWriter(options.output_dir, options.format, options.show)
    with figure_style():
        metric_figures(writer, groups, log_values, TRAINING_METRICS, CURVE_AXES, config_series,
                       "training", title)
        fig = lottery_ticket_figure(groups, "test_accuracy_at_best",
                                    "Test accuracy at best validation accuracy (%)",
                                    f"Lottery tickets, {options.arch_type} on {options.dataset}")
        writer.save(fig, "lottery_ticket_test_accuracy_vs_weights_left")
        fig = lottery_ticket_figure(groups, "best_epoch",
                                    "Epoch of best validation accuracy (within the cycle)",
                                    f"Early stopping epoch, {options.arch_type} on {options.dataset}")
        writer.save(fig, "lottery_ticket_best_epoch_vs_weights_left")
        fig = instability_figure(runs, f"Linear mode connectivity, {options.arch_type} on {options.dataset}")
        if fig is not None:
            writer.save(fig, "lmc_instability_vs_weights_left")
    comparison = control_comparison_rows(runs)
    if comparison:
        from data.report.csv_tables import csv_text
        from utils import atomic_write_text, get_logger

        get_logger().info("Winning ticket against its controls (test accuracy at best validation; "
                          "Student-t 95%% interval of the per-seed difference):\n%s",
                          control_comparison_table(comparison))
        path = options.output_dir / "ticket_vs_controls.csv"
        atomic_write_text(path, csv_text(CONTROL_COLUMNS, comparison))
        return writer.finish() + [path]
    return writer.finish()


def hyperparameter_grid_figure(groups: dict[tuple[float, float], list[TrainingRun]], title: str):
    """Heat map of the final test accuracy (at best validation) over learning rate x decay."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    lrs = sorted({lr for lr, _ in groups})
    decays = sorted({decay for _, decay in groups})
    means = np.full((len(decays), len(lrs)), np.nan)
    notes = np.full((len(decays), len(lrs)), "", dtype=object)
    for (lr, decay), runs in groups.items():
        band = cycle_band(runs, "test_accuracy_at_best")
        mean, std = float(band.mean[-1]), float(band.std[-1])
        row, col = decays.index(decay), lrs.index(lr)
        means[row, col] = mean
        notes[row, col] = f"{mean:.1f}" + ("" if math.isnan(std) else f"\n± {std:.1f}") + f"\nn={band.n}"
    fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
    sns.heatmap(means, annot=notes, fmt="", cmap="viridis", ax=ax,
                xticklabels=[f"{lr:g}" for lr in lrs], yticklabels=[f"{d:g}" for d in decays],
                cbar_kws={"label": "Test accuracy at best validation (%)"})
    ax.set_xlabel("Learning rate (Adam)")
    ax.set_ylabel("Weight decay (Adam)")
    ax.set_title(title)
    return fig


def plot_hyperparameters(options: PlotOptions) -> list[Path]:
    """Dense runs grouped by (learning rate, weight decay): every pair of values found is drawn."""
    runs = select_training_runs(options, co2=False, dense_only=True,
                                make_flags=("--train_type", "regular", "--lr", "0.001", "--decay", "0"))
    groups = dict(sorted(group_by(runs, lambda r: (r.config.lr, r.config.decay)).items()))
    title = f"Dense {options.arch_type} on {options.dataset}: mean ± 1 SD over seeds (band)"
    writer = FigureWriter(options.output_dir, options.format, options.show)
    with figure_style():
        curves = tuple(m for m in TRAINING_METRICS if m.key != "non_zeros_weights")  # always 100%
        metric_figures(writer, groups, log_values, curves, CURVE_AXES,
                       hyperparameter_series(list(groups)), "hyperparameter", title)
        writer.save(hyperparameter_grid_figure(groups, f"Dense {options.arch_type} on "
                                                       f"{options.dataset}: learning rate × weight decay"),
                    "hyperparameter_test_accuracy_grid")
    return writer.finish()


# --perf_type of lottery_ticket_performance.py: plot_performance, plot_hyperparameters
