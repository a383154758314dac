"""The study's conclusion, computed: total CO2 of training plus inference, and break-even points.

Training CO2 of a configuration is the final cumulative emissions of each of its CO2-tracking
training runs (every cycle, the dense first cycle included: that is what finding the ticket
cost). Its CO2 per inference is, for each replayed run, co2_kg_per_pass / images_per_pass from
inference_runs.csv. The arithmetic, its confidence intervals and the verdict rules are in
:mod:`data.analysis.breakeven`. A measurement (a whole training run, one inference pass) that spans
fewer than MIN_POWER_SAMPLES of CodeCarbon's power samples makes every verdict that uses it
"undetermined", and the table, break_even.csv (column too_short) and the figure say so.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data.analysis.breakeven import (AFTER, BASELINE, BREAK_EVEN_COLUMNS, CONFIDENCE_LEVEL, UNDETERMINED,
                            WELCH_LEVEL, CostLine, Measurements, break_even_rows, cost_lines,
                            describe_break_even, inference_horizon)
from data.energy.emissions import MIN_POWER_SAMPLES, TrackerSettings
from data.analysis.measured import (largest_of, recorded_sample_seconds, shortest_of,  # noqa: F401
                                    summed_components, training_others_share)
from data.energy.process import CONTAMINATION_SHARE, describe_shares
from data.report.csv_tables import csv_text
from data.report.labels import (MODE_PREFERENCE, config_colour, is_baseline, split_label, config_linestyle, config_sort_key,
                         describe_config, describe_mode)
from data.selection import find_runs, select_runs
from data.energy.emissions import summarise_provenance
from data.report.plotting import add_caption
from data.report.plot_cli import (PlotOptions, select_inference_runs, select_training_runs,
                           flags_for_config_name)
from data.report.plotting import FIGURE_SIZE, FigureWriter, figure_style, place_legend, set_title
from data.results import group_by
from data.paths import inference_runs_csv_path
from utils import UserError, atomic_write_text, format_table, get_logger

# Kernel modes in the order --mode's default picks them for a ticket: the one chosen per run
# ("auto") first, then the sparse kernels that make a ticket cheap, then the ordinary ones.
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




def measurements_by_config(names: list[str], training: dict[str, list[float]],
                           training_seconds: dict[str, float], inference: dict[str, list[float]],
                           inference_seconds: dict[str, float],
                           tracker: TrackerSettings,
                           others_shares: dict[str, list[float]] | None = None) -> dict[str, Measurements]:
    """Each configuration's per-run CO2 with its shortest measurement and whether that is too
    short for ``tracker``'s power sampling, and the largest share of the machine other
    processes took while any of its runs was measured (``others_shares``; flagged above
    CONTAMINATION_SHARE)."""
    measurements = {}
    for name in names:
        shortest = shortest_of([training_seconds[name], inference_seconds[name]])
        others = largest_of((others_shares or {}).get(name, []))
        measurements[name] = Measurements(training[name], inference[name], shortest,
                                          tracker.too_short_to_measure(shortest), others,
                                          others > CONTAMINATION_SHARE)
    return measurements










def training_co2_by_config(options: PlotOptions
                           ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, dict | None],
                                      dict[str, list[float]]]:
    """kg CO2eq of each CO2-tracking training run (all its cycles), by configuration, the
    shortest tracked duration (s) among each configuration's runs, how each run's energy was
    measured (by results file name), and the share of the machine others took during each run."""
    runs = select_training_runs(options, co2=True)
    by_config = group_by(runs, lambda r: r.config_name)
    return ({name: [run.final_emissions["emissions"] for run in members]
             for name, members in by_config.items()},
            {name: shortest_of([run.final_emissions["duration"] for run in members])
             for name, members in by_config.items()},
            {run.path.name: {**run.provenance, "energy": run.final_emissions} if run.provenance else None
             for run in runs},
            {name: [training_others_share(run) for run in members] for name, members in by_config.items()})


def inference_co2_by_config(options: PlotOptions, device: str, mode: str | None, baseline: str
                            ) -> tuple[dict[str, list[float]], dict[str, str], dict[str, float], set[str],
                                       dict[str, list]]:
    """kg CO2eq per inference of each replayed run on ``device``, by configuration, the kernel
    mode chosen for each configuration, its shortest measured pass (s; NaN: not recorded), how
    the energy of the replays used was measured (in words), and the replays used."""
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
    shortest: dict[str, float] = {}
    provenance: set[str] = set()
    used: dict[str, list] = {}
    for name, members in group_by(on_device, lambda r: r.config_name).items():
        chosen = choose_mode({r.mode for r in members}, mode, baseline=name == baseline)
        if chosen is None:
            log.warning("warning: %s was not replayed with %s kernels on %s; left out", name, mode,
                        device)
            continue
        modes[name] = chosen
        chosen_runs = [r for r in members if r.mode == chosen]
        per_inference[name] = [r.co2_kg_per_inference for r in chosen_runs]
        used[name] = chosen_runs
        shortest[name] = shortest_of([r.seconds_per_pass for r in chosen_runs])
        provenance.update(r.provenance for r in chosen_runs if r.provenance)
    return per_inference, modes, shortest, provenance, used


def resolve_baseline(options: PlotOptions, baseline: str) -> tuple[str, set[str]]:
    """The label of the dense baseline the tickets are compared with, and the labels of the
    configurations trained under other settings than it (left out: a ticket is only compared
    with a baseline trained like it).

    When the selection holds several configurations named ``baseline`` (a learning-rate grid
    beside the study, say), the one trained with the tickets' settings is chosen; if that does
    not single one out, the script stops and says how to pick one.
    """
    records = select_runs(find_runs(options.save_dir, options.arch_type, options.dataset),
                          options.run_filter)
    by_label = {record.config_name: record.config for record in records}
    candidates = sorted(label for label in by_label if split_label(label)[0] == baseline)
    if not candidates:
        return baseline, set()
    tickets = {label: config for label, config in by_label.items() if label not in candidates}
    chosen = candidates[0]
    if len(candidates) > 1:
        keys = {config.baseline_key() for config in tickets.values()}
        matching = [label for label in candidates if by_label[label].baseline_key() in keys]
        if len(keys) != 1 or len(matching) != 1:
            raise UserError(f"the selection holds several {baseline} configurations "
                            f"({'; '.join(candidates)}); pick one with --where KEY=VALUE on the "
                            "setting that differs (e.g. --where lr=0.0012)")
        chosen = matching[0]
        get_logger().info("Comparing with %s: the dense baseline trained with the tickets' settings",
                          chosen)
    others = {label for label, config in tickets.items()
              if config.baseline_key() != by_label[chosen].baseline_key()}
    if others:
        get_logger().warning("warning: %s trained with other settings than the baseline %s; left "
                             "out of the break-even analysis (select them with --where to compare "
                             "them with their own baseline)", "; ".join(sorted(others)), chosen)
    return chosen, others


def comparable_configs(training: dict[str, list[float]], inference: dict[str, list[float]],
                       baseline: str, options: PlotOptions) -> list[str]:
    """The configurations measured on both sides, baseline first; says what is missing."""
    log = get_logger()
    needs = (
        ("CO2-tracking training run", training,
         options.command("lottery_ticket.py", *flags_for_config_name(baseline), "--co2_tracking_mode")),
        ("inference replay", inference, options.command("post_training_inference.py")))
    for side, have, make in needs:
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


def describe_measurement(row: dict) -> str:
    seconds = row["shortest_measurement_s"]
    text = "?" if math.isnan(seconds) else f"{seconds:.3g} s"
    text = f"{text} TOO SHORT" if row["too_short"] else text
    return f"{text} CONTAMINATED" if row.get("contaminated") else text


def break_even_table(rows: list[dict]) -> str:
    def number(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    headers = ("config", "mode", "training CO2 kg", "n", "CO2 kg per inference", "n",
               "break-even (inferences)", "Welch t", "p", "shortest measurement")
    return format_table(headers, [
        (row["config"], row["mode"],
         plus_minus(row["training_co2_kg_mean"], row["training_co2_kg_std"]), row["training_runs"],
         plus_minus(row["co2_kg_per_inference_mean"], row["co2_kg_per_inference_std"]),
         row["inference_runs"], describe_break_even(row), number(row.get("welch_t", math.nan), ".3g"),
         number(row.get("welch_p", math.nan), ".3g"), describe_measurement(row))
        for row in rows])


def too_short_caveat(rows: list[dict], tracker: TrackerSettings) -> str:
    """A warning naming the configurations measured too briefly for ``tracker``'s power
    sampling, or "" when none was."""
    short = [row for row in rows if tracker.too_short_to_measure(row["shortest_measurement_s"])]
    if not short:
        return ""
    shortest = min(row["shortest_measurement_s"] for row in short)
    return (f"WARNING: measurements of {', '.join(row['config'] for row in short)} lasted as little "
            f"as {shortest:.3g} s, under {MIN_POWER_SAMPLES} of CodeCarbon's "
            f"{tracker.measure_power_secs:g} s power samples: their CO2 is mostly sampling noise, "
            f"so every verdict using them is undetermined. Measure longer (lottery_ticket.py with "
            f"more epochs, post_training_inference.py --sweeps_per_pass) before concluding.")


def figure_caveat(rows: list[dict], tracker: TrackerSettings) -> str:
    """The too-short warning, short enough to head a figure; "" when nothing was too short."""
    seconds = [row["shortest_measurement_s"] for row in rows
               if tracker.too_short_to_measure(row["shortest_measurement_s"])]
    if not seconds:
        return ""
    return (f"WARNING: measurements as short as {min(seconds):.3g} s, under {MIN_POWER_SAMPLES} of "
            f"CodeCarbon's {tracker.measure_power_secs:g} s power samples: CO2 mostly sampling "
            f"noise, break-even undetermined")


def table_notes(rows: list[dict]) -> str:
    """How the figures were computed, then why each undetermined verdict is undetermined."""
    lines = [f"break-even: mean training CO2 difference / mean saving per inference; "
             f"{CONFIDENCE_LEVEL:.0%} confidence interval by Fieller's method over seeds; "
             f"training CO2 and CO2 per inference are mean ± standard deviation over runs.",
             f"Welch t, p: CO2 per inference against the baseline, two-sided Welch t-test "
             f"(significant at p < {WELCH_LEVEL:g})."]
    lines += [f"{row['config']}: undetermined because {row['reason']}" for row in rows
              if row["outcome"] == UNDETERMINED]
    return "\n".join(lines)


# characters per line under the axes: a legend beside them leaves about this much width
VERDICT_WIDTH = 75


def verdict_lines(rows: list[dict]) -> str:
    """Each ticket's verdict with its reason, one wrapped line each, for under the axes."""
    import textwrap

    lines = []
    for row in rows:
        if row["outcome"] == BASELINE:
            continue
        described = describe_break_even(row)
        said = row["reason"] and row["reason"].split(": ", 1)[-1] in described
        reason = f": {row['reason']}" if row["reason"] and not said else ""
        lines.append(textwrap.fill(f"{row['config']}: {described}{reason}", VERDICT_WIDTH))
    return "\n".join(lines)


def break_even_figure(rows: list[dict], lines: dict[str, CostLine], horizon: float, title: str,
                      caveat: str = ""):
    """Total CO2 against inferences served, one line and seed-to-seed band per configuration;
    each "after N" break-even point marked with its confidence interval as a horizontal bar;
    each configuration's verdict in the legend, and ``caveat`` (measurements too short) in red
    above the title."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGURE_SIZE, layout="constrained")
    n = np.linspace(0.0, horizon, 200)
    for row in rows:
        name = row["config"]
        line = lines[name]
        mean, std = line.total(n)
        colour = config_colour(name)
        label = f"{describe_config(name)}, {describe_mode(row['mode'])}"
        if row["outcome"] == BASELINE:
            label += " (baseline)"
        elif row["outcome"] != AFTER:   # "after" is written beside its marker
            label += (f": {row['outcome']}" + (", too short" if row["too_short"] else "")
                      + (", contaminated" if row.get("contaminated") else ""))
        ax.plot(n, mean, color=colour, linestyle=config_linestyle(name), linewidth=1.8,
                zorder=3 if is_baseline(name) else 2, label=label)
        if not np.all(np.isnan(std)):
            ax.fill_between(n, np.maximum(mean - std, 0.0), mean + std, color=colour, alpha=0.15,
                            linewidth=0)
        if row["outcome"] == AFTER:
            at, low, high = row["break_even_inferences"], row["break_even_low"], row["break_even_high"]
            total, _ = line.total(at)
            ax.plot([at, at], [0, total], color=colour, linestyle=":", linewidth=1.2)
            ax.errorbar([at], [total], xerr=[[at - low], [high - at]], color=colour, marker="o",
                        markersize=7, markeredgecolor="white", capsize=4, linestyle="none", zorder=4)
            ax.annotate(describe_break_even(row).replace("after", "break-even after", 1)
                        .replace(" (", "\ninferences (", 1), (at, total), textcoords="offset points",
                        xytext=(8, -30), fontsize="small", color=colour)
    ax.set_xlim(0, horizon)
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(style="sci", scilimits=(-3, 4))
    bars = (f"; bars: {CONFIDENCE_LEVEL:.0%} CI of the break-even point (Fieller, over seeds)"
            if any(row["outcome"] == AFTER for row in rows) else "")
    import textwrap

    xlabel = (f"Inferences served (images classified)\nbands: ± 1 SD over seeds{bars}\n"
              + verdict_lines(rows))   # each line wrapped: a legend beside the axes narrows them
    ax.set_xlabel("\n".join(textwrap.fill(line, VERDICT_WIDTH) for line in xlabel.splitlines()),
                  fontsize="small")
    ax.set_ylabel("Total CO2eq (kg),\ntraining + inference")
    set_title(ax, title)
    place_legend(fig, ax)
    if caveat:
        import textwrap

        # Above the title rather than over the lines, so that it hides nothing it warns about.
        fig.suptitle(textwrap.fill(caveat, 65), color="darkred", fontweight="bold",
                     fontsize="medium")
    return fig


def report_break_even(options: PlotOptions, device: str, mode: str | None, baseline: str,
                      max_inferences: float | None = None,
                      measure_power_secs: float = TrackerSettings.measure_power_secs) -> list[Path]:
    """Print the break-even table, write break_even.csv and the figure; returns the files.

    Which measurements were too short to trust is decided by the power-sampling interval the
    runs recorded (``measure_power_secs`` only for files of earlier versions, which did not)."""
    log = get_logger()
    training, training_seconds, training_provenance, training_others = training_co2_by_config(options)
    baseline, others = resolve_baseline(options, baseline)
    inference, modes, inference_seconds, inference_ways, replays = inference_co2_by_config(
        options, device, mode, baseline)
    others_shares = {name: training_others.get(name, []) + [r.others_cpu_share for r in replays.get(name, [])]
                     for name in set(training_others) | set(replays)}
    measure_power_secs = recorded_sample_seconds(
        training_provenance, [r for runs in replays.values() for r in runs], measure_power_secs)
    training = {name: values for name, values in training.items() if name not in others}
    inference = {name: values for name, values in inference.items() if name not in others}
    names = comparable_configs(training, inference, baseline, options)
    tracker = TrackerSettings(measure_power_secs=measure_power_secs)
    measurements = measurements_by_config(names, training, training_seconds, inference,
                                          inference_seconds, tracker, others_shares)
    lines = cost_lines(measurements)
    rows = break_even_rows(measurements, baseline)
    for row in rows:
        row.update(description=describe_config(row["config"]), device=device,
                   mode=modes[row["config"]])
    caveat = too_short_caveat(rows, tracker)
    log.info("Break-even against %s (%s), inference on %s, %s on %s:\n%s\n%s%s", baseline,
             describe_config(baseline), device, options.arch_type, options.dataset,
             break_even_table(rows), table_notes(rows), f"\n\n{caveat}" if caveat else "")
    writer = FigureWriter(options.output_dir, options.format, options.show)
    csv_path = options.output_dir / BREAK_EVEN_CSV
    atomic_write_text(csv_path, break_even_csv_text(rows))
    horizon = max_inferences or inference_horizon(lines, [r["break_even_inferences"] for r in rows])
    with figure_style():
        fig = break_even_figure(rows, lines, horizon,
                                f"Training + inference CO2, {options.arch_type} on {options.dataset}, "
                                f"inference on {device.upper()}",
                                caveat=figure_caveat(rows, tracker))
        training_way = summarise_provenance(list(training_provenance.values()))
        shares = describe_shares(summed_components(training_provenance))
        add_caption(fig, f"Training {training_way[0].lower()}{training_way[1:]}"
                         f"{f' (energy: {shares})' if shares else ''}. "
                         f"Inference energy: {' | '.join(sorted(inference_ways)) or 'not recorded'}.")
        writer.save(fig, f"break_even_total_co2_vs_inferences_{device}")
    return [csv_path] + writer.finish()
