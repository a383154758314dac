"""Benchmark: the cost of one pruning round, layer-wise vs global, and of SNIP's scores.

Prints, for ResNet18 (CIFAR-10 shapes, 11.2 M prunable weights) and fc1, the median wall
time over repeats of: one layer-wise magnitude round, one global round, the random-mask
control, the reinitialisation control, and SNIP's scores on B batches of 64 random images.
Not a test (pytest does not collect it); run it directly:

    python3 -m tests.benchmarks.benchmark_pruning [--repeats R] [--batches B]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F


from archs import build_model
from archs.pruning import (PruningPlan, count_alive, full_masks, magnitude_scores,
                         random_masks, reinitialise_survivors, snip_scores)
from utils import format_table


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for arch, channels, size in (("fc1", 1, 28), ("resnet18", 3, 32)):
        torch.manual_seed(0)
        model = build_model(arch, channels, size, 10)
        masks = full_masks(model)
        weights = dict(model.named_parameters())
        scores = magnitude_scores(weights, masks)
        pruned = PruningPlan(20).prune(scores, masks, 1)
        batches = [(torch.randn(64, channels, size, size), torch.randint(0, 10, (64,)))
                   for _ in range(args.batches)]
        timings = {
            "layer-wise round": lambda: PruningPlan(20).prune(scores, masks, 1),
            "global round": lambda: PruningPlan(20, scope="global").prune(scores, masks, 1),
            "random masks": lambda: random_masks(pruned, masks, torch.Generator().manual_seed(0)),
            "reinitialise": lambda: reinitialise_survivors(model, pruned, torch.Generator().manual_seed(0)),
            f"SNIP, {args.batches} x 64 images": lambda: snip_scores(model, batches, F.cross_entropy),
        }
        for what, action in timings.items():
            rows.append((arch, f"{count_alive(masks)[1]:,}", what,
                         f"{median_seconds(action, args.repeats):.3f}"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; torch threads: {torch.get_num_threads()}; median of {args.repeats} repeats")
    print(format_table(["network", "prunable weights", "operation", "seconds"], rows))


if __name__ == "__main__":
    main()
