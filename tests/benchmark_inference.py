"""Benchmark: is a pruned fc1 cheaper to run? Dense vs COO (the original) vs CSR kernels.

Prints, for fc1 at one batch size on the CPU, seconds per 10,000 images for each kernel
mode at several sparsities, with the speed-up over dense. Not a test (pytest does not
collect it); run it directly:

    /work/venv/bin/python tests/benchmark_inference.py [--threads N] [--repeats R]
    /work/venv/bin/python tests/benchmark_inference.py --crossover [--batch_size B]

Each sparsity prunes every layer of a freshly initialised fc1 to exactly that fraction by
weight magnitude (random weights, so the masks are random), as pruning does layer-wise.
All modes are timed in turn within each repeat, so a burst of load from other processes
hits them alike; the median over repeats is reported.

``--crossover`` instead times single layers of fc1's and LeNet5's shapes, dense against
the CSR kernel (with the transposes a lone layer pays), over a range of sparsities: the
measurement behind ``archs.sparse.AUTO_SPARSITY_THRESHOLD``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from archs import build_model  # noqa: E402
from archs.masks import apply_masks, full_masks, prune_by_magnitude  # noqa: E402
from archs.sparse import SparseLinear, compare_outputs, contiguous, sparsify  # noqa: E402
from utils import format_table, positive_int, run_cli  # noqa: E402

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


def time_modes(models: dict[str, Callable[[torch.Tensor], object]], batch: torch.Tensor,
               repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per batch of each model.

    One batch per sample, modes interleaved sample by sample: on a shared machine load
    from other processes comes in bursts longer than a batch, and a burst then slows every
    mode alike instead of whichever happened to be running.
    """
    samples: dict[str, list[float]] = {mode: [] for mode in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(batch)
        for repeat in range(repeats):
            # rotate the order so no mode always runs right after the slowest one
            shift = repeat % len(models)
            for mode in list(models)[shift:] + list(models)[:shift]:
                start = time.perf_counter()
                models[mode](batch)
                samples[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(times) for mode, times in samples.items()}


def crossover_row(in_features: int, out_features: int, batch_size: int, repeats: int,
                  warmup: int) -> list[str]:
    """Dense time / sparse time of one ReLU layer at each of CROSSOVER_SPARSITIES."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, in_features, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    ratios = []
    for sparsity in CROSSOVER_SPARSITIES:
        weight = torch.randn(out_features, in_features, generator=generator)
        weight *= torch.rand(weight.shape, generator=generator) >= sparsity
        layer = SparseLinear(weight, bias, relu=True)
        kernels = {
            "dense": lambda x: torch.addmm(bias, x, weight.t()).relu_(),
            "sparse": lambda x: contiguous(layer(x.t()).t()),
        }
        seconds = time_modes(kernels, inputs, repeats, warmup)
        ratios.append(f"{seconds['dense'] / seconds['sparse']:.2f}")
    return [f"{in_features}->{out_features}"] + ratios


def crossover(args: argparse.Namespace) -> None:
    print(f"dense time / CSR time per layer (> 1: sparse faster), batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.crossover_repeats}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    rows = [crossover_row(i, o, args.batch_size, args.crossover_repeats, args.warmup)
            for i, o in CROSSOVER_SHAPES]
    print(format_table(["layer"] + [f"{s:.0%}" for s in CROSSOVER_SPARSITIES], rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--batch_size", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=101,
                        help="timed batches per mode and sparsity; the median is reported")
    parser.add_argument("--warmup", type=positive_int, default=5,
                        help="untimed batches per mode first")
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
    rows = []
    for percent in SPARSITIES:
        model = pruned_fc1(percent, args.seed)
        models = {"dense": model}
        kernels = ""
        for mode in MODES[1:]:
            models[mode], choices = sparsify(model, mode)
            if mode == "auto":
                kernels = "".join(c.kernel[0].upper() for c in choices)
        worst_error = max(compare_outputs(model, models[mode], batch).relative_error
                          for mode in MODES[1:])
        seconds = {mode: s * per_images for mode, s in
                   time_modes(models, batch, args.repeats, args.warmup).items()}
        row = [f"{percent}%", f"{seconds['dense']:.4f}"]
        for mode in MODES[1:]:
            row.append(f"{seconds[mode]:.4f} ({seconds['dense'] / seconds[mode]:.2f}x)")
        rows.append(row + [f"{seconds['coo'] / seconds['sparse']:.1f}x", kernels,
                           f"{worst_error:.1e}"])
        print(f"  {percent}% done", file=sys.stderr, flush=True)
    print(format_table(["sparsity", "dense s", "coo s (vs dense)", "sparse s (vs dense)",
                        "auto s (vs dense)", "sparse vs coo", "auto kernels", "max rel err"], rows))
    print(f"seconds per {IMAGES} images; auto kernels per layer: S = sparse, D = dense; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
