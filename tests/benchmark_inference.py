"""Benchmark: is a pruned fc1 cheaper to run? Dense vs COO (the original) vs CSR kernels.

Prints, for fc1 at one batch size on the CPU, seconds per 10,000 images for each kernel
mode at several sparsities, with the speed-up over dense. Not a test (pytest does not
collect it); run it directly:

    /work/venv/bin/python tests/benchmark_inference.py [--threads N] [--repeats R]

Each sparsity prunes every layer of a freshly initialised fc1 to exactly that fraction by
weight magnitude (random weights, so the masks are random), as pruning does layer-wise.
All modes are timed in turn within each repeat, so a burst of load from other processes
hits them alike; the median over repeats is reported.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from archs import build_model  # noqa: E402
from archs.masks import apply_masks, full_masks, prune_by_magnitude  # noqa: E402
from archs.sparse import compare_outputs, sparsify  # noqa: E402
from utils import format_table, positive_int, run_cli  # noqa: E402

MODES = ("dense", "coo", "sparse", "auto")
SPARSITIES = (0, 50, 80, 90, 95, 97, 99)
IMAGES = 10_000


def pruned_fc1(percent: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("fc1", in_channels=1, image_size=28, num_classes=10).eval()
    if percent > 0:
        masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), percent)
        apply_masks(model, masks)
    return model


def time_modes(models: dict[str, torch.nn.Module], batch: torch.Tensor, batches_per_sample: int,
               repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds for ``batches_per_sample`` forward passes, modes interleaved."""
    def sample(model: torch.nn.Module) -> float:
        start = time.perf_counter()
        for _ in range(batches_per_sample):
            model(batch)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {mode: [] for mode in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(batch)
        for repeat in range(repeats):
            # rotate the order so no mode always runs right after the slowest one
            order = list(models)[repeat % len(models):] + list(models)[:repeat % len(models)]
            for mode in order:
                samples[mode].append(sample(models[mode]))
    return {mode: sorted(times)[len(times) // 2] for mode, times in samples.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--batch_size", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help="timed samples per mode and sparsity; the median is reported")
    parser.add_argument("--warmup", type=positive_int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    batch = torch.randn(args.batch_size, 1, 28, 28)
    batches_per_sample = -(-IMAGES // args.batch_size)
    per_images = IMAGES / (batches_per_sample * args.batch_size)
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
        worst_error = max(compare_outputs(model, models[m], batch).relative_error for m in MODES[1:])
        seconds = {mode: s * per_images for mode, s in
                   time_modes(models, batch, batches_per_sample, args.repeats, args.warmup).items()}
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
