#!/usr/bin/env python3
"""Find winning tickets by iterative magnitude pruning with rewinding; optionally track CO2.

Example: python3 lottery_ticket.py --arch_type=fc1 --dataset=mnist --prune_percent=90 --prune_iterations=2
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils import (ArgumentParser, add_tracker_arguments, non_negative_float, percent, positive_float,
                   positive_int, run_cli, setup_logging)


def build_parser() -> argparse.ArgumentParser:
    from archs import architecture_names
    from data.datasets import DATASETS
    from data.runs import RunConfig

    defaults = RunConfig()
    parser = ArgumentParser(
        description="Lottery Ticket Hypothesis (Frankle & Carbin, 2019): train, prune the smallest "
                    "weights, rewind the survivors to their initial values, train again; with "
                    "optional CodeCarbon energy and CO2 tracking. One full run per seed; results "
                    "go to SAVE_DIR/ARCH/DATASET/ppPxN_seedS_co2BOOL_DATASET.pt.")
    parser.add_argument("--arch_type", default=defaults.arch_type,
                        choices=architecture_names(include_aliases=True),
                        help="network (lenet300_100 is another name for fc1; see the README for each "
                             "layout); add your own with @register_model in a file under archs/models/")
    parser.add_argument("--dataset", default=defaults.dataset, choices=list(DATASETS),
                        help="dataset; the official train and test sets are merged and split "
                             "70/15/15 into train/validation/test with the run's seed")
    parser.add_argument("--prune_percent", type=percent, default=defaults.prune_percent,
                        help="percent of the surviving weights of each layer pruned before each "
                             "cycle after the first, in [0, 100)")
    parser.add_argument("--prune_iterations", type=positive_int, default=defaults.prune_iterations,
                        help="number of training cycles; 1 = no pruning, N = N-1 pruning rounds")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help="Adam learning rate")
    parser.add_argument("--decay", type=non_negative_float, default=defaults.decay,
                        help="Adam weight decay (L2 penalty)")
    parser.add_argument("--batch_size", type=positive_int, default=defaults.batch_size,
                        help="training mini-batch size")
    parser.add_argument("--end_iter", "--end_epoch", dest="end_iter", type=positive_int,
                        default=defaults.end_iter, help="epochs of training in each cycle")
    parser.add_argument("--print_freq", type=positive_int, default=defaults.print_freq,
                        help="update the progress bar's metrics every this many epochs")
    parser.add_argument("--valid_freq", type=positive_int, default=defaults.valid_freq,
                        help="evaluate validation and test sets (or, with --co2_tracking_mode, "
                             "flush the CO2 tracker) every this many epochs, and at each cycle's end")
    parser.add_argument("--train_type", default=defaults.train_type, choices=["lt", "regular"],
                        help="lt: lottery ticket; regular: dense baseline (forces --prune_percent 0 "
                             "--prune_iterations 1)")
    parser.add_argument("--co2_tracking_mode", action="store_true",
                        help="track energy and CO2 with CodeCarbon; skips all evaluation during "
                             "training so that it stays out of the energy figures")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], metavar="SEED",
                        help="one full run per seed (initialisation, data split and batch order)")
    parser.add_argument("--data_dir", type=Path, default=Path("data"),
                        help="where torchvision downloads or finds the datasets")
    parser.add_argument("--save_dir", type=Path, default=Path("saves"),
                        help="where results, checkpoints and CodeCarbon CSVs are written")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto uses CUDA when available")
    parser.add_argument("--resume", action="store_true",
                        help="skip seeds already finished and continue an interrupted seed from "
                             "its last epoch checkpoint")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    add_tracker_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    from archs import canonical_arch
    from archs.experiment import TrainingJob, run_job
    from data.emissions import TrackerSettings
    from data.runs import RunConfig

    config = RunConfig(arch_type=canonical_arch(args.arch_type), dataset=args.dataset,
                       prune_percent=args.prune_percent, prune_iterations=args.prune_iterations, lr=args.lr, decay=args.decay,
                       batch_size=args.batch_size, end_iter=args.end_iter, print_freq=args.print_freq,
                       valid_freq=args.valid_freq, train_type=args.train_type,
                       co2_tracking_mode=args.co2_tracking_mode)
    job = TrainingJob(config=config, seeds=args.seeds, data_dir=args.data_dir, save_dir=args.save_dir,
                      device=args.device, resume=args.resume, show_progress=not args.no_progress,
                      tracker=TrackerSettings(country_iso_code=args.country_iso_code,
                                              measure_power_secs=args.measure_power_secs))
    run_job(job)
    return 0


if __name__ == "__main__":
    run_cli(main, interrupted_hint="finished seeds are saved; rerun the same command with --resume to continue")
