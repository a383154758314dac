#!/usr/bin/env python3
"""Replay saved tickets over their test split and measure inference time, energy and CO2.

Example: python3 post_training_inference.py --arch_type fc1 --dataset mnist --mode both
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils import ArgumentParser, add_tracker_arguments, positive_int, run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    from data.jobs import InferenceJob
    from archs.launch.settings import add_launcher_arguments
    from data.report.inference_tables import STATES
    from lottery_ticket import registry_choices
    from data.settings import REPLAY_MODES
    from data.selection import add_selection_arguments

    parser = ArgumentParser(
        description="Load the tickets saved by lottery_ticket.py (SAVE_DIR/ARCH/DATASET/*.pt), replay "
                    "each over its own test split PASSES times under a CodeCarbon tracker flushed "
                    "after every pass, and compare dense with sparse kernels. Writes one CodeCarbon "
                    "CSV per run, mode and state, inference_runs.csv and inference_summary.csv under "
                    "SAVE_DIR/ARCH/DATASET/inference/.")
    parser.add_argument("--arch_type", default=InferenceJob.arch,
                        choices=registry_choices()["arch_type"], help="network of the runs")
    parser.add_argument("--dataset", default=InferenceJob.dataset,
                        help="dataset of the runs (mnist, digits, cifar10...)")
    parser.add_argument("--save_dir", type=Path, default=InferenceJob.save_dir,
                        help="where lottery_ticket.py saved them")
    parser.add_argument("--data_dir", type=Path, default=InferenceJob.data_dir,
                        help="dataset folder (default: the one each run was trained with)")
    add_selection_arguments(parser)
    parser.add_argument("--state", default=InferenceJob.state, choices=list(STATES),
                        help="weights to replay: the end of the cycle, or its best validation state")
    parser.add_argument("--mode", default=InferenceJob.mode, choices=list(REPLAY_MODES),
                        help="kernels: dense (ordinary forward), sparse (the project's CSR kernel for "
                             "the linear layers from the first pruned one on, its sparse "
                             "convolution for pruned convolutions), auto (dense or "
                             "sparse, whichever was timed faster on this machine; never kept unless "
                             "1.2x faster than dense), both (dense then sparse, for the speed-up). "
                             "Denormal floats are always flushed to zero (see the README)")
    parser.add_argument("--kernel_cache", type=Path, default=InferenceJob.kernel_cache, metavar="FILE",
                        help="where auto keeps the kernel timings it measured on this machine "
                             "(default: ~/.cache/lottery_ticket/kernel_timings.json, or under "
                             "$XDG_CACHE_HOME); delete it to time afresh")
    parser.add_argument("--passes", type=positive_int, default=InferenceJob.passes,
                        help="passes over the test split")
    parser.add_argument("--sweeps_per_pass", type=positive_int, default=InferenceJob.sweeps_per_pass,
                        help="times each pass classifies the whole test split; raise it until a pass "
                             "lasts several of CodeCarbon's power samples (the script says when)")
    parser.add_argument("--batch_size", type=positive_int, default=InferenceJob.batch_size,
                        help="images per forward call")
    parser.add_argument("--device", default=InferenceJob.device, choices=["auto", "cpu", "cuda"],
                        help="where to run")
    parser.add_argument("--threads", type=positive_int, default=InferenceJob.threads,
                        help="CPU threads torch may use (pin it: energy per image depends on it)")
    parser.add_argument("--evaluate_only", action="store_true",
                        help="only print each selected ticket's fraction of pruned weights (per layer "
                             "and overall) and its test accuracy on the run's own test split; no "
                             "timing, no CodeCarbon, no tables written")
    parser.add_argument("--wait", action="store_true",
                        help="when another replay of these runs' folder is measuring on this "
                             "device, wait for it to end (default: refuse, in one line)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    add_tracker_arguments(parser)
    add_launcher_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()

    from archs import canonical_arch
    from archs.inference import InferenceJob, evaluate_tickets
    from archs.launch.orchestration import launch_replay
    from archs.launch.settings import launch_settings_from_args
    from data.energy.emissions import tracker_settings_from_args
    from data.datasets import DATASETS
    from data.selection import RunFilter

    if args.dataset not in DATASETS:   # registered on import (torch), so checked after parsing
        parser.error(f"argument --dataset: invalid choice: {args.dataset!r} (choose from "
                     f"{', '.join(map(repr, DATASETS))})")
    launch = launch_settings_from_args(args, args.save_dir)
    job = InferenceJob(
        arch=canonical_arch(args.arch_type), dataset=args.dataset, save_dir=args.save_dir,
        data_dir=args.data_dir,
        run_filter=RunFilter.from_args(args), cycle=args.cycle, state=args.state, passes=args.passes,
        sweeps_per_pass=args.sweeps_per_pass, device=args.device, batch_size=args.batch_size,
        threads=args.threads, mode=args.mode, kernel_cache=args.kernel_cache,
        show_progress=not args.no_progress, wait=args.wait,
        tracker=tracker_settings_from_args(args))
    if args.evaluate_only:
        evaluate_tickets(job)
    else:
        launch_replay(job, launch)
    return 0


if __name__ == "__main__":
    run_cli(main)
