#!/usr/bin/env python3
"""Figures of CodeCarbon's measurements during training (runs made with --co2_tracking_mode):
duration, emissions, power and energy against images seen and against time, mean ± std
across seeds, one line per configuration.

Example: python3 lottery_ticket_emissions.py --arch_type fc1 --dataset mnist
"""
from __future__ import annotations

from utils import run_cli, setup_logging


def build_parser():
    from data.plot_cli import add_training_hyperparameter_arguments, plot_parser

    parser = plot_parser("Plot the energy and CO2 of training from lottery_ticket.py's CO2-tracking "
                         "runs. Figures go to PLOTS_DIR/ARCH/DATASET/training_*.")
    add_training_hyperparameter_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    from data.emissions_report import plot_training_emissions
    from data.plot_cli import PlotOptions, print_written
    from data.plotting import select_backend

    select_backend(args.show)
    print_written(plot_training_emissions(PlotOptions.from_args(args), args.lr, args.decay))
    return 0


if __name__ == "__main__":
    run_cli(main)
