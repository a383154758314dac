"""Choosing kernels: per layer (by timing the candidates on the machine at hand, or by a
sparsity threshold of the caller's) and per chain (the assembled chains against the
original layers)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from archs.sparse.chains import Affine, LinearChain
from archs.sparse.common import (DENSE, KERNELS_VERSION, MEASURED_SPEEDUP_REQUIRED, NUMBA_CSR,
                                 NUMBA_TILED, TORCH_CSR, LayerChoice, contiguous,
                                 effective_sparsity, numba_applies, weight_sparsity)
from archs.sparse.layers import DenseTransposedLinear, NumbaCsrLinear, SparseLinear
from archs.sparse.timing import InterleavedTimer, KernelTimingCache, Timer, timing_key

def fastest_sparse_kernel(weight: torch.Tensor) -> str:
    """The per-layer kernel of a caller's threshold, and of "sparse" mode before it fuses a
    chain into numba's tiled kernel: numba's wherever it applies, torch's elsewhere."""
    return NUMBA_CSR if numba_applies(weight) else TORCH_CSR


def candidate_layers(linear: nn.Linear, relu: bool) -> dict[str, nn.Module]:
    """Every kernel that can run ``linear`` (then ``relu``) inside a chain, by name."""
    weight, bias = linear.weight.detach(), linear.bias
    candidates: dict[str, nn.Module] = {DENSE: DenseTransposedLinear(weight, bias, relu),
                                        TORCH_CSR: SparseLinear(weight, bias, relu)}
    if numba_applies(weight):
        candidates[NUMBA_CSR] = NumbaCsrLinear(weight, bias, relu)
    return candidates


def _speedups(timings: dict[str, float]) -> str:
    return ", ".join(f"{kernel} {timings[DENSE] / seconds:.2f}x"
                     for kernel, seconds in sorted(timings.items()) if kernel != DENSE)


@dataclass(frozen=True)
class Timing:
    """How "auto" times kernels: the timer and, optionally, the cache of earlier timings."""
    timer: Timer | None               # None: InterleavedTimer on the layer's device
    cache: KernelTimingCache | None

    def seconds(self, key: dict, runs: dict, device: torch.device) -> tuple[dict[str, float], bool]:
        """Seconds per run (from the cache when it has every run) and whether they were cached."""
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None and cached.keys() == runs.keys():
            return cached, True
        timer = self.timer or InterleavedTimer(device)
        with torch.inference_mode():
            timings = timer(runs)
        if self.cache is not None:
            self.cache.put(key, timings)
        return timings, False


def time_layer(name: str, linear: nn.Linear, relu: bool, recorded_input: torch.Tensor,
               timing: Timing) -> LayerChoice:
    """The fastest kernel for one layer, timed on the input it received from the example."""
    sparsity = weight_sparsity(linear.weight)
    rows = recorded_input.reshape(-1, linear.in_features)
    h = contiguous(rows.t())
    candidates = candidate_layers(linear, relu)
    key = timing_key(linear.weight.device, kernels=KERNELS_VERSION, what="layer",
                     shape=list(linear.weight.shape), nonzeros=int(torch.count_nonzero(linear.weight)),
                     relu=relu, rows=rows.shape[0], dtype=str(linear.weight.dtype))
    runs = {kernel: (lambda layer=layer: layer(h)) for kernel, layer in candidates.items()}
    timings, cached = timing.seconds(key, runs, linear.weight.device)
    kernel = min(timings, key=timings.get)
    source = "cached timing" if cached else "timed"
    return LayerChoice(name, sparsity, kernel,
                       f"{source} at {rows.shape[0]} rows: {_speedups(timings)} vs dense")


def choose_kernel(name: str, linear: nn.Linear, relu: bool, mode: str, threshold: float | None,
                  recorded_input: torch.Tensor | None, timing: Timing) -> LayerChoice:
    """The kernel of one linear layer (``name`` is its weight's) in a mode other than dense.

    "auto" times the candidates on ``recorded_input`` (see :func:`time_layer`) unless the
    caller gave a sparsity ``threshold``.
    """
    sparsity = weight_sparsity(linear.weight)
    if sparsity == 0:
        return LayerChoice(name, sparsity, DENSE, "not pruned")
    if mode in (TORCH_CSR, NUMBA_CSR, "sparse"):
        kernel = TORCH_CSR if mode == TORCH_CSR else fastest_sparse_kernel(linear.weight)
        return LayerChoice(name, sparsity, kernel, "pruned linear layer")
    if threshold is None:
        if recorded_input is None:
            return LayerChoice(name, sparsity, DENSE, "the example input never reached this layer")
        return time_layer(name, linear, relu, recorded_input, timing)
    effective = effective_sparsity(linear.weight)
    kernel = fastest_sparse_kernel(linear.weight) if effective >= threshold else DENSE
    sign = ">=" if kernel != DENSE else "<"
    detail = "" if effective == sparsity else " once empty rows/columns are dropped"
    return LayerChoice(name, sparsity, kernel,
                       f"sparsity {effective:.3f}{detail} {sign} threshold {threshold:.2f}")



# each layer with the kernel timed fastest for it, and numba's tiled chain.
PER_LAYER_CHAIN, TILED_CHAIN = "chain", "numba_tiled"


def time_chains(original: list[nn.Module], chains: dict[str, LinearChain], x: torch.Tensor,
                 timing: Timing) -> tuple[dict[str, float], bool]:
    """Seconds of the original layers ("dense") and of each chain on ``x``; whether cached."""
    def dense() -> torch.Tensor:
        h = x
        for module in original:
            h = module(h)
        return h

    some_chain = next(iter(chains.values()))
    key = timing_key(x.device, kernels=KERNELS_VERSION, what="chain",
                     chains={name: chain.layer_shapes() for name, chain in chains.items()},
                     inputs=some_chain.in_features, rows=x.numel() // some_chain.in_features,
                     used_inputs=None if some_chain.used_inputs is None else len(some_chain.used_inputs),
                     dtype=str(x.dtype))
    runs = {DENSE: dense, **{name: (lambda chain=chain: chain(x)) for name, chain in chains.items()}}
    return timing.seconds(key, runs, x.device)


def layer_shape(layer: nn.Module) -> list:
    """(out, in, stored weights, relu) of a chain layer: what its speed depends on."""
    if isinstance(layer, DenseTransposedLinear):
        out_features, in_features = layer.weight.shape
        return [out_features, in_features, layer.weight.numel(), layer.relu]
    return [layer.out_features, layer.in_features, layer.values.numel(), layer.relu]


def tiled_applies(layers: list[Affine]) -> bool:
    return all(numba_applies(layer.weight) for layer in layers)


def keep_fastest_chain(segment: list[nn.Module], candidates: dict[str, LinearChain],
                        choices: list[LayerChoice], first: int, recorded: torch.Tensor,
                        timing: Timing) -> tuple[LinearChain | None, list[LayerChoice]]:
    """Time the candidate chains against the original layers ``segment``; the fastest if it
    beats them by :data:`MEASURED_SPEEDUP_REQUIRED`, else None, with the choices of the
    chain's layers (``choices[first:]``) updated to say why.

    Candidates: the chain of per-layer choices and numba's tiled chain. Per-layer timings
    cannot see what the tiled chain saves (one call, each tile through every layer in one
    core's cache) nor what a chain loses when it alternates between torch's and numba's
    thread pools (measured 0.85x on 2 cores): only timing whole chains can.
    """
    some_chain = next(iter(candidates.values()))
    timings, cached = time_chains(segment, candidates, recorded, timing)
    source = "cached timing" if cached else "timed"
    fastest = min(candidates, key=timings.get)
    speedup = timings[DENSE] / timings[fastest]
    head, rest = choices[:first], choices[first:]
    compared = ", ".join(f"{name} {timings[DENSE] / timings[name]:.2f}x" for name in candidates)
    if speedup < MEASURED_SPEEDUP_REQUIRED:
        reason = (f"{source}: the sparse chains from {rest[0].name}, transposes included, ran "
                  f"{compared} dense (needs {MEASURED_SPEEDUP_REQUIRED}x)")
        return None, head + [replace(c, kernel=DENSE, reason=f"{reason}; was {c.reason}")
                             for c in rest]
    rows = recorded.numel() // some_chain.in_features
    if fastest == TILED_CHAIN:
        rest = [replace(c, kernel=NUMBA_TILED, reason=f"{c.reason}; numba's tiled chain of "
                                                         f"every layer ran faster")
                for c in rest]
    note = f"; timed chains ({source}, transposes included): {compared} dense"
    if rows > 1:
        note += f"; batches under {rows} rows run dense"
    return (candidates[fastest].with_dense_fallback(segment, rows),
            head + [replace(c, reason=c.reason + note) for c in rest])


@dataclass(frozen=True)
class Settings:
    mode: str
    threshold: float | None
    recorded_inputs: dict      # nn.Linear, nn.Conv2d -> its input on the example ("auto" timing)
    module_names: dict         # module -> its qualified name in the model
    timing: Timing


def weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"
