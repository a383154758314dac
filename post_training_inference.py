#!/usr/bin/env python3
"""Replay saved tickets over their test split and measure inference time, energy and CO2.

Example: python3 post_training_inference.py --arch_type fc1 --dataset mnist --mode both
"""
from __future__ import annotations

import argparse

from utils import ArgumentParser, run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    from archs.launch.settings import add_launcher_arguments
    from data.energy.emissions import add_tracker_arguments
    from data.jobs import InferenceJob, ReplayCommand
    from data.selection import add_selection_arguments
    from data.settings import add_field_arguments, flagged
    from lottery_ticket import registry_choices

    parser = ArgumentParser(
        description="Load the tickets saved by lottery_ticket.py (SAVE_DIR/ARCH/DATASET/*.pt), replay "
                    "each over its own test split PASSES times under a CodeCarbon tracker flushed "
                    "after every pass, and compare dense with sparse kernels. Writes one CodeCarbon "
                    "CSV per run, mode and state, inference_runs.csv and inference_summary.csv under "
                    "SAVE_DIR/ARCH/DATASET/inference/.")
    # In the order --help has always listed them: which runs, how to replay them, then switches.
    job = {f.name: f for f in flagged(InferenceJob)}
    add_field_arguments(parser, [job.pop(name) for name in ("arch", "dataset", "save_dir", "data_dir")],
                        choices={"arch": registry_choices()["arch_type"]})
    add_selection_arguments(parser)
    switches = [job.pop(name) for name in ("wait", "show_progress")]
    add_field_arguments(parser, [*job.values(), *flagged(ReplayCommand), *switches])
    add_tracker_arguments(parser)
    add_launcher_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lottery_ticket import refuse_unknown_dataset

    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_unknown_dataset(parser, args.dataset)
    setup_logging()

    from archs import canonical_arch
    from archs.inference import InferenceJob, evaluate_tickets
    from archs.launch.orchestration import launch_replay
    from archs.launch.settings import launch_settings_from_args
    from data.energy.emissions import tracker_settings_from_args
    from data.selection import RunFilter
    from data.settings import flagged, values_from_args

    launch = launch_settings_from_args(args, args.save_dir)
    values = values_from_args(flagged(InferenceJob), args)
    job = InferenceJob(**{**values, "arch": canonical_arch(args.arch_type)}, run_filter=RunFilter.from_args(args),
                       cycle=args.cycle, tracker=tracker_settings_from_args(args))
    if args.evaluate_only:
        evaluate_tickets(job)
    else:
        launch_replay(job, launch)
    return 0


if __name__ == "__main__":
    run_cli(main)
