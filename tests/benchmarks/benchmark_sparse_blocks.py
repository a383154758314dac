"""Benchmark: residual and dense networks replayed sparse, whole trunk in the tile layout
(:class:`~archs.sparse.tile_program.TileProgram`) against one sparse chain per convolution
(the replay before blocks were covered: BatchNorm and ReLU in torch, layout changes
around every convolution) and against dense.

Prints the CPU model and load, then per network the median seconds per batch of each, and
the speed-ups. Not a test (pytest does not collect it); run it:

    python3 -m tests.benchmarks.benchmark_sparse_blocks [--networks resnet20 densenet121]
        [--batch_size 64] [--sparsity 90] [--threads 2] [--repeats 7]

Every layer is pruned to the sparsity by weight magnitude (random weights: random masks).
The three replays run interleaved in a fresh random order each repeat
(:func:`~tests.benchmarks.benchmark_inference.time_interleaved`), so bursts of load hit
them alike; each replay is checked against dense before timing.
"""
from __future__ import annotations

import argparse
import os
from unittest import mock

import torch

from archs.sparse import compare_outputs, sparsify
from archs.sparse.timing import device_description
from tests.benchmarks.benchmark_inference import time_interleaved
from tests.benchmarks.benchmark_sparse_conv import pruned_network
from utils import format_table, positive_int, run_cli
from utils import percent as percent_argument


def per_convolution(model: torch.nn.Module) -> torch.nn.Module:
    """The sparse replay as it was before blocks were covered: each convolution of a block
    a chain of its own."""
    with mock.patch("archs.sparse.conv_conversion.block_supported", lambda module: False), \
            mock.patch("archs.sparse.conversion.block_supported", lambda module: False), \
            mock.patch("archs.sparse.conversion.gather_trunk", lambda module: None):
        return sparsify(model, "sparse")[0]


def network_rows(arch: str, args: argparse.Namespace) -> list[list[str]]:
    model = pruned_network(arch, args.sparsity, seed=0)
    batch = torch.randn(args.batch_size, 3, 32, 32)
    replays = {"dense": model, "per_conv": per_convolution(model),
               "program": sparsify(model, "sparse")[0]}
    for name, replay in replays.items():
        agreement = compare_outputs(model, replay, batch[:17])
        if not agreement.agrees:
            raise RuntimeError(f"{arch} {name}: relative error {agreement.relative_error:.1e}")
    seconds = time_interleaved({name: replay for name, replay in replays.items()}, batch,
                               repeats=args.repeats, warmup=1)
    return [[arch, f"{seconds['dense'] * 1e3:.0f}", f"{seconds['per_conv'] * 1e3:.0f}",
             f"{seconds['program'] * 1e3:.0f}",
             f"{seconds['dense'] / seconds['per_conv']:.2f}x",
             f"{seconds['dense'] / seconds['program']:.2f}x",
             f"{seconds['per_conv'] / seconds['program']:.2f}x"]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=["resnet20", "densenet121"])
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--sparsity", type=percent_argument, default=90.0,
                        help="percent of each layer's weights pruned")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=7)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"{device_description(torch.device('cpu'))}; {args.threads} threads; batch "
          f"{args.batch_size} of 3x32x32; {args.sparsity:g}% of every layer pruned; median of "
          f"{args.repeats} interleaved; load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for arch in args.networks:
        rows += network_rows(arch, args)
    print(format_table(["network", "dense ms", "per-conv ms", "program ms", "per-conv",
                        "program", "program vs per-conv"], rows))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
