"""Benchmark: how much faster do pruned convolutional networks run with the sparse
convolution kernel (:mod:`archs.sparse.numba_conv`)?

Prints the CPU model, then per convolution layer of the chosen networks on CIFAR-sized
inputs (3x32x32) and per whole network, the median seconds per batch of dense (torch) and
sparse, the speed-up, the fraction of the FLOP limit it reaches (dense multiply-adds over
those of the stored weights: about 10x at 90 %, 33x at 97 %) and what keeps it below (rules
of thumb from the layer's shape and timings). Not a test (pytest does not collect it); run it:

    python3 -m tests.benchmarks.benchmark_sparse_conv [--networks lenet5 conv6 vgg11]
        [--batch_sizes 64 512] [--sparsities 90 97] [--threads 2] [--auto]

A layer is timed as the network runs it: the convolution with its BatchNorm, ReLU and 2x2
max-pool (dense: torch's modules; sparse: one :class:`~archs.sparse.conv.SparseConvChain`), on
random activations of the layer's input shape, sparse both alone (NCHW in and out, layout
changes included) and as inside a run of layers (the kernel on the tile layout). A
whole network is timed dense against ``sparsify(model, "sparse")`` (and "auto" with
``--auto``, which times its candidates first). Every layer is pruned to the sparsity by
weight magnitude (random weights: random masks), as layer-wise pruning does. Runs are
interleaved in a fresh random order each repeat (:func:`time_interleaved`), so bursts of
load from other processes hit dense and sparse alike; the load average is printed with
every table.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from archs import build_model
from archs.pruning import apply_masks, full_masks, prune_by_magnitude
from archs.sparse import compare_outputs, sparsify
from archs.sparse.conv import ConvSpec, PoolSpec, SparseConvChain, to_tiles
from archs.sparse.timing import device_description
from tests.benchmarks.benchmark_inference import time_interleaved
from utils import format_table, positive_int, run_cli
from utils import percent as percent_argument

NETWORKS = ("lenet5", "conv2", "conv4", "conv6", "vgg11", "vgg16")


def pruned_network(arch: str, percent: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, in_channels=3, image_size=32, num_classes=10).eval()
    if percent > 0:
        masks = prune_by_magnitude(dict(model.named_parameters()), full_masks(model), percent)
        apply_masks(model, masks)
    return model.requires_grad_(False)


def conv_units(model: nn.Module) -> list[tuple[str, list[nn.Module], list, tuple]]:
    """Each convolution with the BatchNorm, ReLU and 2x2 max-pool after it (the sparse step
    fuses them all), its specs, and its input shape (batch 1)."""
    shapes: dict[nn.Module, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.__setitem__(m, args[0].shape[1:]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    units = []
    for name, module in model.named_modules():
        if type(module) is not nn.Sequential:
            continue
        children = list(module.named_children())
        for i, (child_name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            modules, norm, relu, pool = [child], None, False, None
            for _, after in children[i + 1:i + 4]:
                if isinstance(after, nn.BatchNorm2d) and norm is None and not relu:
                    norm = after
                elif isinstance(after, nn.ReLU) and not relu:
                    relu = True
                elif isinstance(after, nn.MaxPool2d) and after.kernel_size in (2, (2, 2)) \
                        and after.stride in (2, (2, 2)) and pool is None:
                    pool = PoolSpec((2, 2), (2, 2))
                else:
                    break
                modules.append(after)
            label = f"{name}.{child_name}".lstrip(".")
            specs = [ConvSpec(child, norm, relu)] + ([pool] if pool else [])
            units.append((label, modules, specs, tuple(shapes[child])))
    return units


def describe(specs: list, shape: tuple) -> str:
    conv = specs[0].conv
    return (f"{conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]}"
            f" @{shape[1]}x{shape[2]}{' +BN' if specs[0].norm is not None else ''}"
            f"{' +pool' if len(specs) > 1 else ''}")


def multiply_adds(conv: nn.Conv2d, shape: tuple, batch: int) -> tuple[int, int]:
    """Multiply-adds of the layer dense, and those of its stored weights, for ``batch``."""
    out_h = (shape[1] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    out_w = (shape[2] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    pixels = out_h * out_w * batch
    return conv.weight.numel() * pixels, int(torch.count_nonzero(conv.weight)) * pixels


def why_below_limit(conv: nn.Conv2d, dense: float, alone: float, kernel: float,
                    dense_rate: float, sparse_rate: float) -> str:
    """What keeps a layer from the FLOP limit, from its shape and timings (rules of thumb
    stated in the output: layout changes, output stores, loads per multiply-add)."""
    reasons = []
    if alone > 1.3 * kernel:
        reasons.append(f"layout {1 - kernel / alone:.0%} of alone")
    per_output = int(torch.count_nonzero(conv.weight)) / conv.out_channels
    if per_output < 32:
        reasons.append(f"stores ({per_output:.0f} weights per output)")
    if sparse_rate < dense_rate:
        reasons.append(f"loads (MAC rate {sparse_rate / dense_rate:.0%} of dense)")
    return "; ".join(reasons) or "near the limit"


def layer_table(args: argparse.Namespace, batch: int) -> None:
    runs, labels, seen = {}, {}, set()
    inputs, work = {}, {}
    for arch in args.networks:
        for percent in args.sparsities:
            for label, modules, specs, shape in conv_units(pruned_network(arch, percent, args.seed)):
                key = (describe(specs, shape), percent)
                if key in seen:
                    continue
                seen.add(key)
                labels[key] = f"{arch} {label}"
                inputs[key] = torch.randn(batch, *shape)
                work[key] = (specs[0].conv, multiply_adds(specs[0].conv, shape, batch))
                dense = nn.Sequential(*modules)
                chain = SparseConvChain(specs)
                tiles = to_tiles(inputs[key], specs[0].conv.padding, args.threads)
                runs[key, "dense"] = lambda _, m=dense, k=key: m(inputs[k])
                runs[key, "sparse"] = lambda _, m=chain, k=key: m(inputs[k])
                runs[key, "kernel"] = lambda _, m=chain, t=tiles, s=shape: m.run_tiles(t, *s[1:])
    print(f"\nPer layer, batch {batch}, {args.threads} thread(s), median of {args.repeats}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    seconds = time_interleaved(runs, None, args.repeats, args.warmup)
    rows = []
    for key in sorted(labels, key=lambda k: (k[1], list(labels).index(k))):
        layer, percent = key
        dense, sparse, kernel = (seconds[key, run] for run in ("dense", "sparse", "kernel"))
        conv, (dense_work, sparse_work) = work[key]
        limit = dense_work / max(sparse_work, 1)
        dense_rate, sparse_rate = dense_work / dense / 1e9, sparse_work / kernel / 1e9
        rows.append([f"{percent:g}%", labels[key], layer, f"{dense * 1e3:.2f}",
                     f"{dense / sparse:.2f}x", f"{dense / kernel:.2f}x",
                     f"{dense / kernel / limit:.0%} of {limit:.0f}x", f"{dense_rate:.0f}",
                     f"{sparse_rate:.0f}",
                     why_below_limit(conv, dense, sparse, kernel, dense_rate, sparse_rate)])
    print(format_table(["sparsity", "first seen in", "layer", "dense ms", "alone", "in a run",
                        "in a run, of FLOP limit", "dense GMAC/s", "sparse GMAC/s",
                        "why below the limit"], rows))
    print("alone: NCHW in and out (layout changes included); in a run: the kernel on the tile "
          "layout, as between the layers of a run; speed-ups against dense (torch); GMAC/s: "
          "useful multiply-adds (sparse: stored weights only) per second.\nWhy below the limit "
          "(rules of thumb): layout = the NCHW <-> tile changes' share of the layer alone; "
          "stores = under 32 stored weights per output channel, so writing each output "
          "vector (bias, ReLU, store) costs about as much as its multiply-adds; loads = "
          "the sparse kernel's multiply-adds per second below dense's: each loads its input "
          "vector from cache, where dense's register blocking reuses it")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


KERNEL_LETTERS = {"dense": "d", "numba_conv": "c", "numba_tiled": "t", "numba_csr": "n",
                  "torch_csr": "T", "coo": "o"}


def network_table(args: argparse.Namespace, batch_size: int) -> None:
    batch = torch.randn(batch_size, 3, 32, 32)
    runs, errors, kernels = {}, {}, {}
    for arch in args.networks:
        for percent in args.sparsities:
            model = pruned_network(arch, percent, args.seed)
            runs[arch, percent, "dense"] = model
            runs[arch, percent, "sparse"], _ = sparsify(model, "sparse")
            if args.auto:
                runs[arch, percent, "auto"], choices = sparsify(model, "auto", example_input=batch)
                kernels[arch, percent] = "".join(KERNEL_LETTERS.get(c.kernel, "?")
                                                 for c in choices)
            errors[arch, percent] = max(compare_outputs(model, runs[arch, percent, mode], batch[:64])
                                        .relative_error for mode in ("sparse", "auto")
                                        if (arch, percent, mode) in runs)
    print(f"\nWhole networks, batch {batch_size}, {args.threads} thread(s), median of "
          f"{args.repeats}; load average before: {os.getloadavg()[0]:.2f}")
    seconds = time_interleaved(runs, batch, args.repeats, args.warmup)
    rows = []
    for arch in args.networks:
        for percent in args.sparsities:
            dense = seconds[arch, percent, "dense"]
            row = [arch, f"{percent:g}%", f"{dense * 1e3:.1f}"]
            for mode in ("sparse", "auto") if args.auto else ("sparse",):
                row.append(f"{seconds[arch, percent, mode] * 1e3:.1f} "
                           f"({dense / seconds[arch, percent, mode]:.2f}x)")
            if args.auto:
                row.append(kernels[arch, percent])
            rows.append(row + [f"{errors[arch, percent]:.1e}"])
    print(format_table(["network", "sparsity", "dense ms"] + ["sparse ms (vs dense)"]
                       + (["auto ms (vs dense)", "auto's kernels"] if args.auto else [])
                       + ["max rel err"], rows))
    if args.auto:
        print("auto's kernels, one letter per layer in the model's order: " + ", ".join(
            f"{letter} {kernel}" for kernel, letter in KERNEL_LETTERS.items()))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[64, 512])
    parser.add_argument("--sparsities", type=percent_argument, nargs="+", default=[90, 97])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--warmup", type=positive_int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_layers", action="store_true", help="whole networks only")
    parser.add_argument("--skip_networks", action="store_true", help="layers only")
    parser.add_argument("--auto", action="store_true",
                        help="also time 'auto' (which first times its candidates: slow)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {device_description(torch.device('cpu'))}; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    for batch_size in args.batch_sizes:
        if not args.skip_layers:
            layer_table(args, batch_size)
        if not args.skip_networks:
            network_table(args, batch_size)
    return 0


if __name__ == "__main__":
    run_cli(main)
