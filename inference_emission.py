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
    from data.report.labels import BASELINE_CONFIG, MODE_PREFERENCE
    from data.report.plot_cli import plot_parser
    from data.selection import config_name_argument
    from utils import positive_float

    parser = plot_parser(cycle=True, description="Break-even analysis of training + inference CO2 against the dense "
                         "baseline, from lottery_ticket.py --co2_tracking_mode runs and "
                         "post_training_inference.py's inference_runs.csv.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                        help="use the inference replays run on this device")
    parser.add_argument("--mode", default=None, choices=list(MODE_PREFERENCE),
                        help="kernel mode of the tickets' replays (default: the first available of "
                             f"{', '.join(MODE_PREFERENCE)}); the baseline uses dense kernels, or "
                             "whichever mode it was replayed with")
    parser.add_argument("--baseline", default=BASELINE_CONFIG, type=config_name_argument,
                        metavar="ppPxN", help="the configuration every other is compared with")
    parser.add_argument("--max_inferences", type=positive_float, default=None, metavar="N",
                        help="end the figure's horizontal axis at N inferences (default: twice "
                             "the largest break-even point)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from data.report.plot_cli import run_plot_script

    def draw(args, options):
        from data.analysis.break_even_report import report_break_even   # numpy, matplotlib: after parsing

        return report_break_even(options, args.device, args.mode, args.baseline,
                                 args.max_inferences)

    return run_plot_script(build_parser(), draw, argv)

if __name__ == "__main__":
    run_cli(main)
