#!/usr/bin/env python3
"""The study's conclusion: does a winning ticket pay back the extra CO2 of finding it?

For each pruned configuration: total CO2 = training CO2 (CO2-tracking training runs) + CO2 per
inference (inference replay) x inferences served, against the dense baseline; the break-even
number of inferences with its range; and a Welch t-test of the per-inference CO2 against the
baseline. Prints a table, writes PLOTS_DIR/ARCH/DATASET/break_even.csv and a figure.

Example: python3 inference_emission.py --arch_type fc1 --dataset mnist --device cpu
"""
from __future__ import annotations

from utils import run_cli


def build_parser():
    from data.report.plot_cli import BreakEvenOptions, plot_parser
    from data.settings import add_field_arguments, flagged

    parser = plot_parser(cycle=True, description="Break-even analysis of training + inference CO2 against the dense "
                         "baseline, from lottery_ticket.py --co2_tracking_mode runs and "
                         "post_training_inference.py's inference_runs.csv.")
    add_field_arguments(parser, flagged(BreakEvenOptions))
    return parser


def main(argv: list[str] | None = None) -> int:
    from data.report.plot_cli import run_plot_script

    def draw(args, options):
        import archs.pruning  # noqa: F401  (registers the branches and prune types that labels and tables name)
        from data.analysis.break_even_report import report_break_even   # numpy, matplotlib: after parsing
        from data.report.plot_cli import BreakEvenOptions
        from data.settings import flagged, values_from_args

        return report_break_even(options, **values_from_args(flagged(BreakEvenOptions), args))

    return run_plot_script(build_parser(), draw, argv)

if __name__ == "__main__":
    run_cli(main)
