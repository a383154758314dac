"""Fast inference for pruned networks: sparse CSR kernels for the linear layers.

Does a pruned "winning ticket" cost less to run? Only if the zeros are skipped. This module
turns a trained (masked) model into an inference-only copy whose pruned ``nn.Linear``
layers multiply with a compressed sparse row (CSR) weight.

Why the activations are transposed. A CSR product is fast when it can add whole
contiguous rows of activations: ``W (out x in, CSR) @ h (in x batch)`` walks each row of
``W`` and adds rows of ``h``. An ``nn.Linear`` computes ``x @ W.T`` on ``x`` of shape
(batch, in), so the activations are kept *feature-major* (features x batch) instead.
Consecutive linear layers and ReLUs are fused into one :class:`TransposedChain` that
transposes once on the way in and once on the way out; in between, every layer reads and
writes feature-major activations.

Kernels (the ``kernel`` of a :class:`LayerChoice`):

* "numba_tiled": a whole chain of linear layers in one call of numba's tiled kernel
  (:func:`archs.numba_csr.tiled_chain`): tiles of 16 images go through every layer on one
  core, the sums kept in vector registers. CPU and float32 only. On a 2-core Xeon
  (AVX-512), all of fc1 at batch 512: 2.7x dense at 90 % sparsity, 7.7x at 97 %.
* "numba_csr": numba's per-layer CSR kernel on feature-major activations, whole rows of
  images at a time (fc1 at batch 512 on the same machine: 1.3x at 90 %, 2.3x at 97 %);
  it can sit in a chain beside dense layers.
* "torch_csr": torch's CSR product (``torch.sparse.mm(W, h, reduce="sum")`` on the CPU,
  cuSPARSE elsewhere); on the same CPU 0.9-1.7x dense at 90 % for fc1's first layer.
* "dense": the ordinary product; "coo": the original program's COO layer (benchmark only).

Choosing. "sparse" runs each chain with numba's tiled kernel from its first pruned layer on
(torch's CSR kernel per layer where numba does not apply). "auto" is never meant to be
slower than dense, on any machine: it times every candidate kernel for each layer on the
machine at hand, on the activations an example batch produces there (interleaved,
medians: :mod:`archs.kernel_timing`), keeps the fastest, and then times the assembled
chain, transposes included, and the tiled chain against the original layers: the fastest
is kept only if it is at least :data:`MEASURED_SPEEDUP_REQUIRED` times faster than them.
Timings are cached per processor model, torch and numba versions, thread count, layer
shape, stored weights and batch size (:class:`KernelTimingCache`). Batches smaller than the one timed
run the original dense layers. Alternatively the caller may give a sparsity
``threshold`` of its own: no timing, sparse from that sparsity on.

Empty rows and columns. Pruning can empty whole rows (an output unit that only adds its
bias) or columns (an input feature nobody reads). Inside a chain these are removed, but
only where the result provably stays the same: a unit whose row is empty outputs the
constant ``act(bias)``, which is folded into the next layer's bias through that layer's
column before both are dropped; a feature that the next layer ignores entirely is not
computed. The chain's output keeps every unit, so its shape never changes.

Exactness caveat shared by every sparse kernel: a skipped zero weight times an infinite or
NaN activation would have produced NaN in the dense product; for finite inputs the results
agree up to float rounding (relative error well under :data:`AGREEMENT_TOLERANCE`).

Convolutions stay dense: torch has no sparse convolution kernel on the CPU. They are
reported as such in the :class:`LayerChoice` list so the caller can say so once.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
import warnings
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch
from torch import nn

from archs.kernel_timing import InterleavedTimer, KernelTimingCache, Timer, timing_key
from archs.masks import PRUNABLE_LAYERS, is_nonzero
from utils import UserError

KERNEL_MODES = ("dense", "sparse", "auto")
# "torch_csr" runs torch's CSR kernel on every pruned layer, "numba_csr" numba's per-layer
# kernel, "coo" the original program (COO weight, torch.sparse.mm): all three only for the
# benchmark's comparison.
BENCHMARK_MODES = KERNEL_MODES + ("torch_csr", "numba_csr", "coo")

DENSE, TORCH_CSR, NUMBA_CSR, NUMBA_TILED, COO = (
    "dense", "torch_csr", "numba_csr", "numba_tiled", "coo")
# Part of the key of every cached timing: bump it when a kernel or the way a chain is
# assembled changes, so that timings of the old code are not taken for the new.
KERNELS_VERSION = 3

# "auto" keeps a chain only when, timed as a whole against the original layers, it is at
# least this much faster. Measured on a 2-core Intel Xeon: a chain timed at 1.06x when auto
# chose it ran at 0.86x in the benchmark that followed (fc1, 80%, batch 512), so timing noise
# between the choice and the replay reaches about 20%: below that margin, dense is kept,
# which keeps auto's promise (never under 0.95x dense) at the price of some small wins.
MEASURED_SPEEDUP_REQUIRED = 1.2

# The largest block of activations (in_features x batch columns) torch's CSR kernel is
# given at once; see batch_chunk. Measured: 3 MiB blocks fastest, 12 MiB already 1.5x slower.
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
    kernel: str       # "dense", "numba_csr", "torch_csr" or "coo"
    reason: str

    @property
    def is_sparse(self) -> bool:
        return self.kernel != DENSE


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


def _numba_kernels():
    """:mod:`archs.numba_csr`, imported on first use: numba costs a replay that never
    builds one of its kernels nothing."""
    from archs import numba_csr
    return numba_csr


def _numpy_buffers(module: nn.Module, names: tuple[str, ...]) -> tuple:
    """``module``'s buffers ``names`` as numpy arrays (sharing their memory), made once.

    Looking up four buffers and wrapping them costs ~7 us a call, a tenth of a whole fc1
    pass at 64 images. Keyed by the buffers' addresses, so ``.to()``, a copy or a loaded
    state dict that replaces them is seen.
    """
    tensors = [module._buffers[name] for name in names]
    addresses = tuple(tensor.data_ptr() for tensor in tensors)
    cached = module.__dict__.get("_numpy_cache")
    if cached is None or cached[0] != addresses:
        cached = (addresses, tuple(tensor.numpy() for tensor in tensors))
        module.__dict__["_numpy_cache"] = cached
    return cached[1]


def numba_applies(weight: torch.Tensor) -> bool:
    """Whether the numba kernel can run this layer: it is compiled for float32 on the CPU."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32


class NumbaCsrLinear(nn.Module):
    """``act(W h + b)`` on feature-major activations ``h`` with numba's CSR kernel.

    Runs on as many threads as torch uses (``torch.get_num_threads()``), so that
    ``--threads`` means the same for every kernel. CPU and float32 only (see
    :func:`numba_applies`).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool):
        super().__init__()
        csr = _csr_without_beta_warning(weight.detach())
        self.out_features, self.in_features = weight.shape
        self.relu = relu
        self.register_buffer("crow_indices", csr.crow_indices().to(torch.int64).contiguous())
        self.register_buffer("col_indices", csr.col_indices().to(torch.int32).contiguous())
        self.register_buffer("values", csr.values().contiguous().clone())
        bias = torch.zeros(self.out_features, dtype=weight.dtype) if bias is None else bias
        self.register_buffer("bias", bias.detach().contiguous().clone())
        _numba_kernels()    # import (and compile, the first time) now, not in a timed call

    _ARRAYS = ("crow_indices", "col_indices", "values", "bias")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = contiguous(h.detach())
        out = torch.empty(self.out_features, h.shape[1], dtype=h.dtype)
        _numba_kernels().csr_layer(*_numpy_buffers(self, self._ARRAYS), h.numpy(), out.numpy(),
                                   self.relu, torch.get_num_threads())
        return out

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


class LinearChain(nn.Module):
    """Consecutive linear layers (and their ReLUs) replaced by one module.

    Takes and returns batch-major tensors like ``nn.Linear`` (any leading dimensions). With a
    ``dense_fallback`` (the original modules), batches of fewer than ``min_batch`` rows run
    that instead: "auto" timed the chain at one batch size, and smaller batches pay its
    fixed costs over fewer images. Subclasses compute the chain in :meth:`_run`.
    """

    def __init__(self, in_features: int, used_inputs: torch.Tensor | None,
                 dense_fallback: Sequence[nn.Module] | None, min_batch: int):
        super().__init__()
        self.in_features = in_features
        self.register_buffer("used_inputs", used_inputs)
        self._set_fallback(dense_fallback, min_batch)

    def _set_fallback(self, dense_fallback: Sequence[nn.Module] | None, min_batch: int) -> None:
        self.dense_fallback = None if dense_fallback is None else nn.ModuleList(dense_fallback)
        self.min_batch = min_batch

    def with_dense_fallback(self, dense_fallback: Sequence[nn.Module],
                            min_batch: int) -> "LinearChain":
        """A copy (sharing this chain's tensors) that runs batches under ``min_batch`` rows
        with ``dense_fallback``."""
        chain = copy.copy(self)
        chain._modules = dict(self._modules)
        chain._buffers = dict(self._buffers)
        chain._set_fallback(dense_fallback, min_batch)
        return chain

    def layer_shapes(self) -> list[list]:
        """Per layer: kind, out, in, stored weights, ReLU (what its speed depends on)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_fallback is not None and x.numel() < self.min_batch * self.in_features:
            # Calling forward() directly skips the hook machinery of the private fallback
            # modules (no one can have hooked them): ~3 us, 10 % of a one-image fc1 pass.
            for module in self.dense_fallback:
                x = module.forward(x)
            return x
        leading = x.shape[:-1]
        out = self._run(x.reshape(-1, self.in_features))
        return out.reshape(*leading, out.shape[-1])

    def _run(self, rows: torch.Tensor) -> torch.Tensor:
        """The chain on batch-major ``rows`` (images x in_features), batch-major out."""
        raise NotImplementedError


class TransposedChain(LinearChain):
    """Consecutive linear layers run on feature-major activations, one module per layer.

    Transposes once on entry (reading only the input features some layer uses) and once on
    exit. When the first layer is numba's, numba also does the entry transpose (faster than
    torch's on the CPU).
    """

    def __init__(self, layers: Sequence[nn.Module], in_features: int,
                 used_inputs: torch.Tensor | None,
                 dense_fallback: Sequence[nn.Module] | None = None, min_batch: int = 0):
        super().__init__(in_features, used_inputs, dense_fallback, min_batch)
        self.layers = nn.ModuleList(layers)
        self.numba_entry = isinstance(self.layers[0], NumbaCsrLinear)
        if self.numba_entry and used_inputs is None:
            self.register_buffer("entry_features", torch.arange(in_features))
        else:
            self.register_buffer("entry_features", used_inputs)

    def layer_shapes(self) -> list[list]:
        return [[type(layer).__name__, *_layer_shape(layer)] for layer in self.layers]

    def _feature_major(self, rows: torch.Tensor) -> torch.Tensor:
        if self.numba_entry and rows.device.type == "cpu" and rows.dtype == torch.float32:
            rows = rows.detach().contiguous()
            h = torch.empty(len(self.entry_features), rows.shape[0], dtype=rows.dtype)
            _numba_kernels().gather_transposed(rows.numpy(), self.entry_features.numpy(),
                                               h.numpy(), torch.get_num_threads())
            return h
        if self.used_inputs is None:
            return rows.t()    # a view: the first layer copies it in the layout it needs
        return rows.t().index_select(0, self.used_inputs)

    def _run(self, rows: torch.Tensor) -> torch.Tensor:
        h = self._feature_major(rows)
        for layer in self.layers:
            h = layer(h)
        return contiguous(h.t())


class NumbaTiledChain(LinearChain):
    """Consecutive linear layers in one call of numba's tiled kernel (CPU, float32).

    Every layer's CSR weight is packed into one set of arrays (see
    :func:`archs.numba_csr.tiled_chain`); the first layer's columns index the chain's
    input features directly, so the unused ones are transposed with the rest (cheap:
    in registers) but never multiplied (``used_inputs`` is kept for the record).
    """

    def __init__(self, layers: Sequence["_Affine"], in_features: int,
                 used_inputs: torch.Tensor | None,
                 dense_fallback: Sequence[nn.Module] | None = None, min_batch: int = 0):
        super().__init__(in_features, used_inputs, dense_fallback, min_batch)
        self.shapes = [[NUMBA_TILED, *layer.weight.shape, int(torch.count_nonzero(layer.weight)),
                        layer.relu] for layer in layers]
        rows, cols, values, biases, table = [torch.zeros(1, dtype=torch.int64)], [], [], [], []
        stored = row = 0
        for index, layer in enumerate(layers):
            nonzero = layer.weight != 0
            positions = nonzero.nonzero()
            column = positions[:, 1]
            if index == 0 and used_inputs is not None:
                column = used_inputs[column]
            rows.append(stored + nonzero.sum(dim=1).cumsum(0))
            cols.append(column.to(torch.int32))
            values.append(layer.weight[nonzero].to(torch.float32))
            biases.append(layer.bias.to(torch.float32))
            table.append([layer.weight.shape[0], row, int(layer.relu)])
            stored += len(column)
            row += layer.weight.shape[0]
        self.register_buffer("layer_table", torch.tensor(table, dtype=torch.int64).reshape(-1, 3))
        self.register_buffer("crow", torch.cat(rows).to(torch.int64).contiguous())
        self.register_buffer("col", torch.cat(cols).contiguous())
        self.register_buffer("values", torch.cat(values).contiguous())
        self.register_buffer("bias", torch.cat(biases).contiguous())
        self.out_features = table[-1][0]
        # import (and compile, the first time) now, not in a timed call
        self.width = _numba_kernels().chain_width(in_features, self.layer_table.numpy())

    def layer_shapes(self) -> list[list]:
        return self.shapes

    _ARRAYS = ("layer_table", "crow", "col", "values", "bias")

    def _run(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.dtype != torch.float32 or rows.device.type != "cpu":
            raise TypeError(f"the tiled numba chain takes float32 CPU input, got {rows.dtype} "
                            f"on {rows.device.type}")
        rows = rows.detach().contiguous()
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        _numba_kernels().tiled_chain(rows.numpy(), *_numpy_buffers(self, self._ARRAYS), out.numpy(),
                                     torch.get_num_threads(), self.width)
        return out

    def extra_repr(self) -> str:
        return "layers=" + ", ".join(
            f"{inputs}->{outputs} ({stored} stored{', relu' if relu else ''})"
            for _, outputs, inputs, stored, relu in self.shapes)


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
    kernel: str                   # DENSE, TORCH_CSR or NUMBA_CSR


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
    if layer.weight.numel() == 0 or layer.kernel == DENSE:
        return DenseTransposedLinear(layer.weight, bias, layer.relu)
    if layer.kernel == NUMBA_CSR:
        return NumbaCsrLinear(layer.weight, bias, layer.relu)
    return SparseLinear(layer.weight, bias, layer.relu)


# --------------------------------------------------------------------------- choosing kernels
def weight_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exactly-zero entries."""
    # on the bits: with denormals flushed a dense layer's denormal weights compare as zero
    return 1.0 - int(is_nonzero(weight).sum()) / weight.numel() if weight.numel() else 0.0


def effective_sparsity(weight: torch.Tensor) -> float:
    """Sparsity once empty rows and columns are dropped: what the dense kernel still pays."""
    nonzero = weight != 0
    live = int(nonzero.any(dim=1).sum()) * int(nonzero.any(dim=0).sum())
    return 1.0 - int(nonzero.sum()) / live if live else 1.0


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
class _Timing:
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
               timing: _Timing) -> LayerChoice:
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
                  recorded_input: torch.Tensor | None, timing: _Timing) -> LayerChoice:
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
    recorded_inputs: dict      # nn.Linear -> its input on the example ("auto" timing only)
    module_names: dict         # module -> its qualified name in the model
    timing: _Timing


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _as_affine(linear: nn.Linear, relu: bool, kernel: str) -> _Affine:
    weight = linear.weight.detach()
    bias = (linear.bias.detach() if linear.bias is not None
            else torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))
    return _Affine(weight=weight, bias=bias, has_bias=linear.bias is not None, relu=relu,
                   kernel=kernel)


# The candidates "auto" times for a whole chain, besides the original layers ("dense"):
# each layer with the kernel timed fastest for it, and numba's tiled chain.
PER_LAYER_CHAIN, TILED_CHAIN = "chain", "numba_tiled"


def _time_chains(original: list[nn.Module], chains: dict[str, LinearChain], x: torch.Tensor,
                 timing: _Timing) -> tuple[dict[str, float], bool]:
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


def _layer_shape(layer: nn.Module) -> list:
    """(out, in, stored weights, relu) of a chain layer: what its speed depends on."""
    if isinstance(layer, DenseTransposedLinear):
        out_features, in_features = layer.weight.shape
        return [out_features, in_features, layer.weight.numel(), layer.relu]
    return [layer.out_features, layer.in_features, layer.values.numel(), layer.relu]


def _tiled_applies(layers: list[_Affine]) -> bool:
    return all(numba_applies(layer.weight) for layer in layers)


def _keep_fastest_chain(segment: list[nn.Module], candidates: dict[str, LinearChain],
                        choices: list[LayerChoice], first: int, recorded: torch.Tensor,
                        timing: _Timing) -> tuple[LinearChain | None, list[LayerChoice]]:
    """Time the candidate chains against the original layers ``segment``; the fastest if it
    beats them by :data:`MEASURED_SPEEDUP_REQUIRED`, else None, with the choices of the
    chain's layers (``choices[first:]``) updated to say why.

    Candidates: the chain of per-layer choices and numba's tiled chain. Per-layer timings
    cannot see what the tiled chain saves (one call, each tile through every layer in one
    core's cache) nor what a chain loses when it alternates between torch's and numba's
    thread pools (measured 0.85x on 2 cores): only timing whole chains can.
    """
    some_chain = next(iter(candidates.values()))
    timings, cached = _time_chains(segment, candidates, recorded, timing)
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


def _convert_run(run: _Run,
                 settings: _Settings) -> tuple[dict[str, nn.Module | None], list[LayerChoice]]:
    """What replaces the children of ``run`` (name -> module, None = removed) and the choices.

    Leading dense layers keep their original modules (batch-major, no transposes). From
    the first sparse layer on, the run becomes one chain: numba's tiled chain ("sparse"
    mode), or a :class:`TransposedChain` whose dense layers are computed feature-major,
    which costs the same as ``nn.Linear``. "auto" times both against the original layers,
    the tiled chain from the first pruned layer even when no layer alone was faster sparse.
    """
    choices = [choose_kernel(_weight_name(settings.module_names[linear]), linear, relu,
                             settings.mode, settings.threshold,
                             settings.recorded_inputs.get(linear), settings.timing)
               for _, linear, relu in run.linears]
    sparse_positions = [i for i, choice in enumerate(choices) if choice.kernel != DENSE]
    pruned_positions = [i for i, choice in enumerate(choices) if choice.sparsity > 0]
    # "auto" times chains from the first pruned layer whose input the example reached
    timed = bool(pruned_positions) and run.linears[pruned_positions[0]][1] in settings.recorded_inputs
    starts = pruned_positions if timed else sparse_positions
    if not starts:
        return {}, choices
    first = starts[0]
    first_name, first_linear, _ = run.linears[first]
    layers = [_as_affine(linear, relu, choice.kernel)
              for (_, linear, relu), choice in zip(run.linears[first:], choices[first:])]
    compacted, used_inputs = _compact_chain(layers)
    start = [name for name, _ in run.children].index(first_name)
    segment = [module for _, module in run.children[start:]]
    if timed:
        candidates = {}
        if sparse_positions:
            candidates[PER_LAYER_CHAIN] = TransposedChain(
                [_build_layer(layer) for layer in compacted], first_linear.in_features, used_inputs)
        if _tiled_applies(compacted):
            candidates[TILED_CHAIN] = NumbaTiledChain(compacted, first_linear.in_features,
                                                      used_inputs)
        if not candidates:
            return {}, choices
        chain, choices = _keep_fastest_chain(segment, candidates, choices, first,
                                             settings.recorded_inputs[first_linear],
                                             settings.timing)
        if chain is None:
            return {}, choices
    elif settings.mode == "sparse" and _tiled_applies(compacted):
        chain = NumbaTiledChain(compacted, first_linear.in_features, used_inputs)
        choices[first:] = [replace(c, kernel=NUMBA_TILED, reason=(
            "pruned linear layer" if c.is_sparse else "not pruned") + "; numba's tiled chain "
            "runs it with the chain's other layers") for c in choices[first:]]
    else:
        chain = TransposedChain([_build_layer(layer) for layer in compacted],
                                first_linear.in_features, used_inputs)
    replacement: dict[str, nn.Module | None] = {name: None for name, _ in run.children[start:]}
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
        choices.append(LayerChoice(name, weight_sparsity(module.weight), COO,
                                   "original program's approach: every linear layer as COO"))
        return CooLinear(module.weight, module.bias)
    for name, child in list(module.named_children()):
        setattr(module, name, _with_coo_linears(child, settings, choices))
    return module


def _check_arguments(mode: str, threshold: float | None,
                     example_input: torch.Tensor | None) -> None:
    if mode not in BENCHMARK_MODES:
        raise UserError(f"unknown kernel mode {mode!r}; choose one of {', '.join(KERNEL_MODES)}")
    if threshold is not None and mode != "auto":
        raise UserError("a sparsity threshold only applies to the 'auto' kernel mode")
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError(f"the sparsity threshold must be in [0, 1], got {threshold}")
    if mode == "auto" and threshold is None and example_input is None:
        raise UserError("the 'auto' kernel mode times the kernels on this machine and needs an "
                        "example input batch (or a sparsity threshold of your own)")


def sparsify(model: nn.Module, mode: str, *, example_input: torch.Tensor | None = None,
             timing_cache: KernelTimingCache | None = None, timer: Timer | None = None,
             threshold: float | None = None) -> tuple[nn.Module, list[LayerChoice]]:
    """An inference-only copy of ``model`` whose linear layers use the chosen kernels.

    ``mode``: "dense" returns an unchanged copy; "sparse" runs every pruned ``nn.Linear``
    (any zero weight) with numba's CSR kernel (torch's off the CPU or for other dtypes);
    "auto" runs each pruned layer with whichever of dense, torch's and numba's CSR kernels
    is fastest when timed on this machine with the activations ``example_input`` (a batch
    as the model will see it) produces at that layer, keeps a chain of layers only if it
    beats the original layers as a whole, and runs batches smaller than
    ``example_input`` dense. ``timing_cache`` keeps those timings between runs (None: time
    every time); ``timer`` replaces :class:`~archs.kernel_timing.InterleavedTimer` (tests).
    With a ``threshold`` instead, "auto" runs sparse every layer at least that sparse,
    without timing. "torch_csr" and "coo" are for the benchmark: torch's CSR kernel for
    every pruned layer, and the original program's COO approach. ``example_input`` is
    only used by "auto". The copy is in eval mode without gradients; the original is not
    modified. Returns the copy and one :class:`LayerChoice` per prunable layer
    (convolutions included), in the model's order.
    """
    _check_arguments(mode, threshold, example_input)
    converted = copy.deepcopy(model).eval().requires_grad_(False)
    module_names = {module: name for name, module in converted.named_modules()}
    timing = _Timing(timer, timing_cache)
    made: list[LayerChoice] = []
    if mode == COO:
        converted = _with_coo_linears(converted, _Settings(mode, None, {}, module_names, timing), made)
    elif mode != DENSE:
        timed = mode == "auto" and threshold is None
        recorded = _record_linear_inputs(converted, example_input) if timed else {}
        settings = _Settings(mode, threshold, recorded, module_names, timing)
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
