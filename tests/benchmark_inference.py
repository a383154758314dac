"""Benchmark: is a pruned fc1 cheaper to run? Dense vs COO (the original) vs CSR kernels.

Prints, for fc1 at one batch size on the CPU, seconds per 10,000 images for each kernel
mode at several sparsities, with the speed-up over dense. Not a test (pytest does not
collect it); run it directly:

    /work/venv/bin/python tests/benchmark_inference.py [--threads N] [--repeats R]
    /work/venv/bin/python tests/benchmark_inference.py --crossover [--batch_size B]

Each sparsity prunes every layer of a freshly initialised fc1 to exactly that fraction by
weight magnitude (random weights, so the masks are random), as pruning does layer-wise.
Every mode at every sparsity takes its turn within each repeat (one batch each), so a
burst of load from other processes hits them alike; the median over repeats is reported.

``--crossover`` instead times single layers of fc1's and LeNet5's shapes, dense against
the CSR kernel, inside a chain and alone (paying both transposes), over a range of
sparsities: the measurement behind the thresholds of ``archs.sparse``.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Hashable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from archs import build_model  # noqa: E402
from archs.masks import apply_masks, full_masks, prune_by_magnitude  # noqa: E402
from archs.sparse import (DenseTransposedLinear, SparseLinear, compare_outputs,  # noqa: E402
                          contiguous, sparsify)
from utils import format_table, positive_int, run_cli
from utils import percent as percent_argument  # noqa: E402

MODES = ("dense", "coo", "sparse", "auto")
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
                     repeats: int, warmup: int) -> dict[Hashable, float]:
    """Median seconds per batch of each run, in steady state.

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
    return {key: statistics.median(times) for key, times in samples.items()}


def crossover_rows(in_features: int, out_features: int, batch_size: int, repeats: int,
                   warmup: int) -> tuple[list[str], list[str]]:
    """Dense time / CSR time of one ReLU layer at each of CROSSOVER_SPARSITIES.

    Two rows: inside a chain (activations already feature-major; dense is then
    DenseTransposedLinear) and alone (batch-major in and out: dense is nn.Linear, the
    CSR layer pays both transposes).
    """
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, in_features, generator=generator)
    feature_major = contiguous(inputs.t())
    bias = torch.randn(out_features, generator=generator)
    runs = {}
    for sparsity in CROSSOVER_SPARSITIES:
        weight = torch.randn(out_features, in_features, generator=generator)
        weight *= torch.rand(weight.shape, generator=generator) >= sparsity
        csr = SparseLinear(weight, bias, relu=True)
        dense = DenseTransposedLinear(weight, bias, relu=True)
        runs[sparsity, "chain", "dense"] = lambda x, dense=dense: dense(feature_major)
        runs[sparsity, "chain", "sparse"] = lambda x, csr=csr: csr(feature_major)
        runs[sparsity, "alone", "dense"] = lambda x, w=weight: torch.addmm(bias, x, w.t()).relu_()
        runs[sparsity, "alone", "sparse"] = lambda x, csr=csr: contiguous(csr(x.t()).t())
    seconds = time_interleaved(runs, inputs, repeats, warmup)
    name = f"{in_features}->{out_features}"
    return tuple([name] + [f"{seconds[s, where, 'dense'] / seconds[s, where, 'sparse']:.2f}"
                           for s in CROSSOVER_SPARSITIES]
                 for where in ("chain", "alone"))


def crossover(args: argparse.Namespace) -> None:
    print(f"dense time / CSR time per layer (> 1: sparse faster), batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.crossover_repeats}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    rows = [crossover_rows(i, o, args.batch_size, args.crossover_repeats, args.warmup)
            for i, o in CROSSOVER_SHAPES]
    headers = [f"{s:.0%}" for s in CROSSOVER_SPARSITIES]
    print(format_table(["inside a chain"] + headers, [chain for chain, _ in rows]))
    print(format_table(["alone"] + headers, [alone for _, alone in rows]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--batch_size", type=positive_int, default=512)
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
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.crossover:
        crossover(args)
        return 0
    batch = torch.randn(args.batch_size, 1, 28, 28)
    per_images = IMAGES / args.batch_size
    print(f"fc1, batch {args.batch_size}, {args.threads} thread(s), torch {torch.__version__}, "
          f"median of {args.repeats}; load average before: {os.getloadavg()[0]:.2f}")
    runs, kernels, errors = {}, {}, {}
    for percent in args.sparsities:
        model = pruned_fc1(percent, args.seed)
        runs[percent, "dense"] = model
        for mode in MODES[1:]:
            runs[percent, mode], choices = sparsify(model, mode)
            if mode == "auto":
                kernels[percent] = "".join(c.kernel[0].upper() for c in choices)
        errors[percent] = max(compare_outputs(model, runs[percent, mode], batch).relative_error
                              for mode in MODES[1:])
    seconds = {key: s * per_images for key, s in
               time_interleaved(runs, batch, args.repeats, args.warmup).items()}
    rows = []
    for percent in args.sparsities:
        dense = seconds[percent, "dense"]
        row = [f"{percent:g}%", f"{dense:.4f}"]
        for mode in MODES[1:]:
            row.append(f"{seconds[percent, mode]:.4f} ({dense / seconds[percent, mode]:.2f}x)")
        coo_over_sparse = seconds[percent, "coo"] / seconds[percent, "sparse"]
        rows.append(row + [f"{coo_over_sparse:.1f}x", kernels[percent], f"{errors[percent]:.1e}"])
    print(format_table(["sparsity", "dense s", "coo s (vs dense)", "sparse s (vs dense)",
                        "auto s (vs dense)", "sparse vs coo", "auto kernels", "max rel err"], rows))
    print(f"seconds per {IMAGES} images; auto kernels per layer: S = sparse, D = dense; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
