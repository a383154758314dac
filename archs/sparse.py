"""Fast inference for pruned networks: sparse CSR kernels for the linear layers.

Does a pruned "winning ticket" cost less to run? Only if the zeros are skipped. This module
turns a trained (masked) model into an inference-only copy whose pruned ``nn.Linear``
layers multiply with a compressed sparse row (CSR) weight.

Why the activations are transposed. torch's fast CPU kernel for a sparse matrix times a
dense one wants the sparse operand on the left: ``W (out x in, CSR) @ h (in x batch)``,
which walks each row of ``W`` and adds whole contiguous rows of ``h``. An ``nn.Linear``
computes ``x @ W.T`` on ``x`` of shape (batch, in), so the activations are kept
*feature-major* (features x batch) instead. Consecutive linear layers and ReLUs are fused
into one :class:`TransposedChain` that transposes once on the way in and once on the way
out; in between, every layer reads and writes feature-major activations.

Which kernel. ``torch.sparse.mm(W_csr, h, reduce="sum")`` (torch's native, row-parallel and
vectorised CSR kernel) was measured 1.5-1.8x faster than ``torch.addmm`` with a CSR
operand (MKL) on the target CPU, and 10x faster than the COO ``torch.sparse.mm`` the
original program used. On other devices (CUDA) the reduce kernel does not exist and the
plain ``W_csr @ h`` product (cuSPARSE) is used.

Empty rows and columns. Pruning can empty whole rows (an output unit that only adds its
bias) or columns (an input feature nobody reads). Inside a chain these are removed, but
only where the result provably stays the same: a unit whose row is empty outputs the
constant ``act(bias)``, which is folded into the next layer's bias through that layer's
column before both are dropped; a feature that the next layer ignores entirely is not
computed. The chain's output keeps every unit, so its shape never changes.

Choosing. "sparse" runs every pruned linear layer with CSR. "auto" is never meant to be
slower than dense: a layer goes sparse from a measured sparsity threshold (higher for
very wide layers, never for tiny ones), or by timing both kernels on example
activations; and a chain keeps the original dense modules for batches too small to pay
its fixed costs (:func:`min_sparse_batch`). The thresholds were measured on a CPU, so on any
other device "auto" runs every layer dense unless the kernels are timed.

Exactness caveat shared by every sparse kernel: a skipped zero weight times an infinite or
NaN activation would have produced NaN in the dense product; for finite inputs the results
agree up to float rounding (relative error well under :data:`AGREEMENT_TOLERANCE`).

Convolutions stay dense: torch has no sparse convolution kernel on the CPU. They are
reported as such in the :class:`LayerChoice` list so the caller can say so once.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from archs.masks import PRUNABLE_LAYERS
from utils import UserError, synchronise

KERNEL_MODES = ("dense", "sparse", "auto")
# "coo" reproduces the original program (COO weight, torch.sparse.mm) for the benchmark.
BENCHMARK_MODES = KERNEL_MODES + ("coo",)

# "auto" picks the sparse kernel for a layer at or above this sparsity. Measured on the
# target machine (2-core AMD EPYC, AVX-512, torch 2.15; `tests/benchmark_inference.py
# --crossover`) for the layer shapes of fc1 and the LeNet5 classifier inside a chain:
# at 512 images per batch CSR breaks even with dense at 65-72 % sparsity and wins
# 1.4-1.7x at 80 %; at 64 images it breaks even only at 79-86 %, which is why small
# batches also need the sparsity of MIN_SPARSE_BATCH. On fc1 as a whole (transposes
# included) 80 % gives 1.2-1.3x at 128-512 images per batch.
AUTO_SPARSITY_THRESHOLD = 0.8
# Wide layers are the exception: their activations overflow the caches (see batch_chunk)
# and the CSR kernel pays for it. LeNet5's 12544-input layer, with the batch split into
# cache-sized blocks, breaks even with dense at 83-88 % sparsity (batch 64-512) and wins
# by 1.1-1.7x at 90 %.
WIDE_LAYER_INPUTS = 4096
WIDE_LAYER_SPARSITY_THRESHOLD = 0.9
# Below this many weights (fc1's 100->10, any 10-class output layer) a layer's dense
# product takes a few microseconds, as much as the CSR kernel's fixed cost; measured, the
# sparse kernel never won for such a layer, so "auto" leaves it dense.
SMALL_LAYER_WEIGHTS = 16384
# "auto" runs small batches dense whatever the sparsity: the sparse path's fixed costs
# (transposes, one kernel call per layer) are paid per batch. Pairs of (sparsity from,
# smallest batch run sparse), measured for fc1 on 2 threads: at 80 % sparse breaks even
# at 64 images per batch and wins 1.2x at 128; at 85-90 % it loses at 32 (0.85x) and wins
# 1.2-1.6x at 64; at 95 % it wins 1.1-1.2x from 16 (1.5x at 99 %); one image at a time
# it loses even at 99 % (0.8-1.1x).
MIN_SPARSE_BATCH = ((0.95, 16), (0.85, 64), (0.0, 128))
# measure=True picks sparse only when it beats dense by this factor, so that timing noise
# and the transposes at the chain's ends cannot make "auto" slower than dense.
MEASURED_SPEEDUP_REQUIRED = 1.1

# The largest block of activations (in_features x batch columns) the CSR kernel is given
# at once; see batch_chunk. Measured: 3 MiB blocks fastest, 12 MiB already 1.5x slower.
CSR_BLOCK_BYTES = 4 * 1024 * 1024

AGREEMENT_TOLERANCE = 1e-5

CONVOLUTION_REASON = "convolution: torch has no sparse convolution kernel, runs dense"
# Modules that may sit between linear layers of a chain: the identity at inference.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.AlphaDropout)


@dataclass(frozen=True)
class LayerChoice:
    """The kernel one prunable layer runs with, and why."""
    name: str         # the weight's state-dict name, as in the masks
    sparsity: float   # fraction of the weight's entries that are zero
    kernel: str       # "dense", "sparse" or "coo"
    reason: str


@dataclass(frozen=True)
class Agreement:
    """How close a converted model's outputs are to the original's."""
    relative_error: float
    tolerance: float

    @property
    def agrees(self) -> bool:
        return self.relative_error < self.tolerance


# --------------------------------------------------------------------------- kernels
def _csr_without_beta_warning(dense: torch.Tensor) -> torch.Tensor:
    # torch warns once per process that CSR support is "beta"; the operations used here
    # are covered by tests/test_sparse.py, so the warning would only alarm the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return dense.to_sparse_csr()


def contiguous(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix.contiguous()``, faster for a transposed matrix.

    torch copies a transposed 2-D tensor with a serial blocked loop; the same copy seen
    as 3-D goes through its parallel, vectorised element-wise path instead (measured:
    1.2x faster on one thread, 2x on two, for a 512 x 784 batch).
    """
    if matrix.is_contiguous():
        return matrix
    return matrix.unsqueeze(0).contiguous().squeeze(0)


def batch_chunk(in_features: int, batch: int, element_size: int) -> int:
    """How many batch columns the CSR kernel should process at a time.

    Every stored weight reads one whole row of the (in x columns) activation block, in no
    particular order; once that block outgrows the cache, each read goes to memory. Wide
    layers are therefore run on column blocks of at most :data:`CSR_BLOCK_BYTES`
    (LeNet5's 12544-input layer at batch 512: 1.5-2x faster in blocks of 64 columns).
    Narrow layers such as fc1's are not split.
    """
    columns = CSR_BLOCK_BYTES // max(in_features * element_size, 1)
    if columns >= batch:
        return batch
    # multiples of 16 keep each row of a block a whole number of AVX-512 vectors
    return max(16, columns // 16 * 16)


def _column(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as an (out x 1) column, broadcast over the batch columns."""
    return None if bias is None else bias.detach().reshape(-1, 1).clone()


class SparseLinear(nn.Module):
    """``act(W h + b)`` on feature-major activations ``h`` (in x batch), ``W`` stored as CSR.

    The CSR parts are kept as ordinary buffers (so ``.to()``, ``deepcopy`` and
    ``state_dict`` work as for any module) and wrapped into a CSR tensor per call, which
    copies no data.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool):
        super().__init__()
        csr = _csr_without_beta_warning(weight.detach())
        self.out_features, self.in_features = weight.shape
        self.relu = relu
        self.register_buffer("crow_indices", csr.crow_indices().clone())
        self.register_buffer("col_indices", csr.col_indices().clone())
        self.register_buffer("values", csr.values().clone())
        self.register_buffer("bias_column", _column(bias))

    def csr_weight(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                       (self.out_features, self.in_features),
                                       check_invariants=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` may be a strided view, e.g. the transpose of a batch-major input."""
        weight = self.csr_weight()
        if h.device.type != "cpu":
            out = weight @ contiguous(h)     # the reduce kernel is CPU-only; cuSPARSE here
        else:
            columns = batch_chunk(self.in_features, h.shape[1], h.element_size())
            if columns >= h.shape[1]:
                out = torch.sparse.mm(weight, contiguous(h), "sum")
            else:
                out = torch.empty(self.out_features, h.shape[1], dtype=h.dtype, device=h.device)
                for start in range(0, h.shape[1], columns):
                    part = contiguous(h[:, start:start + columns])
                    out[:, start:start + columns] = torch.sparse.mm(weight, part, "sum")
        if self.bias_column is not None:
            out.add_(self.bias_column)
        return out.relu_() if self.relu else out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nonzeros={self.values.numel()}, relu={self.relu}")


class DenseTransposedLinear(nn.Module):
    """``act(W h + b)`` on feature-major activations with a dense ``W``.

    Used for the layers of a chain that are not sparse enough to gain from CSR: computing
    them feature-major costs the same as ``nn.Linear`` and saves two transposes.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool):
        super().__init__()
        self.relu = relu
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias_column", _column(bias))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.bias_column is None:
            out = torch.mm(self.weight, h)
        else:
            out = torch.addmm(self.bias_column, self.weight, h)
        return out.relu_() if self.relu else out

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"in_features={in_features}, out_features={out_features}, relu={self.relu}"


class TransposedChain(nn.Module):
    """Consecutive linear layers run on feature-major activations.

    Takes and returns batch-major tensors like ``nn.Linear`` (any leading dimensions);
    transposes once on entry (reading only the input features some layer uses) and once
    on exit. With a ``dense_fallback`` (the original modules), batches of fewer than
    ``min_batch`` rows run that instead: "auto" uses it because small batches cannot
    pay the sparse path's fixed costs (see :func:`min_sparse_batch`).
    """

    def __init__(self, layers: Sequence[nn.Module], in_features: int,
                 used_inputs: torch.Tensor | None,
                 dense_fallback: Sequence[nn.Module] | None = None, min_batch: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_features = in_features
        self.register_buffer("used_inputs", used_inputs)
        self.dense_fallback = None if dense_fallback is None else nn.ModuleList(dense_fallback)
        self.min_batch = min_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_fallback is not None and x.numel() < self.min_batch * self.in_features:
            # On the small batches this serves the chain's own call costs ~3 us, 10 % of a
            # one-image fc1 pass; calling forward() directly skips the hook machinery of
            # the private fallback modules (no one can have hooked them) and wins it back.
            for module in self.dense_fallback:
                x = module.forward(x)
            return x
        leading = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if self.used_inputs is None:
            h = rows.t()    # a view: the first layer copies it in the layout it needs
        else:
            h = rows.t().index_select(0, self.used_inputs)
        for layer in self.layers:
            h = layer(h)
        return contiguous(h.t()).reshape(*leading, h.shape[0])


class CooLinear(nn.Module):
    """The original program's sparse layer: COO weight, ``torch.sparse.mm``, batch-major.

    Kept only so the benchmark can compare against it; it is slower than dense below
    about 96 % sparsity.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.detach().to_sparse().coalesce())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        out = torch.sparse.mm(self.weight, x.reshape(-1, x.shape[-1]).t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, out.shape[-1])


# --------------------------------------------------------------------------- exact compaction
@dataclass
class _Affine:
    """One layer of a chain: ``act(weight @ h + bias)``, act = ReLU or identity."""
    weight: torch.Tensor          # (out, in)
    bias: torch.Tensor            # (out,), zeros when the layer has none
    has_bias: bool
    relu: bool
    kernel: str                   # "dense" or "sparse"


def _compact_chain(layers: list[_Affine]) -> tuple[list[_Affine], torch.Tensor | None]:
    """Drop the rows and columns of a chain that provably do not change its output.

    Returns the new layers and the indices of the chain's input features still read
    (``None`` when all are). Forward pass: an empty row of layer k makes its unit the
    constant ``act(b)``; its effect on layer k+1 is moved into layer k+1's bias and the
    unit is removed (the last layer keeps all its units: they are the output). Backward
    pass: an empty column of layer k+1 means unit j of layer k is read by nobody; it is
    removed. Neither pass can create work for the other: removing zero columns never
    empties a row that had nonzeros.
    """
    layers = list(layers)
    for k in range(len(layers) - 1):
        layer, nxt = layers[k], layers[k + 1]
        empty_rows = (layer.weight == 0).all(dim=1)
        if not empty_rows.any():
            continue
        constants = layer.bias[empty_rows]
        if layer.relu:
            constants = constants.clamp_min(0)
        # float64 so that folding adds no rounding beyond the final cast
        folded = nxt.weight[:, empty_rows].double() @ constants.double()
        keep = ~empty_rows
        layers[k] = replace(layer, weight=layer.weight[keep], bias=layer.bias[keep])
        layers[k + 1] = replace(nxt, weight=nxt.weight[:, keep],
                                 bias=(nxt.bias.double() + folded).to(nxt.bias.dtype),
                                 has_bias=nxt.has_bias or bool((folded != 0).any()))
    for k in range(len(layers) - 1, 0, -1):
        layer, prev = layers[k], layers[k - 1]
        read = (layer.weight != 0).any(dim=0)
        if read.all():
            continue
        layers[k] = replace(layer, weight=layer.weight[:, read])
        layers[k - 1] = replace(prev, weight=prev.weight[read], bias=prev.bias[read])
    read = (layers[0].weight != 0).any(dim=0)
    if read.all():
        return layers, None
    layers[0] = replace(layers[0], weight=layers[0].weight[:, read])
    return layers, read.nonzero().flatten()


def _build_layer(layer: _Affine) -> nn.Module:
    bias = layer.bias if layer.has_bias else None
    # CSR of a matrix with no rows or columns is an edge case the kernels need not handle;
    # the dense product of an empty matrix is exact and free.
    if layer.kernel == "sparse" and layer.weight.numel() > 0:
        return SparseLinear(layer.weight, bias, layer.relu)
    return DenseTransposedLinear(layer.weight, bias, layer.relu)


# --------------------------------------------------------------------------- choosing kernels
def weight_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exactly-zero entries."""
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 0.0


def effective_sparsity(weight: torch.Tensor) -> float:
    """Sparsity once empty rows and columns are dropped: what the dense kernel still pays."""
    nonzero = weight != 0
    live = int(nonzero.any(dim=1).sum()) * int(nonzero.any(dim=0).sum())
    return 1.0 - int(nonzero.sum()) / live if live else 1.0


def threshold_for(linear: nn.Linear, threshold: float | None) -> float:
    """The sparsity from which "auto" runs this layer sparse (see the constants above)."""
    if threshold is not None:
        return threshold
    if linear.in_features > WIDE_LAYER_INPUTS:
        return WIDE_LAYER_SPARSITY_THRESHOLD
    return AUTO_SPARSITY_THRESHOLD


def min_sparse_batch(sparsity: float) -> int:
    """The smallest batch "auto" runs sparse at this sparsity (see MIN_SPARSE_BATCH)."""
    return next(batch for lowest, batch in MIN_SPARSE_BATCH if sparsity >= lowest)


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int = 7,
                   warmup: int = 2) -> float:
    """Median wall time of ``run()``; the median shrugs off the odd descheduled call."""
    def timed() -> float:
        synchronise(device)
        start = time.perf_counter()
        run()
        synchronise(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        run()
    return statistics.median(timed() for _ in range(repeats))


def _measure_layer(linear: nn.Linear, relu: bool, x: torch.Tensor) -> tuple[float, float]:
    """(dense, sparse) seconds for one layer on its recorded input ``x``."""
    rows = x.reshape(-1, linear.in_features)
    h = contiguous(rows.t())
    sparse = SparseLinear(linear.weight, linear.bias, relu)

    def dense() -> torch.Tensor:
        out = linear(rows)
        return out.relu_() if relu else out

    with torch.inference_mode():
        return median_seconds(dense, x.device), median_seconds(lambda: sparse(h), x.device)


def choose_kernel(name: str, linear: nn.Linear, relu: bool, mode: str, threshold: float | None,
                  recorded_input: torch.Tensor | None, device: torch.device) -> LayerChoice:
    """The kernel of one linear layer (``name`` is its weight's) in "sparse" or "auto" mode.

    ``device`` is where the layer will run. "auto" times both kernels when given the layer's
    ``recorded_input``; otherwise it compares the sparsity with a threshold, which by default
    was measured on a CPU and says nothing about another device: there the layer stays dense.
    """
    sparsity = weight_sparsity(linear.weight)
    if mode == "sparse":
        if sparsity > 0:
            return LayerChoice(name, sparsity, "sparse", "pruned linear layer")
        return LayerChoice(name, sparsity, "dense", "not pruned")
    if sparsity == 0:
        return LayerChoice(name, sparsity, "dense", "not pruned")
    if recorded_input is not None:
        dense_s, sparse_s = _measure_layer(linear, relu, recorded_input)
        speedup = dense_s / sparse_s
        kernel = "sparse" if speedup >= MEASURED_SPEEDUP_REQUIRED else "dense"
        return LayerChoice(name, sparsity, kernel, f"measured: sparse {speedup:.2f}x dense "
                                                   f"(needs {MEASURED_SPEEDUP_REQUIRED}x)")
    if threshold is None and device.type != "cpu":
        return LayerChoice(name, sparsity, "dense",
                           f"on {device.type} auto runs dense unless the kernels are timed "
                           "(--measure_auto): its sparsity thresholds were measured on a CPU")
    if linear.weight.numel() < SMALL_LAYER_WEIGHTS:
        return LayerChoice(name, sparsity, "dense",
                           f"small layer ({linear.weight.numel()} weights < "
                           f"{SMALL_LAYER_WEIGHTS}): the sparse kernel's fixed cost dominates")
    effective = effective_sparsity(linear.weight)
    cutoff = threshold_for(linear, threshold)
    kernel = "sparse" if effective >= cutoff else "dense"
    sign = ">=" if kernel == "sparse" else "<"
    detail = "" if effective == sparsity else " once empty rows/columns are dropped"
    return LayerChoice(name, sparsity, kernel,
                       f"sparsity {effective:.3f}{detail} {sign} threshold {cutoff:.2f}")


# --------------------------------------------------------------------------- finding chains
@dataclass
class _Run:
    """Children of an ``nn.Sequential`` that can share feature-major activations.

    A Linear, then any mix of Linears, ReLUs and modules that are the identity at
    inference. ``linears`` holds (child name, module, whether a ReLU follows it).
    """
    children: list[tuple[str, nn.Module]]
    linears: list[tuple[str, nn.Linear, bool]]


def _linear_runs(children: Iterable[tuple[str, nn.Module]]) -> list[_Run]:
    runs: list[_Run] = []
    current: _Run | None = None
    for name, module in children:
        if isinstance(module, nn.Linear):
            current = current or _Run([], [])
            current.linears.append((name, module, False))
        elif current is not None and isinstance(module, nn.ReLU):
            last_name, last_linear, _ = current.linears[-1]
            current.linears[-1] = (last_name, last_linear, True)
        elif current is None or not isinstance(module, _PASS_THROUGH):
            if current is not None:
                runs.append(current)
            current = None
            continue
        current.children.append((name, module))
    if current is not None:
        runs.append(current)
    return runs


def _record_linear_inputs(model: nn.Module,
                          example_input: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input every ``nn.Linear`` of ``model`` sees when ``model`` runs ``example_input``."""
    recorded: dict[nn.Module, torch.Tensor] = {}

    def remember(module: nn.Module, args: tuple) -> None:
        recorded[module] = args[0].detach().clone()

    handles = [m.register_forward_pre_hook(remember) for m in model.modules()
               if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


# --------------------------------------------------------------------------- conversion
@dataclass(frozen=True)
class _Settings:
    mode: str
    threshold: float | None
    recorded_inputs: dict      # nn.Linear -> its input on the example (measure=True only)
    module_names: dict         # module -> its qualified name in the model


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _as_affine(linear: nn.Linear, relu: bool, kernel: str) -> _Affine:
    weight = linear.weight.detach()
    bias = (linear.bias.detach() if linear.bias is not None
            else torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))
    return _Affine(weight=weight, bias=bias, has_bias=linear.bias is not None, relu=relu,
                   kernel=kernel)


def _chain_is_faster(original: list[nn.Module], chain: nn.Module, x: torch.Tensor) -> bool:
    def dense() -> torch.Tensor:
        h = x
        for module in original:
            h = module(h)
        return h

    with torch.inference_mode():
        chain_s = median_seconds(lambda: chain(x), x.device)
        dense_s = median_seconds(dense, x.device)
    return chain_s * MEASURED_SPEEDUP_REQUIRED <= dense_s


def _convert_run(run: _Run,
                 settings: _Settings) -> tuple[dict[str, nn.Module | None], list[LayerChoice]]:
    """What replaces the children of ``run`` (name -> module, None = removed) and the choices.

    Leading dense layers keep their original modules (batch-major, no transposes). From
    the first sparse layer on, the run becomes one :class:`TransposedChain`; its dense
    layers are computed feature-major, which costs the same as ``nn.Linear``.
    """
    choices = [choose_kernel(_weight_name(settings.module_names[linear]), linear, relu,
                             settings.mode, settings.threshold,
                             settings.recorded_inputs.get(linear), linear.weight.device)
               for _, linear, relu in run.linears]
    sparse_positions = [i for i, choice in enumerate(choices) if choice.kernel == "sparse"]
    if not sparse_positions:
        return {}, choices
    first = sparse_positions[0]
    first_name, first_linear, _ = run.linears[first]
    layers = [_as_affine(linear, relu, choice.kernel)
              for (_, linear, relu), choice in zip(run.linears[first:], choices[first:])]
    compacted, used_inputs = _compact_chain(layers)
    chain = TransposedChain([_build_layer(layer) for layer in compacted],
                            first_linear.in_features, used_inputs)

    start = [name for name, _ in run.children].index(first_name)
    segment = run.children[start:]
    recorded = settings.recorded_inputs.get(first_linear)
    if recorded is not None and not _chain_is_faster([m for _, m in segment], chain, recorded):
        reason = "measured: the sparse chain, transposes included, was not faster than dense"
        return {}, choices[:first] + [LayerChoice(c.name, c.sparsity, "dense", reason)
                                      for c in choices[first:]]
    if settings.mode == "auto":
        sparse_weights = [layer.weight for layer, choice in zip(layers, choices[first:])
                          if choice.kernel == "sparse"]
        nonzero = sum(int(torch.count_nonzero(w)) for w in sparse_weights)
        min_batch = min_sparse_batch(1 - nonzero / sum(w.numel() for w in sparse_weights))
        chain = TransposedChain(chain.layers, chain.in_features, chain.used_inputs,
                                dense_fallback=[m for _, m in segment], min_batch=min_batch)
        note = f"; batches under {min_batch} run dense"
        choices = [replace(c, reason=c.reason + note) if c.kernel == "sparse" else c
                   for c in choices]
    replacement: dict[str, nn.Module | None] = {name: None for name, _ in segment}
    replacement[first_name] = chain
    return replacement, choices


def _rebuild(module: nn.Module, settings: _Settings, choices: list[LayerChoice]) -> nn.Module:
    """``module`` with its linear layers converted, recursing into its children.

    A plain ``nn.Sequential`` is rebuilt so that a chain can replace several children; any
    other container keeps its own ``forward`` and has its linear layers converted one by
    one (each then transposes on its own).
    """
    if isinstance(module, nn.Linear):
        lone = _Run(children=[("", module)], linears=[("", module, False)])
        replacement, run_choices = _convert_run(lone, settings)
        choices.extend(run_choices)
        return replacement.get("", module)
    if type(module) is nn.Sequential:
        children = list(module.named_children())
        replacement: dict[str, nn.Module | None] = {}
        in_runs: set[str] = set()
        for run in _linear_runs(children):
            run_replacement, run_choices = _convert_run(run, settings)
            replacement.update(run_replacement)
            choices.extend(run_choices)
            in_runs.update(name for name, _ in run.children)
        kept = OrderedDict()
        for name, child in children:
            if name in replacement:
                if replacement[name] is not None:
                    kept[name] = replacement[name]
            else:
                kept[name] = child if name in in_runs else _rebuild(child, settings, choices)
        return nn.Sequential(kept)
    for name, child in list(module.named_children()):
        setattr(module, name, _rebuild(child, settings, choices))
    return module


def _with_coo_linears(module: nn.Module, settings: _Settings,
                      choices: list[LayerChoice]) -> nn.Module:
    """Every ``nn.Linear`` replaced by :class:`CooLinear`, as the original program did."""
    if isinstance(module, nn.Linear):
        name = _weight_name(settings.module_names[module])
        choices.append(LayerChoice(name, weight_sparsity(module.weight), "coo",
                                   "original program's approach: every linear layer as COO"))
        return CooLinear(module.weight, module.bias)
    for name, child in list(module.named_children()):
        setattr(module, name, _with_coo_linears(child, settings, choices))
    return module


def _check_arguments(mode: str, threshold: float | None, measure: bool,
                     example_input: torch.Tensor | None) -> None:
    if mode not in BENCHMARK_MODES:
        raise UserError(f"unknown kernel mode {mode!r}; choose one of {', '.join(KERNEL_MODES)}")
    if measure and mode != "auto":
        raise UserError("measuring the kernels only applies to the 'auto' kernel mode")
    if measure and example_input is None:
        raise UserError("measuring the kernels needs an example input batch")
    if measure and threshold is not None:
        raise UserError("give either a sparsity threshold or measure the kernels, not both")
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError(f"the sparsity threshold must be in [0, 1], got {threshold}")


def sparsify(model: nn.Module, mode: str, *, threshold: float | None = None, measure: bool = False,
             example_input: torch.Tensor | None = None) -> tuple[nn.Module, list[LayerChoice]]:
    """An inference-only copy of ``model`` whose linear layers use the chosen kernels.

    ``mode``: "dense" returns an unchanged copy; "sparse" runs every pruned ``nn.Linear``
    (any zero weight) with the CSR kernel; "auto" runs a layer sparse only where that is
    faster: by its sparsity against :func:`threshold_for` (``threshold`` overrides the
    default constants; layers under :data:`SMALL_LAYER_WEIGHTS` stay dense), or, with
    ``measure=True``, by timing both kernels on the activations ``example_input``
    produces at that layer (and keeping a chain only if it beats dense as a whole). On a
    device other than the CPU the default thresholds do not apply: "auto" without
    ``measure`` or ``threshold`` runs every layer dense there.
    "coo" (benchmark only) is the original program's COO approach. The copy is in eval
    mode without gradients; the original is not modified. Returns the copy and one
    :class:`LayerChoice` per prunable layer (convolutions included), in the model's order.
    """
    _check_arguments(mode, threshold, measure, example_input)
    converted = copy.deepcopy(model).eval().requires_grad_(False)
    module_names = {module: name for name, module in converted.named_modules()}
    settings = _Settings(mode, threshold, {}, module_names)
    made: list[LayerChoice] = []
    if mode == "coo":
        converted = _with_coo_linears(converted, settings, made)
    elif mode != "dense":
        if measure:
            settings = _Settings(mode, threshold, _record_linear_inputs(converted, example_input),
                                 module_names)
        converted = _rebuild(converted, settings, made)
    # eval() again: the modules created by the conversion start in training mode
    converted.eval()
    return converted, _choices_in_model_order(module_names, made)


def _choices_in_model_order(module_names: dict[nn.Module, str],
                            made: list[LayerChoice]) -> list[LayerChoice]:
    by_name = {choice.name: choice for choice in made}
    choices = []
    for module, module_name in module_names.items():
        if not isinstance(module, PRUNABLE_LAYERS):
            continue
        name = _weight_name(module_name)
        sparsity = weight_sparsity(module.weight)
        if name in by_name:
            choices.append(by_name[name])
        elif isinstance(module, nn.Linear):
            choices.append(LayerChoice(name, sparsity, "dense", "dense mode"))
        else:
            choices.append(LayerChoice(name, sparsity, "dense", CONVOLUTION_REASON))
    return choices


# --------------------------------------------------------------------------- checking
def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` (Frobenius), computed in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = torch.linalg.norm(expected)
    difference = torch.linalg.norm(actual - expected)
    if scale == 0:
        return 0.0 if difference == 0 else float("inf")
    return float(difference / scale)


def compare_outputs(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor,
                    tolerance: float = AGREEMENT_TOLERANCE) -> Agreement:
    """Run both models on ``inputs`` and measure how far ``candidate`` is from ``reference``."""
    with torch.inference_mode():
        expected = reference(inputs)
        actual = candidate(inputs)
    return Agreement(relative_error(actual, expected), tolerance)
