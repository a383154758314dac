"""What a plotting command asks for: the shared flags, the output folder, the training runs
selected, and the one-line messages that say how to make inputs that are missing."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from archs.inference import DEFAULT_STATE
from data.plotting import FORMATS
from data.results import (InferenceRun, TrainingRun, group_by, load_inference_runs,
                          load_training_runs)
from data.runs import (DEFAULT_DECAY, DEFAULT_LR, config_name, find_run_files, format_number,
                       inference_runs_csv_path, parse_config_name, run_dir)
from utils import (ArgumentParser, UserError, get_logger, non_negative_float, positive_float,
                   setup_logging)


def config_name_argument(text: str) -> str:
    """argparse type: a configuration name such as pp90x2, written as the files name it
    (pp90.0x2 becomes pp90x2, so that it matches them)."""
    parsed = parse_config_name(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a configuration name; write "
                                         "ppPxN, e.g. pp90x2, pp68x3 or pp0x1")
    return config_name(*parsed)


@dataclass(frozen=True)
class PlotOptions:
    arch_type: str = "fc1"
    dataset: str = "mnist"
    save_dir: Path = Path("saves")
    plots_dir: Path = Path("plots")
    configs: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    file_format: str = "png"
    show: bool = False

    @property
    def output_dir(self) -> Path:
        return run_dir(self.plots_dir, self.arch_type, self.dataset)

    @property
    def input_dir(self) -> Path:
        return run_dir(self.save_dir, self.arch_type, self.dataset)

    def wants(self, config: str, seed: int) -> bool:
        return ((self.configs is None or config in self.configs)
                and (self.seeds is None or seed in self.seeds))

    def command(self, script: str, *flags: str) -> str:
        """The command that makes this script's inputs, for messages about missing files."""
        words = ["python3", script, "--arch_type", self.arch_type, "--dataset", self.dataset]
        if self.save_dir != Path("saves"):
            words += ["--save_dir", str(self.save_dir)]
        return " ".join(words + list(flags))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PlotOptions":
        return cls(arch_type=args.arch_type, dataset=args.dataset, save_dir=args.save_dir,
                   plots_dir=args.plots_dir, configs=tuple(args.configs) if args.configs else None,
                   seeds=tuple(args.seeds) if args.seeds is not None else None,
                   file_format=args.format, show=args.show)


def plot_parser(description: str) -> ArgumentParser:
    """An argument parser with the flags all plotting scripts share."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--arch_type", default="fc1", help="network whose runs to plot (fc1, lenet5, resnet18)")
    parser.add_argument("--dataset", default="mnist", help="dataset of the runs (mnist, cifar10)")
    parser.add_argument("--save_dir", type=Path, default=Path("saves"),
                        help="where lottery_ticket.py and post_training_inference.py wrote their results")
    parser.add_argument("--plots_dir", type=Path, default=Path("plots"),
                        help="figures go to PLOTS_DIR/ARCH/DATASET/")
    parser.add_argument("--configs", nargs="+", type=config_name_argument, metavar="ppPxN",
                        help="only these configurations, e.g. pp90x2 pp0x1 (default: all found)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="only these seeds (default: all found)")
    parser.add_argument("--format", default="png", choices=FORMATS, help="file format of the figures")
    parser.add_argument("--show", action="store_true",
                        help="also open the figures in windows (the script then waits until they "
                             "are closed); by default it only writes files")
    return parser


def add_training_hyperparameter_arguments(parser: ArgumentParser) -> None:
    """--lr and --decay: which training runs to use (the grid's runs have other values)."""
    parser.add_argument("--lr", type=positive_float, default=DEFAULT_LR,
                        help="use the training runs made with this learning rate")
    parser.add_argument("--decay", type=non_negative_float, default=DEFAULT_DECAY,
                        help="use the training runs made with this weight decay")


def training_flags(name: str) -> list[str]:
    """lottery_ticket.py's flags that train configuration ``name`` (pp0x1: the dense baseline)."""
    prune_percent, prune_iterations = parse_config_name(name)
    if prune_iterations == 1:
        return ["--train_type", "regular"]
    return ["--prune_percent", format_number(prune_percent), "--prune_iterations", str(prune_iterations)]


def found_runs_summary(infos) -> str:
    """'pp0x1 seeds 0 1; pp0x1 lr 0.001 decay 0 seed 0' for messages about filters."""
    def describe(key) -> str:
        name, lr, decay = key
        if lr == DEFAULT_LR and decay == DEFAULT_DECAY:
            return name
        return f"{name} lr {format_number(lr)} decay {format_number(decay)}"

    groups = group_by(infos, lambda info: (info.config_name, info.lr, info.decay))
    parts = []
    for key, members in sorted(groups.items()):
        seeds = sorted({info.seed for info in members})
        parts.append(f"{describe(key)} seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}")
    return "; ".join(parts)


def run_plot_script(parser: argparse.ArgumentParser, draw: Callable[[argparse.Namespace, "PlotOptions"], list[Path]],
                    argv: list[str] | None) -> int:
    """What every plotting script does: parse its flags, pick the backend, draw, list the files."""
    from data.plotting import select_backend

    args = parser.parse_args(argv)
    setup_logging()
    select_backend(args.show)
    print_written(draw(args, PlotOptions.from_args(args)))
    return 0


def print_written(paths: list[Path]) -> None:
    log = get_logger()
    log.info("Wrote %d file(s):", len(paths))
    for path in paths:
        log.info("  %s", path)


def select_training_runs(options: PlotOptions, *, co2: bool, lr: float | None = None,
                         decay: float | None = None, dense_only: bool = False,
                         make_flags: tuple[str, ...] = ()) -> list[TrainingRun]:
    """The readable training runs the options ask for; raises UserError naming the folder
    searched, what it holds and the command that makes the missing runs when there is none.

    ``co2`` picks the CO2-tracking runs (emission records, no evaluation) or the evaluated ones;
    ``lr``/``decay`` (None: any) and ``dense_only`` narrow the choice further. A CO2 run whose
    tracker recorded nothing is skipped with a warning.
    """
    def keep(info) -> bool:
        return (info.co2 == co2 and options.wants(info.config_name, info.seed)
                and (lr is None or math.isclose(info.lr, lr))
                and (decay is None or math.isclose(info.decay, decay))
                and (not dense_only or info.prune_iterations == 1))

    runs = load_training_runs(options.save_dir, options.arch_type, options.dataset, keep)
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
    on_disk = find_run_files(options.save_dir, options.arch_type, options.dataset)
    found = [info for info in on_disk if info.co2 == co2]
    if not found:
        note = "" if co2 or not on_disk else \
            " (only CO2-tracking runs, which skip evaluation, so they cannot be used here)"
        raise UserError(f"no {what} for {options.arch_type} on {options.dataset} in "
                        f"{options.input_dir}{note}; make them with: {make}")
    filters = [f"--configs {' '.join(options.configs)}" if options.configs else "",
               f"--seeds {' '.join(map(str, options.seeds))}" if options.seeds is not None else "",
               f"--lr {format_number(lr)}" if lr is not None else "",
               f"--decay {format_number(decay)}" if decay is not None else ""]
    asked = ", ".join(f for f in filters if f) or "the filters given"
    raise UserError(f"no {what} in {options.input_dir} match {asked} (found: "
                    f"{found_runs_summary(found)}); change the filters or make them with: {make}")


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


def select_inference_runs(options: PlotOptions) -> list[InferenceRun]:
    """The rows of inference_runs.csv the options ask for, one set of measuring conditions per
    device; raises UserError naming the folder searched and the command that replays the
    tickets when there is none."""
    runs = one_condition_per_device([
        run for run in load_inference_runs(options.save_dir, options.arch_type, options.dataset)
        if options.wants(run.config_name, run.seed)])
    if runs:
        return runs
    table = inference_runs_csv_path(options.save_dir, options.arch_type, options.dataset)
    what = "no replayed run there matches the filters given" if table.is_file() else \
        f"no {table.name} there"
    raise UserError(f"no inference results for {options.arch_type} on {options.dataset} in "
                    f"{table.parent} ({what}); make them with: "
                    f"{options.command('post_training_inference.py')}")
