"""Benchmark: is a pruned fc1 cheaper to run? Dense vs COO (the original) vs CSR kernels.

Prints the CPU model and, for fc1 at each batch size, seconds per 10,000 images for each
kernel at several sparsities with the speed-up over dense measured in the same run, and
the kernels "auto" chose per layer. Not a test (pytest does not collect it); run it:

    python3 -m tests.benchmarks.benchmark_inference [--batch_sizes 1 64 512] [--threads N]
    python3 -m tests.benchmarks.benchmark_inference --crossover [--batch_sizes B]

Kernels: dense (the model as is), coo (the original program), torch_csr (torch's CSR
kernel on every pruned layer), numba_csr (numba's per-layer kernel on every pruned layer),
numba_tiled ("sparse" mode: the whole chain in numba's tiled kernel) and auto (kernels and
chains timed on this machine, at this batch size, before the benchmark starts; no cached
timings unless --timing_cache is given).

Each sparsity prunes every layer of a freshly initialised fc1 to exactly that fraction by
weight magnitude (random weights, so the masks are random), as pruning does layer-wise.
Every kernel at every sparsity takes its turn within each repeat, in a fresh random order
(one batch each), so a burst of load from other processes hits them alike; the median
over repeats is reported.

``--crossover`` instead times single layers of fc1's and LeNet5's shapes, dense against
each CSR kernel inside a chain (activations already feature-major), over a range of
sparsities.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path
from typing import Callable, Hashable

import torch

from archs import build_model
from archs.pruning import apply_masks, full_masks, prune_by_magnitude
from archs.sparse.timing import KernelTimingCache, device_description
from archs.sparse import (DenseTransposedLinear, NumbaCsrLinear, SparseLinear,
                          compare_outputs, contiguous, sparsify)
from utils import format_table, positive_int, run_cli
from utils import percent as percent_argument

# column name -> sparsify mode
KERNELS = {"dense": "dense", "coo": "coo", "torch_csr": "torch_csr", "numba_csr": "numba_csr",
           "numba_tiled": "sparse", "auto": "auto"}
KERNEL_LETTERS = {"dense": "D", "numba_csr": "N", "numba_tiled": "F", "torch_csr": "T"}
SPARSITIES = (0, 50, 80, 90, 95, 97, 99)
IMAGES = 10_000
# (in_features, out_features) of the linear layers of fc1 and LeNet5 (MNIST)
CROSSOVER_SHAPES = ((784, 300), (300, 100), (100, 10), (12544, 256), (256, 256))
CROSSOVER_SPARSITIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def pruned_fc1(percent: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("fc1", in_channels=1, image_size=28, num_classes=10).eval()
    if percent > 0:
        masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), percent)
        apply_masks(model, masks)
    return model


def time_interleaved(runs: dict[Hashable, Callable[[torch.Tensor], object]], batch: torch.Tensor,
                     repeats: int, warmup: int, statistic: str = "median") -> dict[Hashable, float]:
    """Median (or best, ``statistic="min"``) seconds per batch of each run, in steady state.

    Every run (each mode at each sparsity) takes its turn within each repeat, in random
    order: on a shared machine load from other processes comes in bursts of seconds, and
    a burst then slows every run alike. Each turn times the second of two batches: the
    first finds the caches and heap as the previous run (e.g. the memory-hungry COO) left
    them, which consecutive batches of one model never do.
    """
    keys = list(runs)
    samples: dict[Hashable, list[float]] = {key: [] for key in keys}
    with torch.inference_mode():
        for run in runs.values():
            for _ in range(warmup):
                run(batch)
        order = random.Random(0)
        for _ in range(repeats):
            # a fresh order each repeat: a run right after a slow, memory-hungry one (COO)
            # finds cold caches and a trimmed heap, and no run should always be that one
            order.shuffle(keys)
            for key in keys:
                runs[key](batch)    # untimed: the timed batch then runs in steady state
                start = time.perf_counter()
                runs[key](batch)
                samples[key].append(time.perf_counter() - start)
    summary = min if statistic == "min" else statistics.median
    return {key: summary(times) for key, times in samples.items()}


def crossover_rows(in_features: int, out_features: int, batch_size: int, repeats: int,
                   warmup: int) -> list[list[str]]:
    """Dense time / CSR time of one ReLU layer inside a chain at each of CROSSOVER_SPARSITIES:
    one row per CSR kernel (torch's, numba's)."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, in_features, generator=generator)
    feature_major = contiguous(inputs.t())
    bias = torch.randn(out_features, generator=generator)
    runs = {}
    for sparsity in CROSSOVER_SPARSITIES:
        weight = torch.randn(out_features, in_features, generator=generator)
        weight *= torch.rand(weight.shape, generator=generator) >= sparsity
        for kernel, layer in (("dense", DenseTransposedLinear(weight, bias, relu=True)),
                              ("torch_csr", SparseLinear(weight, bias, relu=True)),
                              ("numba_csr", NumbaCsrLinear(weight, bias, relu=True))):
            runs[sparsity, kernel] = lambda x, layer=layer: layer(feature_major)
    seconds = time_interleaved(runs, inputs, repeats, warmup)
    name = f"{in_features}->{out_features}"
    return [[f"{name} {kernel}"] + [f"{seconds[s, 'dense'] / seconds[s, kernel]:.2f}"
                                    for s in CROSSOVER_SPARSITIES]
            for kernel in ("torch_csr", "numba_csr")]


def crossover(args: argparse.Namespace) -> None:
    for batch_size in args.batch_sizes:
        print(f"dense time / CSR time per layer inside a chain (> 1: sparse faster), batch "
              f"{batch_size}, {args.threads} thread(s), median of {args.crossover_repeats}; "
              f"load average before: {os.getloadavg()[0]:.2f}")
        rows = [row for i, o in CROSSOVER_SHAPES
                for row in crossover_rows(i, o, batch_size, args.crossover_repeats, args.warmup)]
        print(format_table(["layer, kernel"] + [f"{s:.0%}" for s in CROSSOVER_SPARSITIES], rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[1, 64, 512],
                        metavar="B", help="images per batch; one table per batch size")
    parser.add_argument("--repeats", type=positive_int, default=101,
                        help="timed batches per mode and sparsity; the median is reported")
    parser.add_argument("--warmup", type=positive_int, default=5,
                        help="untimed batches per mode first")
    parser.add_argument("--sparsities", type=percent_argument, nargs="+", default=SPARSITIES,
                        metavar="PERCENT", help="percent of each layer's weights pruned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crossover", action="store_true",
                        help="time single layers dense vs CSR across sparsities instead")
    parser.add_argument("--crossover_repeats", type=positive_int, default=21)
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="median over repeats, or the best (on a machine so loaded that "
                             "most batches are descheduled, the median measures the load)")
    parser.add_argument("--timing_cache", type=Path, default=None,
                        help="kernel timing cache for auto (default: none, auto times afresh)")
    return parser.parse_args()


def benchmark(args: argparse.Namespace, batch_size: int) -> None:
    batch = torch.randn(batch_size, 1, 28, 28)
    per_images = IMAGES / batch_size
    cache = None if args.timing_cache is None else KernelTimingCache(args.timing_cache)
    print(f"\nfc1, batch {batch_size}, {args.threads} thread(s), {args.statistic} of {args.repeats}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    runs, auto_kernels, errors = {}, {}, {}
    for percent in args.sparsities:
        model = pruned_fc1(percent, args.seed)
        for kernel, mode in KERNELS.items():
            if mode == "dense":
                runs[percent, kernel] = model
                continue
            extra = dict(example_input=batch, timing_cache=cache) if mode == "auto" else {}
            runs[percent, kernel], choices = sparsify(model, mode, **extra)
            if mode == "auto":
                auto_kernels[percent] = "".join(KERNEL_LETTERS[c.kernel] for c in choices)
        errors[percent] = max(compare_outputs(model, runs[percent, kernel], batch).relative_error
                              for kernel in KERNELS)
    seconds = {key: s * per_images for key, s in
               time_interleaved(runs, batch, args.repeats, args.warmup, args.statistic).items()}
    rows = []
    for percent in args.sparsities:
        dense = seconds[percent, "dense"]
        row = [f"{percent:g}%", f"{dense:.4f}"]
        for kernel in list(KERNELS)[1:]:
            row.append(f"{seconds[percent, kernel]:.4f} ({dense / seconds[percent, kernel]:.2f}x)")
        rows.append(row + [auto_kernels[percent], f"{errors[percent]:.1e}"])
    print(format_table(["sparsity", "dense s"] + [f"{kernel} s (vs dense)" for kernel in list(KERNELS)[1:]]
                       + ["auto kernels", "max rel err"], rows))
    print(f"seconds per {IMAGES} images; auto kernels per layer: D = dense, N = numba_csr, "
          f"F = numba_tiled, T = torch_csr; load average after: {os.getloadavg()[0]:.2f}")


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {device_description(torch.device('cpu'))}; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    if args.crossover:
        crossover(args)
        return 0
    for batch_size in args.batch_sizes:
        benchmark(args, batch_size)
    return 0


if __name__ == "__main__":
    run_cli(main)
