#!/usr/bin/env python3
"""Find winning tickets by iterative magnitude pruning with rewinding; optionally track CO2.

Example: python3 lottery_ticket.py --arch_type=fc1 --dataset=mnist --prune_percent=90 --prune_iterations=2
A whole study, one job per run: python3 lottery_ticket.py --study study.json --launcher local
"""
from __future__ import annotations

import argparse

from utils import ArgumentParser, run_cli, setup_logging


def registry_choices() -> dict[str, list[str]]:
    """The names registry-backed settings accept (and --branch, checked in main: its empty
    default and "none" mean no branch, which argparse's choices would refuse). From a fresh
    command line, the names declared under archs/, read from the files' text without importing
    torch so that --help stays fast. When torch is already loaded (the script called in-process,
    extensions registered from code), every registry's own names."""
    import sys

    if "torch" in sys.modules:
        from archs.choices import registered_choices
        from archs.pruning.branches import BRANCHES

        return {**registered_choices(), "branch": list(BRANCHES)}
    from data.names import declared_registry_names, network_choices

    return {"arch_type": network_choices(), **declared_registry_names()}


def refuse_unknown_dataset(parser: argparse.ArgumentParser, name: str) -> None:
    """Refuse a --dataset nothing registers, before torch loads (datasets register on import):
    from a fresh command line the names declared under data/datasets, read from the files' text;
    when torch is already loaded (extensions registered from code), the registry's own."""
    import sys

    if "torch" in sys.modules:
        from data.datasets import DATASETS

        allowed = list(DATASETS)
    else:
        from data.names import declared_datasets

        allowed = declared_datasets()
    if name not in allowed:
        parser.error(f"argument --dataset: invalid choice: {name!r} (choose from {', '.join(map(repr, allowed))})")


def build_parser() -> argparse.ArgumentParser:
    from archs.launch.settings import add_launcher_arguments
    from data.energy.emissions import add_tracker_arguments
    from data.jobs import TrainingCommand, TrainingOptions
    from data.runs import add_setting_arguments
    from data.settings import add_field_arguments, flagged

    parser = ArgumentParser(
        description="Lottery Ticket Hypothesis (Frankle & Carbin, 2019): train, prune the smallest "
                    "weights, rewind the survivors to their initial values, train again; with "
                    "optional CodeCarbon energy and CO2 tracking. One full run per seed; results "
                    "go to SAVE_DIR/ARCH/DATASET/ppPxN_seedS_co2BOOL_DATASET[_SETTINGS].pt, where "
                    "SETTINGS lists every setting that differs from its default.")
    settings = parser.add_argument_group("settings of the run (each one is part of its identity)")
    add_setting_arguments(settings, choices={name: names for name, names in registry_choices().items()
                                             if name != "branch"})
    add_field_arguments(parser, flagged(TrainingOptions))
    add_tracker_arguments(parser)
    add_field_arguments(parser, flagged(TrainingCommand))
    add_launcher_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = build_parser()
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.target_sparsity is not None and any(a.split("=")[0] == "--prune_percent" for a in given):
        parser.error("--target_sparsity sets the per-round rate itself: give it or --prune_percent, "
                     "not both")
    refuse_unknown_dataset(parser, args.dataset)
    branches = registry_choices()["branch"]
    if args.branch and args.branch not in branches:
        parser.error(f"argument --branch: invalid choice: {args.branch!r} (choose from "
                     f"{', '.join(map(repr, branches))})")
    setup_logging()

    from archs import canonical_arch
    from archs.experiment import TrainingJob, run_job
    from archs.launch.orchestration import launch_training
    from archs.launch.settings import launch_settings_from_args
    from archs.launch.study import expand_study, read_study, study_seeds
    from data.energy.emissions import tracker_settings_from_args
    from archs.choices import registered_choices
    from data.jobs import TrainingOptions
    from data.runs import config_from_args
    from data.settings import flagged, values_from_args

    # Registries fill on import (torch), so their names are checked after parsing (the network's
    # were read from its declarations, without torch).
    for name, allowed in registered_choices().items():
        if getattr(args, name) not in allowed:
            parser.error(f"argument --{name}: invalid choice: {getattr(args, name)!r} (choose from "
                         f"{', '.join(map(repr, allowed))})")
    launch = launch_settings_from_args(args, args.save_dir)
    config = config_from_args(args, arch_type=canonical_arch(args.arch_type))
    job = TrainingJob(config=config, tracker=tracker_settings_from_args(args),
                      **values_from_args(flagged(TrainingOptions), args))
    if args.study is None and launch.launcher == "none":
        run_job(job)
        return 0
    configs, seeds = [job.config], args.seeds
    if args.study is not None:
        study = read_study(args.study)
        configs = expand_study(job.config, study, source=str(args.study))
        seeds = study_seeds(study, args.seeds, source=str(args.study))
    launch_training(job, configs, seeds, launch)
    return 0


if __name__ == "__main__":
    run_cli(main, interrupted_hint="finished seeds are saved; rerun the same command with --resume to "
                                   "continue (with a launcher: rerun the same command)")
