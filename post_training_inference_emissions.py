#!/usr/bin/env python3
"""Figures of CodeCarbon's measurements during the inference replay (post_training_inference.py):
duration, emissions, power and energy against inferences served and against time, mean ± std
across seeds, one line per configuration and kernel mode, one set of figures per device.

Example: python3 post_training_inference_emissions.py --arch_type fc1 --dataset mnist
"""
from __future__ import annotations

from utils import run_cli


def build_parser():
    from data.report.plot_cli import plot_parser

    return plot_parser(cycle=True, description="Plot the energy and CO2 of inference from post_training_inference.py's "
                       "per-pass CodeCarbon CSVs. Figures go to "
                       "PLOTS_DIR/ARCH/DATASET/inference_{cpu|gpu}_*.")


def main(argv: list[str] | None = None) -> int:
    from data.report.plot_cli import run_plot_script

    def draw(args, options):
        import archs.pruning  # noqa: F401  (registers the branches and prune types that labels and tables name)
        from data.energy.emissions_report import plot_inference_emissions   # numpy, matplotlib: after parsing

        return plot_inference_emissions(options)

    return run_plot_script(build_parser(), draw, argv)


if __name__ == "__main__":
    run_cli(main)
