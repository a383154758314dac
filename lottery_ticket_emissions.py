#!/usr/bin/env python3
"""Figures of CodeCarbon's measurements during training (runs made with --co2_tracking_mode):
duration, emissions, power and energy against images seen and against time, mean ± std
across seeds, one line per configuration.

Example: python3 lottery_ticket_emissions.py --arch_type fc1 --dataset mnist
"""
from __future__ import annotations

from utils import run_cli


def build_parser():
    from data.report.plot_cli import plot_parser

    parser = plot_parser("Plot the energy and CO2 of training from lottery_ticket.py's CO2-tracking "
                         "runs. Figures go to PLOTS_DIR/ARCH/DATASET/training_*.")
    return parser


def main(argv: list[str] | None = None) -> int:
    from data.report.plot_cli import run_plot_script

    def draw(args, options):
        import archs.pruning  # noqa: F401  (registers the branches and prune types that labels and tables name)
        from data.energy.emissions_report import plot_training_emissions   # numpy, matplotlib: after parsing

        return plot_training_emissions(options)

    return run_plot_script(build_parser(), draw, argv)


if __name__ == "__main__":
    run_cli(main)
