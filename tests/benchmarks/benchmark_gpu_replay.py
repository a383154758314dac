"""Benchmark: the replay's GPU kernels, dense (cuDNN/cuBLAS) against torch's CSR (cuSPARSE) and
2:4 semi-structured sparsity (cuSPARSELt), per layer and per whole network, with NVML energy.

One script for a session that has a GPU (without one it says "no CUDA device" and exits 0):

    python3 -m tests.benchmarks.benchmark_gpu_replay [--networks fc1 lenet5 conv6 vgg11]
        [--batch_sizes 64 512] [--percents 50 90] [--repeats 15] [--energy_seconds 3]

Every network (random weights, CIFAR-sized inputs 3x32x32) is pruned by magnitude with the
2:4 structure (archs.pruning.structure) to each percent: 50 is exactly 2:4, 90 is 2:4 and
unstructured within. Per layer (its input recorded on a random batch) and per whole network
(``sparsify_layers`` in the modes dense, torch_csr, semi_structured, sparse and auto), the
runs are timed interleaved in a fresh random order each round, medians, the GPU synchronised
around every sample (:class:`archs.sparse.timing.InterleavedTimer`). Each result's relative
error against a float64 reference is printed: float32 rounding for CSR, float16's for
semi-structured (which casts weights and activations to float16). NVML's energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer) is read around ``--energy_seconds``
of back-to-back batches of each whole-network mode, after a synchronisation: joules per batch.
The figures are those of the GPU named in the first line; the CPU only launches kernels.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from archs import build_model
from archs.pruning import PruningPlan, apply_masks, full_masks, magnitude_scores
from archs.sparse.choice import Timing
from archs.sparse.common import relative_error
from archs.sparse.cuda import SEMI_STRUCTURED, CsrLayer, semi_structured_reason, sparsify_layers, try_build
from archs.sparse.timing import InterleavedTimer
from utils import format_table, positive_int, run_cli
from utils import percent as percent_argument

NETWORKS = ("fc1", "lenet5", "conv6", "vgg11")
MODES = ("dense", "torch_csr", SEMI_STRUCTURED, "sparse", "auto")


def pruned_network(arch: str, percent: float, device: torch.device) -> nn.Module:
    """``arch`` pruned once by magnitude to ``percent`` with every eligible layer 2:4."""
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, image_size=32, num_classes=10).eval()
    masks = full_masks(model)
    masks = PruningPlan(percent, structure=(2, 4)).prune(magnitude_scores(dict(model.named_parameters()), masks),
                                                          masks, 1)
    apply_masks(model, masks)
    return model.requires_grad_(False).to(device)


def layer_inputs(model: nn.Module, batch: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    recorded = {}
    hooks = [module.register_forward_pre_hook(
        lambda module, args, name=name: recorded.__setitem__(name, (module, args[0].detach())))
        for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    with torch.inference_mode():
        model(batch)
    for hook in hooks:
        hook.remove()
    return recorded


def reference64(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import copy
    with torch.inference_mode():
        return copy.deepcopy(module).double()(x.double())


def ms_and_speedup(seconds: dict[str, float], kernel: str) -> str:
    if kernel not in seconds:
        return "-"
    return f"{1e3 * seconds[kernel]:.3f} ({seconds['dense'] / seconds[kernel]:.2f}x)"


def layer_table(arch: str, percent: float, batch_size: int, args, device: torch.device) -> None:
    model = pruned_network(arch, percent, device)
    batch = torch.randn(batch_size, 3, 32, 32, device=device)
    timer = InterleavedTimer(device, rounds=args.repeats)
    rows = []
    for name, (module, x) in layer_inputs(model, batch).items():
        layers = {"dense": module, "torch_csr": CsrLayer(module)}
        why = semi_structured_reason(module.weight, module)
        if why is None:
            layers[SEMI_STRUCTURED], why = try_build(module, SEMI_STRUCTURED)
            if layers[SEMI_STRUCTURED] is None:
                del layers[SEMI_STRUCTURED]
        with torch.inference_mode():
            seconds = timer({kernel: (lambda layer=layer: layer(x)) for kernel, layer in layers.items()})
            expected = reference64(module, x)
            errors = {kernel: relative_error(layer(x), expected) for kernel, layer in layers.items()}
        sparsity = 1 - int(torch.count_nonzero(module.weight)) / module.weight.numel()
        rows.append([name, "x".join(map(str, module.weight.shape)), f"{100 * sparsity:.1f}%",
                     f"{1e3 * seconds['dense']:.3f}", ms_and_speedup(seconds, "torch_csr"),
                     ms_and_speedup(seconds, SEMI_STRUCTURED),
                     " ".join(f"{k}:{e:.1e}" for k, e in errors.items()), why or ""])
    print(f"\n{arch}, pruned {percent:g}% (2:4 where eligible), batch {batch_size}: per layer (ms per batch)")
    print(format_table(["layer", "weight", "sparsity", "dense ms", "csr ms (vs dense)", "2:4 ms (vs dense)",
                        "rel err vs float64", "why no 2:4"], rows))


def nvml_joules_per_batch(run, device: torch.device, seconds: float) -> str:
    """Joules per batch from NVML's energy counter over ``seconds`` of back-to-back batches."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)   # noqa: E731  (mJ)
        torch.cuda.synchronize(device)
        start, begun, batches = read(), time.perf_counter(), 0
        while time.perf_counter() - begun < seconds:
            run()
            batches += 1
            if batches % 10 == 0:
                torch.cuda.synchronize(device)
        torch.cuda.synchronize(device)
        return f"{(read() - start) / 1e3 / batches:.4f}"
    except Exception as exc:   # no NVML, or a GPU without the energy counter
        return f"n/a ({type(exc).__name__})"


def network_table(arch: str, percent: float, batch_size: int, args, device: torch.device) -> None:
    model = pruned_network(arch, percent, device)
    batch = torch.randn(batch_size, 3, 32, 32, device=device)
    converted, kernels = {}, {}
    for mode in MODES:
        timing = Timing(InterleavedTimer(device, rounds=args.repeats), None)
        converted[mode], choices = sparsify_layers(model, mode, example_input=batch, timing=timing)
        kernels[mode] = ", ".join(f"{c.name.removesuffix('.weight')}:{c.kernel}" for c in choices if c.kernel != "dense")
    expected = reference64(model, batch)
    with torch.inference_mode():
        seconds = InterleavedTimer(device, rounds=args.repeats)(
            {mode: (lambda net=net: net(batch)) for mode, net in converted.items()})
        rows = []
        for mode, net in converted.items():
            joules = nvml_joules_per_batch(lambda net=net: net(batch), device, args.energy_seconds)
            rows.append([mode, f"{1e3 * seconds[mode]:.3f}", f"{seconds['dense'] / seconds[mode]:.2f}x",
                         joules, f"{relative_error(net(batch), expected):.1e}", kernels[mode] or "all dense"])
    print(f"\n{arch}, pruned {percent:g}% (2:4 where eligible), batch {batch_size}: whole network")
    print(format_table(["mode", "ms per batch", "vs dense", "NVML J per batch", "rel err vs float64",
                        "sparse layers"], rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.benchmark_gpu_replay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[64, 512])
    parser.add_argument("--percents", type=percent_argument, nargs="+", default=[50, 90])
    parser.add_argument("--repeats", type=positive_int, default=15, help="interleaved rounds (medians)")
    parser.add_argument("--energy_seconds", type=float, default=3.0,
                        help="seconds of batches per whole-network mode under NVML's energy counter")
    parser.add_argument("--skip_layers", action="store_true", help="whole networks only")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time (run this on a machine with an NVIDIA GPU)")
        return 0
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True   # as archs.runtime.replay_runtime sets it for a replay
    print(f"GPU: {torch.cuda.get_device_name(device)} (compute capability "
          f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}); torch {torch.__version__}, "
          f"cuSPARSELt {'available' if torch.backends.cusparselt.is_available() else 'absent'}")
    for arch in args.networks:
        for percent in args.percents:
            for batch_size in args.batch_sizes:
                if not args.skip_layers:
                    layer_table(arch, percent, batch_size, args, device)
                network_table(arch, percent, batch_size, args, device)
    return 0


if __name__ == "__main__":
    run_cli(main)
