#!/usr/bin/env python3
"""Does the winning ticket beat its controls? fc1 on real handwritten digits (scikit-learn's).

Frankle & Carbin's LeNet-300-100 setting, scaled to the 1,797 UCI digits: 20% of each hidden
layer pruned per round, the output layer at half that rate, Adam at lr 1.2e-3, batch 64. For
each seed the dense baseline, the winning ticket (lt) and the two controls (random reinit,
random mask) are trained; the table gives test accuracy at the best validation epoch (mean ±
std over seeds) at the levels nearest 50, 20, 10, 5 and 3.5% of weights left, then the ticket
minus each control with a Student-t 95% interval of the per-seed difference.

Not a test: it prints figures. Example (about 10 minutes on 2 cores):
    python3 -m tests.benchmarks.benchmark_controls --seeds 0 1 2 --epochs 30 --save_dir /tmp/controls
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


LEVELS = (50.0, 20.0, 10.0, 5.0, 3.5)


def main() -> None:
    import torch

    from archs.experiment import TrainingJob, run_job
    from data.performance_report import control_comparison_rows, control_comparison_table
    from data.results import load_training_runs
    from data.runs import RunConfig
    from data.selection import RunFilter
    from utils import cpu_model, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per cycle")
    parser.add_argument("--cycles", type=int, default=16, help="16 cycles: 3.5%% of hidden weights left")
    parser.add_argument("--save_dir", type=Path, default=Path("/tmp/lottery_controls"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging().setLevel("WARNING")   # the per-epoch tables of five dozen cycles are noise here

    common = dict(arch_type="fc1", dataset="digits", lr=1.2e-3, batch_size=64, end_iter=args.epochs)
    configs = [RunConfig(train_type="regular", **common)] + [
        RunConfig(prune_percent=20.0, prune_iterations=args.cycles, output_prune_percent=10.0,
                  prune_type=kind, **common) for kind in ("lt", "reinit", "random")]
    started = time.perf_counter()
    for config in configs:
        run_job(TrainingJob(config=config, seeds=list(args.seeds), save_dir=args.save_dir,
                            data_dir=args.save_dir / "data", device="cpu", resume=True,
                            show_progress=False, checkpoint_every=1000, cycle_weights="none"))
    runs = load_training_runs(args.save_dir, "fc1", "digits", RunFilter(seeds=tuple(args.seeds)))
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"trained in {time.perf_counter() - started:.0f} s")
    print(f"fc1 on digits (1,258 training images), {args.epochs} epochs per cycle, seeds "
          f"{' '.join(map(str, args.seeds))}; test accuracy at the best validation epoch\n")

    dense = [r.cycles[0]["test_accuracy_at_best"] for r in runs if r.config.is_dense_baseline]
    by_type = {kind: [r for r in runs if not r.config.is_dense_baseline and r.config.prune_type == kind]
               for kind in ("lt", "reinit", "random")}
    print(f"dense baseline: {np.mean(dense):.2f} ± {np.std(dense, ddof=1):.2f} %")
    lt_runs = by_type["lt"]
    left = np.mean([[c["percent_remaining"] for c in r.cycles] for r in lt_runs], axis=0)
    print(f"{'% weights left':>15} {'winning ticket':>16} {'random reinit':>16} {'random mask':>16}")
    for cycle in sorted({int(np.argmin(np.abs(left - level))) for level in LEVELS}):
        cells = []
        for kind in ("lt", "reinit", "random"):
            values = [r.cycles[cycle]["test_accuracy_at_best"] for r in by_type[kind]]
            cells.append(f"{np.mean(values):6.2f} ± {np.std(values, ddof=1):4.2f}")
        print(f"{left[cycle]:15.3g} " + " ".join(f"{c:>16}" for c in cells))

    comparison = [row for row in control_comparison_rows(runs)
                  if any(abs(row["percent_remaining"] - left[int(np.argmin(np.abs(left - level)))]) < 1e-6
                         for level in LEVELS)]
    print("\nticket minus control (percentage points):")
    print(control_comparison_table(comparison))

    dense_mean = float(np.mean(dense))
    for cycle, fraction in enumerate(left):
        ticket = np.mean([r.cycles[cycle]["test_accuracy_at_best"] for r in lt_runs])
        if ticket < dense_mean - 1.0:
            print(f"\nThe winning ticket first falls more than 1 point below dense at {fraction:.3g}% of "
                  f"weights left (cycle {cycle}: {ticket:.2f}% against {dense_mean:.2f}%).")
            break
    else:
        print(f"\nThe winning ticket stays within 1 point of dense down to {left[-1]:.3g}% of weights.")


if __name__ == "__main__":
    main()
