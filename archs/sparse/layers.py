"""Single linear layers on feature-major activations (features x batch), one module per
kernel: torch's CSR, numba's CSR, dense; and the original program's COO layer."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from archs.sparse.common import batch_chunk, contiguous, load_numba_kernels, numpy_buffers

def _csr_without_beta_warning(dense: torch.Tensor) -> torch.Tensor:
    # torch warns once per process that CSR support is "beta"; the operations used here
    # are covered by tests/test_sparse.py, so the warning would only alarm the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return dense.to_sparse_csr()


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
        load_numba_kernels()    # import (and compile, the first time) now, not in a timed call

    _ARRAYS = ("crow_indices", "col_indices", "values", "bias")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = contiguous(h.detach())
        out = torch.empty(self.out_features, h.shape[1], dtype=h.dtype)
        load_numba_kernels().csr_layer(*numpy_buffers(self, self._ARRAYS), h.numpy(), out.numpy(),
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



def layer_shape(layer: nn.Module) -> list:
    """(out, in, stored weights, relu) of a chain layer: what its speed depends on."""
    if isinstance(layer, DenseTransposedLinear):
        out_features, in_features = layer.weight.shape
        return [out_features, in_features, layer.weight.numel(), layer.relu]
    return [layer.out_features, layer.in_features, layer.values.numel(), layer.relu]


