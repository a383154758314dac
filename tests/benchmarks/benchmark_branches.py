#!/usr/bin/env python3
"""Why does a ticket win? Its controls and analyses as branches, fc1 on scikit-learn's digits.

Frankle & Carbin's LeNet-300-100 setting scaled to the 1,797 UCI digits: 20% of each layer
pruned per round, output layer at 10%, Adam lr 1.2e-3, batch 64, 8 epochs per cycle, 16
levels. For each seed and scope (layer, global): the dense baseline, the ticket run, and
its branches: ``reinit`` and ``random_mask`` (the controls), ``lr_rewind`` (Renda et al.
2020) and ``lmc`` (linear mode connectivity, Frankle et al. 2020) for rewinding to init and
to iteration 100. Prints test accuracy at the best validation epoch, each difference paired
by seed with a Student-t 95% interval, the LMC instability, and the cycles each way trains.

Not a test: it prints figures. Runs already finished under --save_dir are reused.
    python3 -m tests.benchmarks.benchmark_branches --save_dir /tmp/branches --threads 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

BASE = dict(arch_type="fc1", dataset="digits", prune_percent=20.0, output_prune_percent=10.0, lr=1.2e-3,
            batch_size=64)


def main() -> None:
    import torch

    from archs.experiment import TrainingJob, run_job
    from data.report.performance_report import by_level, control_comparison_rows, control_comparison_table
    from data.results import load_training_runs
    from data.runs import RunConfig
    from data.selection import RunFilter
    from data.analysis.statistics import paired_difference
    from utils import format_table, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=16)
    parser.add_argument("--scopes", nargs="+", default=["layer", "global"])
    parser.add_argument("--levels", type=int, nargs="*", default=None,
                        help="levels of the reinit/random_mask/lr_rewind branches (default: every pruned one)")
    parser.add_argument("--lmc_levels", type=int, nargs="*", default=[0, 5, 10, 15])
    parser.add_argument("--lmc_rewinds", nargs="*", default=["init", "100it"])
    parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out: controls lmc lr_rewind")
    parser.add_argument("--save_dir", type=Path, default=Path("/tmp/lottery_branches"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = tuple(args.levels) if args.levels else ()

    def train(**settings) -> None:
        config = RunConfig(**{**BASE, "end_iter": args.epochs, "prune_iterations": args.cycles, **settings})
        job = TrainingJob(config=config, seeds=list(args.seeds), save_dir=args.save_dir, device="cpu",
                          resume=True, show_progress=False)
        run_job(job)

    started = time.perf_counter()
    train(train_type="regular")
    for scope in args.scopes:
        train(prune_scope=scope)
        if "controls" not in args.skip:
            for branch in ("reinit", "random_mask"):
                train(prune_scope=scope, branch=branch, branch_levels=levels)
    if "lr_rewind" not in args.skip:
        train(branch="lr_rewind", branch_levels=levels)
    if "lmc" not in args.skip:
        for rewind in args.lmc_rewinds:
            if rewind != "init":
                train(rewind_to=rewind)
            train(rewind_to=rewind, branch="lmc", branch_levels=tuple(args.lmc_levels))
    minutes = (time.perf_counter() - started) / 60

    runs = load_training_runs(args.save_dir, "fc1", "digits")
    runs = [r for r in runs if r.config.seed in args.seeds and r.config.end_iter == args.epochs]
    print(f"\nfc1 on digits, {len(args.seeds)} seeds, {args.epochs} epochs per cycle; this invocation "
          f"trained for {minutes:.1f} min")

    dense = {r.config.seed: r.cycles[-1]["test_accuracy_at_best"] for r in runs if r.config.is_dense_baseline}
    for scope in args.scopes:
        family = [r for r in runs if r.config.prune_scope == scope and r.config.rewind_to == "init"
                  and not r.config.is_dense_baseline and r.config.branch in ("", "reinit", "random_mask")]
        rows = control_comparison_rows(family)
        print(f"\n== {scope} pruning: ticket minus control (paired by seed, Student-t 95% interval)")
        print(control_comparison_table(rows))
        tickets = {r.config.seed: by_level(r) for r in family if not r.config.branch}
        seeds = sorted(set(tickets) & set(dense))
        if seeds:
            table = []
            for level in sorted(tickets[seeds[0]]):
                d = paired_difference([tickets[s][level]["test_accuracy_at_best"] for s in seeds],
                                      [dense[s] for s in seeds])
                table.append((level, f"{tickets[seeds[0]][level]['percent_remaining']:.3g}",
                              f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"))
            print(f"\n== {scope} pruning: ticket minus dense (paired by seed, 95% interval)")
            print(format_table(["level", "% left", "ticket - dense"], table))

    lr = [r for r in runs if r.config.branch == "lr_rewind"]
    if lr:
        tickets = {r.config.seed: by_level(r) for r in runs if not r.config.branch and r.config.prune_scope == "layer"
                   and r.config.rewind_to == "init" and not r.config.is_dense_baseline}
        rewound = {r.config.seed: by_level(r) for r in lr}
        seeds = sorted(set(tickets) & set(rewound))
        table = []
        for level in sorted(set.intersection(*(set(rewound[s]) for s in seeds))):
            d = paired_difference([rewound[s][level]["test_accuracy_at_best"] for s in seeds],
                                  [tickets[s][level]["test_accuracy_at_best"] for s in seeds])
            table.append((level, f"{rewound[seeds[0]][level]['percent_remaining']:.3g}",
                          f"{np.mean([rewound[s][level]['test_accuracy_at_best'] for s in seeds]):.2f}",
                          f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"))
        print("\n== learning-rate rewinding minus weight rewinding (layer pruning; paired, 95% interval)")
        print(format_table(["level", "% left", "lr_rewind acc %", "lr_rewind - ticket"], table))

    lmc = [r for r in runs if r.config.branch == "lmc"]
    if lmc:
        table = []
        for rewind in args.lmc_rewinds:
            members = [r for r in lmc if r.config.rewind_to == rewind]
            by_level_values: dict[int, list] = {}
            for r in members:
                for entry in r.branch_levels:
                    by_level_values.setdefault(entry["level"], []).append(entry)
            for level, entries in sorted(by_level_values.items()):
                values = [e["instability"] for e in entries]
                table.append((rewind, level, f"{entries[0]['percent_remaining']:.3g}", len(values),
                              f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}",
                              f"{np.mean([min(e['test_errors'][0], e['test_errors'][-1]) for e in entries]):.2f}"))
        print("\n== linear mode connectivity: instability (max test error on the path - mean of its ends, "
              "percentage points; mean ± std over seeds)")
        print(format_table(["rewind", "level", "% left", "seeds", "instability", "end error %"], table))

    n_levels = args.cycles - 1
    print(f"\n== cycles trained per seed for a control at every one of the {n_levels} pruned levels: "
          f"branch {n_levels}; a separate full run per level {sum(k + 1 for k in range(1, args.cycles))}; "
          f"an iterative --prune_type run {args.cycles} (but with its own masks, not the ticket's)")


if __name__ == "__main__":
    main()
