#!/usr/bin/env python3
"""Is the break-even verdict stable? The worked example, rerun from scratch several times.

Each repetition trains pp90x2, pp68x3 and the dense baseline pp0x1 on the real digits with CO2
tracking (fresh save folder), replays the tickets with dense and sparse kernels, and runs the
break-even analysis. A verdict a researcher can trust never contradicts another repetition's:
no "after" against "never", no two 95% intervals that miss each other ("undetermined" in some
repetitions is what an honest interval near its boundary gives). Not a test: it prints figures.

Examples (2 cores): short runs, about 15 minutes, every verdict flagged too short; long
enough to measure, about 40 minutes:
    python3 -m tests.benchmarks.benchmark_verdict --repeats 3 --seeds 0 1 2 --epochs 5 --save_dir /tmp/verdict
    python3 -m tests.benchmarks.benchmark_verdict --repeats 3 --epochs 120 --passes 2 --sweeps_per_pass 15000 \
        --flush_denormal --save_dir /tmp/verdict
    python3 -m tests.benchmarks.benchmark_verdict --summarise --repeats 3 --save_dir /tmp/verdict
"""
from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path


from utils import cpu_model


def main() -> None:
    import torch

    import inference_emission
    import lottery_ticket
    import post_training_inference
    from utils import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--epochs", default="5")
    parser.add_argument("--passes", default="5")
    parser.add_argument("--sweeps_per_pass", default="40")
    parser.add_argument("--save_dir", type=Path, default=Path("/tmp/lottery_verdict"))
    parser.add_argument("--summarise", action="store_true",
                        help="only summarise the repeats already in SAVE_DIR (no training)")
    parser.add_argument("--flush_denormal", action="store_true",
                        help="train with --flush_denormal (see the README: denormals)")
    args = parser.parse_args()
    setup_logging().setLevel("WARNING")
    common = ["--arch_type", "fc1", "--dataset", "digits", "--lr", "1.2e-3", "--batch_size", "64",
              "--end_iter", args.epochs, "--seeds", *args.seeds, "--no_progress",
              "--co2_tracking_mode", "--country_iso_code", "FRA"]
    if args.flush_denormal:
        common.append("--flush_denormal")
    if args.summarise:
        summarise([read_verdicts(args.save_dir / f"repeat{r}") for r in range(args.repeats)])
        return
    verdicts = []
    for repeat in range(args.repeats):
        folder = args.save_dir / f"repeat{repeat}"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        for flags in (["--train_type", "regular"], ["--prune_percent", "90", "--prune_iterations", "2"],
                      ["--prune_percent", "68", "--prune_iterations", "3"]):
            assert lottery_ticket.main(common + flags + ["--save_dir", str(folder),
                                                         "--data_dir", str(folder / "data")]) == 0
        assert post_training_inference.main([
            "--arch_type", "fc1", "--dataset", "digits", "--save_dir", str(folder), "--mode", "both",
            "--passes", args.passes, "--sweeps_per_pass", args.sweeps_per_pass, "--threads", "2",
            "--country_iso_code", "FRA", "--no_progress"]) == 0
        assert inference_emission.main(["--arch_type", "fc1", "--dataset", "digits", "--save_dir",
                                        str(folder), "--plots_dir", str(folder / "plots")]) == 0
        verdicts.append(read_verdicts(folder))
        print(f"repeat {repeat}: {time.perf_counter() - started:.0f} s")
    print(f"\nCPU: {cpu_model()}, torch {torch.__version__}; fc1 on digits, {args.epochs} epochs per "
          f"cycle, seeds {' '.join(args.seeds)}, {args.passes} passes of {args.sweeps_per_pass} sweeps"
          + (", denormals flushed" if args.flush_denormal else ""))
    summarise(verdicts)


def read_verdicts(folder: Path) -> dict[str, tuple[str, float, float, bool]]:
    """Per ticket of one repeat: outcome, 95% interval of the break-even point, too short."""
    with open(folder / "plots" / "fc1" / "digits" / "break_even.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["outcome"] != "baseline"]
    return {r["config"]: (r["outcome"], float(r["break_even_low"] or "nan"),
                          float(r["break_even_high"] or "nan"), r["too_short"] == "True")
            for r in rows}


def summarise(verdicts: list[dict]) -> None:
    """Print each ticket's verdicts, then whether any two repeats contradict each other.

    Identical verdicts everywhere are not to be expected of an honest 95% interval near its
    boundary: one repeat may say "after N" and another "undetermined". What must never
    happen is a contradiction: two determined verdicts of different kinds ("after" and
    "never"), or two "after" verdicts whose 95% intervals do not overlap.
    """
    contradictions = []
    for config in sorted(verdicts[0]):
        cells = [f"{v[config][0]} [{v[config][1]:.3g}, {v[config][2]:.3g}]"
                 + (" (too short)" if v[config][3] else "") for v in verdicts]
        print(f"{config}: " + " | ".join(cells))
        determined = [v[config] for v in verdicts if v[config][0] != "undetermined"]
        if len({d[0] for d in determined}) > 1:
            contradictions.append(f"{config}: {' and '.join(sorted({d[0] for d in determined}))}")
        elif determined and max(d[1] for d in determined) > min(d[2] for d in determined):
            contradictions.append(f"{config}: intervals that do not overlap")
    identical = all(len({v[c][0] for v in verdicts}) == 1 for c in verdicts[0])
    print("same verdict in every repeat" if identical else "verdicts differ between repeats")
    print("no contradiction between repeats" if not contradictions
          else "CONTRADICTIONS: " + "; ".join(contradictions))


if __name__ == "__main__":
    main()
