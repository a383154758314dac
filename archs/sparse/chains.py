"""Chains: consecutive linear layers (and their ReLUs) replaced by one module, and the exact
compaction of empty rows and columns before a chain is built."""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from archs.sparse.common import (DENSE, NUMBA_CSR, NUMBA_TILED, contiguous, load_numba_kernels,
                                 numpy_buffers)
from archs.sparse.layers import (DenseTransposedLinear, NumbaCsrLinear, SparseLinear,
                                 layer_shape)

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
        return [[type(layer).__name__, *layer_shape(layer)] for layer in self.layers]

    def _feature_major(self, rows: torch.Tensor) -> torch.Tensor:
        if self.numba_entry and rows.device.type == "cpu" and rows.dtype == torch.float32:
            rows = rows.detach().contiguous()
            h = torch.empty(len(self.entry_features), rows.shape[0], dtype=rows.dtype)
            load_numba_kernels().gather_transposed(rows.numpy(), self.entry_features.numpy(),
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
    :func:`archs.sparse.numba_kernels.tiled_chain`); the first layer's columns index the chain's
    input features directly, so the unused ones are transposed with the rest (cheap:
    in registers) but never multiplied (``used_inputs`` is kept for the record).
    """

    def __init__(self, layers: Sequence["Affine"], in_features: int,
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
        self.width = load_numba_kernels().chain_width(in_features, self.layer_table.numpy())

    def layer_shapes(self) -> list[list]:
        return self.shapes

    _ARRAYS = ("layer_table", "crow", "col", "values", "bias")

    def _run(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.dtype != torch.float32 or rows.device.type != "cpu":
            raise TypeError(f"the tiled numba chain takes float32 CPU input, got {rows.dtype} "
                            f"on {rows.device.type}")
        rows = rows.detach().contiguous()
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        load_numba_kernels().tiled_chain(rows.numpy(), *numpy_buffers(self, self._ARRAYS), out.numpy(),
                                     torch.get_num_threads(), self.width)
        return out

    def extra_repr(self) -> str:
        return "layers=" + ", ".join(
            f"{inputs}->{outputs} ({stored} stored{', relu' if relu else ''})"
            for _, outputs, inputs, stored, relu in self.shapes)



# --------------------------------------------------------------------------- exact compaction
@dataclass
class Affine:
    """One layer of a chain: ``act(weight @ h + bias)``, act = ReLU or identity."""
    weight: torch.Tensor          # (out, in)
    bias: torch.Tensor            # (out,), zeros when the layer has none
    has_bias: bool
    relu: bool
    kernel: str                   # DENSE, TORCH_CSR or NUMBA_CSR


def compact_chain(layers: list[Affine]) -> tuple[list[Affine], torch.Tensor | None]:
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


def build_layer(layer: Affine) -> nn.Module:
    bias = layer.bias if layer.has_bias else None
    # CSR of a matrix with no rows or columns is an edge case the kernels need not handle;
    # the dense product of an empty matrix is exact and free.
    if layer.weight.numel() == 0 or layer.kernel == DENSE:
        return DenseTransposedLinear(layer.weight, bias, layer.relu)
    if layer.kernel == NUMBA_CSR:
        return NumbaCsrLinear(layer.weight, bias, layer.relu)
    return SparseLinear(layer.weight, bias, layer.relu)


