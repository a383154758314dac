"""What a plotting command asks for: the shared flags, the output folder, the training runs
selected, and the one-line messages that say how to make inputs that are missing."""
from __future__ import annotations

import argparse
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Callable

from typing import TYPE_CHECKING

from data.report.inference_tables import DEFAULT_STATE
from data.report.labels import BASELINE_CONFIG, FORMATS, MODE_PREFERENCE, split_label
from data.names import network_argument, parse_config_name
from data.paths import SAVE_DIR, inference_runs_csv_path, run_dir
from data.runs import RunConfig
from data.settings import add_field_arguments, option, setting
from data.selection import (RunFilter, RunRecord, add_selection_arguments, config_name_argument,
                            describe_groups, find_runs, flags_for_config, select_runs)
from utils import ArgumentParser, UserError, get_logger, positive_float, setup_logging

if TYPE_CHECKING:   # the readers import numpy and torch: loaded when a figure is drawn, not for --help
    from data.results import InferenceRun, TrainingRun

PERF_TYPES = ("performance", "hyperparameter")   # lottery_ticket_performance.py --perf_type


@dataclass(frozen=True)
class PlotOptions:
    """What a plotting command asks for. Each option with a flag is declared once here, with
    :func:`data.settings.setting`; :func:`plot_parser` generates the flags from the declarations."""

    arch_type: str = setting(RunConfig.arch_type, token=None, parse=network_argument, metavar="ARCH",
                             help="network whose runs to plot (any name or alias lottery_ticket.py takes)")
    dataset: str = setting(RunConfig.dataset, token=None, help="dataset of the runs (mnist, digits, cifar10...)")
    save_dir: Path = setting(SAVE_DIR, token=None, parse=Path,
                             help="where lottery_ticket.py and post_training_inference.py wrote their results")
    plots_dir: Path = setting(Path("plots"), token=None, parse=Path, help="figures go to PLOTS_DIR/ARCH/DATASET/")
    run_filter: RunFilter = RunFilter()     # flags: data.selection.add_selection_arguments
    cycle: int | None = None                # which cycle's replays; None: each run's last (flag: same)
    format: str = setting("png", token=None, help="file format of the figures")   # choices: FORMATS
    show: bool = setting(False, token=None, help="also open the figures in windows (the script then waits "
                         "until they are closed); by default it only writes files")

    @property
    def output_dir(self) -> Path:
        return run_dir(self.plots_dir, self.arch_type, self.dataset)

    @property
    def input_dir(self) -> Path:
        return run_dir(self.save_dir, self.arch_type, self.dataset)

    def command(self, script: str, *flags: str) -> str:
        """The command that makes this script's inputs, for messages about missing files."""
        words = ["python3", script, "--arch_type", self.arch_type, "--dataset", self.dataset]
        if self.save_dir != SAVE_DIR:
            words += ["--save_dir", str(self.save_dir)]
        return " ".join(words + list(flags))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PlotOptions":
        return cls(**{f.name: getattr(args, f.name) for f in _flagged()},
                   run_filter=RunFilter.from_args(args), cycle=getattr(args, "cycle", None))


@dataclass(frozen=True)
class PerformanceOptions:
    """lottery_ticket_performance.py's own option."""

    perf_type: str = option("performance", choices=PERF_TYPES,
                             help="performance: one line per configuration (ppPxN) and the Lottery-Ticket "
                                  "figures; hyperparameter: dense runs grouped by learning rate and "
                                  "weight decay, with a heat map of the grid")


@dataclass(frozen=True)
class BreakEvenOptions:
    """inference_emission.py's own options (the arguments of report_break_even)."""

    device: str = option("cpu", choices=("cpu", "gpu"),
                          help="use the inference replays run on this device")
    mode: str | None = option(None, choices=MODE_PREFERENCE,
                               help="kernel mode of the tickets' replays (default: the first available of "
                                    f"{', '.join(MODE_PREFERENCE)}); the baseline uses dense kernels, or "
                                    "whichever mode it was replayed with")
    baseline: str = option(BASELINE_CONFIG, parse=config_name_argument, metavar="ppPxN",
                            help="the configuration every other is compared with")
    max_inferences: float | None = option(None, parse=positive_float, metavar="N",
                                           help="end the figure's horizontal axis at N inferences "
                                                "(default: twice the largest break-even point)")


def _flagged(*names: str) -> list[Field]:
    """PlotOptions' fields that have a flag (all, or those of ``names``)."""
    return [f for f in fields(PlotOptions) if f.metadata and (not names or f.name in names)]


def plot_parser(description: str, *, cycle: bool = False) -> ArgumentParser:
    """An argument parser with the flags all plotting scripts share (``cycle``: the script reads
    the inference replay, whose rows are per cycle)."""
    parser = ArgumentParser(description=description)
    add_field_arguments(parser, _flagged("arch_type", "dataset", "save_dir", "plots_dir"))
    add_selection_arguments(parser, cycle=cycle)
    add_field_arguments(parser, _flagged("format", "show"), choices={"format": FORMATS})
    return parser


def flags_for_config_name(name: str) -> list[str]:
    """lottery_ticket.py's flags that train configuration ``name`` (pp0x1: the dense baseline),
    every other setting at its default: :func:`data.selection.flags_for_config` of that configuration."""
    prune_percent, prune_iterations = parse_config_name(name)
    config = (RunConfig(train_type="regular") if prune_iterations == 1
              else RunConfig(prune_percent=prune_percent, prune_iterations=prune_iterations))
    return flags_for_config(config)


def run_plot_script(parser: argparse.ArgumentParser, draw: Callable[[argparse.Namespace, "PlotOptions"], list[Path]],
                    argv: list[str] | None) -> int:
    """What every plotting script does: parse its flags, pick the backend, draw, list the files."""
    args = parser.parse_args(argv)
    from data.report.plotting import select_backend   # matplotlib: after parsing, so --help stays fast

    setup_logging()
    select_backend(args.show)
    print_written(draw(args, PlotOptions.from_args(args)))
    return 0


def print_written(paths: list[Path]) -> None:
    log = get_logger()
    log.info("Wrote %d file(s):", len(paths))
    for path in paths:
        log.info("  %s", path)


def select_training_runs(options: PlotOptions, *, co2: bool, dense_only: bool = False,
                         make_flags: tuple[str, ...] = ()) -> list[TrainingRun]:
    """The readable training runs the options select; raises UserError naming the folder
    searched, what it holds and the command that makes the missing runs when there is none.

    ``co2`` picks the CO2-tracking runs (emission records, no evaluation) or the evaluated ones;
    ``dense_only`` keeps the dense baselines. Runs of configurations that differ in any setting
    get different labels (data.runs.group_labels), so they are never averaged together. A CO2
    run whose tracker recorded nothing is skipped with a warning.
    """
    from data.results import load_training_runs

    def keep(record: RunRecord) -> bool:
        # A --co2_evaluate run has both: accuracies and training energy.
        wanted = record.co2 == co2 or (not co2 and record.config.co2_evaluate)
        return wanted and (not dense_only or record.config.is_dense_baseline)

    runs = load_training_runs(options.save_dir, options.arch_type, options.dataset,
                              options.run_filter, keep)
    # One run per configuration and seed: the run made for this purpose when there are two.
    chosen: dict[tuple, TrainingRun] = {}
    for run in sorted(runs, key=lambda r: r.config.co2_tracking_mode == co2):
        chosen[(run.config.configuration_id, run.config.seed)] = run
    runs = [run for run in runs if chosen[(run.config.configuration_id, run.config.seed)] is run]
    if co2:
        for run in runs:
            if not run.emissions:
                get_logger().warning("warning: %s holds no CodeCarbon record (the tracker measured "
                                     "nothing); skipped", run.path)
        runs = [run for run in runs if run.emissions]
    if runs:
        return runs

    what = ("CO2-tracking" if co2 else "evaluated") + (" dense" if dense_only else "") + " training runs"
    make = options.command("lottery_ticket.py", *make_flags, *(["--co2_tracking_mode"] if co2 else []))
    on_disk = select_runs(find_runs(options.save_dir, options.arch_type, options.dataset), RunFilter())
    found = [run for run in on_disk if run.co2 == co2]
    if not found:
        note = "" if co2 or not on_disk else \
            " (only CO2-tracking runs, which skip evaluation, so they cannot be used here)"
        raise UserError(f"no {what} for {options.arch_type} on {options.dataset} in "
                        f"{options.input_dir}{note}; make them with: {make}")
    raise UserError(f"no {what} in {options.input_dir} match {options.run_filter.describe()} (found: "
                    f"{describe_groups(found)}); change the filters or make them with: {make}")


def describe_conditions(conditions: tuple[str, int | None, int | None]) -> str:
    """('final', 2, 512) -> 'final weights, 2 threads, batch 512' (unrecorded parts left out)."""
    state, threads, batch_size = conditions
    words = [f"{state} weights"]
    if threads is not None:
        words.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if batch_size is not None:
        words.append(f"batch {batch_size}")
    return ", ".join(words)


def one_condition_per_device(runs: list[InferenceRun]) -> list[InferenceRun]:
    """The replays of each device measured under one set of conditions (weights, threads, batch
    size): times and energies measured under different ones must not be averaged or compared.
    Where there are several, the final weights (the original's) are preferred, then the
    conditions most replays were made under; the log says which were used."""
    from data.results import group_by

    kept = []
    for device, members in sorted(group_by(runs, lambda r: r.device).items()):
        by_conditions = group_by(members, lambda r: r.conditions)
        if len(by_conditions) > 1:
            ordered = sorted(by_conditions, key=lambda c: tuple((v is not None, v or 0) for v in c))
            chosen = max(ordered, key=lambda c: (c[0] == DEFAULT_STATE, len(by_conditions[c]),
                                                 -ordered.index(c)))
            get_logger().info("inference_runs.csv holds replays on %s under several conditions (%s); "
                              "using %s", device, "; ".join(map(describe_conditions, ordered)),
                              describe_conditions(chosen))
            members = by_conditions[chosen]
        kept += members
    return kept


def replays_of_selected_runs(options: PlotOptions, rows: list[InferenceRun]) -> list[InferenceRun]:
    """The replays of the training runs the options select (the same filter as every script), of
    the cycle asked for (each run's last by default; the dense baseline has only cycle 0), each
    named by its configuration's label. A replay whose cycle is not its run's last says so in
    its label."""
    import dataclasses

    from data.results import group_by

    selected = select_runs(find_runs(options.save_dir, options.arch_type, options.dataset),
                           options.run_filter)
    by_stem = {run.path.stem: run for run in selected}
    # Versions before run identities replayed only runs of the default learning rate and weight
    # decay, and their rows name no run: such a row stands for the one selected configuration of
    # its name and seed with those defaults (none, or several: the row is left out).
    defaults = RunConfig()
    old_style = {key: {run.config.configuration_id for run in members} for key, members in group_by(
        [run for run in selected if run.config.lr == defaults.lr and run.config.decay == defaults.decay],
        lambda run: (run.config.config_name, run.seed)).items()}
    by_configuration_seed = {}
    for run in sorted(selected, key=lambda r: not r.co2):   # the replay preferred the non-CO2 run
        by_configuration_seed[(run.config.configuration_id, run.seed)] = run
    kept = []
    for row in rows:
        if row.run:
            run = by_stem.get(row.run)
        else:
            configurations = old_style.get((split_label(row.config_name)[0], row.seed), set())
            run = (by_configuration_seed[(next(iter(configurations)), row.seed)]
                   if len(configurations) == 1 else None)
        if run is None:
            continue
        last = run.config.prune_iterations - 1
        wanted = last if options.cycle is None or run.config.is_dense_baseline else options.cycle
        if row.cycle != wanted:
            continue
        label = run.config_name if wanted == last else f"{run.config_name}, cycle {wanted}"
        kept.append(dataclasses.replace(row, config_name=label))
    return kept


def select_inference_runs(options: PlotOptions) -> list[InferenceRun]:
    """The rows of inference_runs.csv the options ask for, one set of measuring conditions per
    device; raises UserError naming the folder searched and the command that replays the
    tickets when there is none."""
    from data.results import load_inference_runs

    runs = one_condition_per_device(replays_of_selected_runs(
        options, load_inference_runs(options.save_dir, options.arch_type, options.dataset)))
    if runs:
        return runs
    table = inference_runs_csv_path(options.save_dir, options.arch_type, options.dataset)
    what = "no replayed run there matches the filters given" if table.is_file() else \
        f"no {table.name} there"
    raise UserError(f"no inference results for {options.arch_type} on {options.dataset} in "
                    f"{table.parent} ({what}); make them with: "
                    f"{options.command('post_training_inference.py')}")
