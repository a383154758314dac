#!/usr/bin/env python3
"""Figures of the training runs: loss, accuracy and weights left against images seen and time,
and the Lottery-Ticket figure (test accuracy against weights left), mean ± std across seeds.

Example: python3 lottery_ticket_performance.py --arch_type fc1 --dataset mnist
"""
from __future__ import annotations

from utils import run_cli


def build_parser():
    from data.report.plot_cli import PerformanceOptions, plot_parser
    from data.settings import add_field_arguments, flagged

    parser = plot_parser("Plot training performance from lottery_ticket.py's results "
                         "(runs made without --co2_tracking_mode). Figures go to "
                         "PLOTS_DIR/ARCH/DATASET/.")
    add_field_arguments(parser, flagged(PerformanceOptions))
    return parser


def main(argv: list[str] | None = None) -> int:
    from data.report.plot_cli import run_plot_script

    def draw(args, options):
        import archs.pruning  # noqa: F401  (registers the branches and prune types that labels and tables name)
        from data.report.performance_report import plot_hyperparameters, plot_performance   # after parsing

        if args.perf_type == "hyperparameter":
            return plot_hyperparameters(options)
        return plot_performance(options)

    return run_plot_script(build_parser(), draw, argv)


if __name__ == "__main__":
    run_cli(main)
