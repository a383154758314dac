"""What every part of the sparse replay shares: kernel names, the choice record, and small
helpers on tensors (layouts, sparsity, agreement with the dense model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from archs.pruning import is_nonzero

from data.settings import KERNEL_MODES  # declared torch-free, for the parsers
# "torch_csr" runs torch's CSR kernel on every pruned layer, "numba_csr" numba's per-layer
# kernel, "coo" the original program (COO weight, torch.sparse.mm): all three only for the
# benchmark's comparison.
# "semi_structured" runs every 2:4 layer with cuSPARSELt (CUDA only: archs.sparse.cuda).
BENCHMARK_MODES = KERNEL_MODES + ("torch_csr", "numba_csr", "coo", "semi_structured")

DENSE, TORCH_CSR, NUMBA_CSR, NUMBA_TILED, COO, NUMBA_CONV = (
    "dense", "torch_csr", "numba_csr", "numba_tiled", "coo", "numba_conv")
# Part of the key of every cached timing: bump it when a kernel or the way a chain is
# assembled changes, so that timings of the old code are not taken for the new.
KERNELS_VERSION = 6

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

CONVOLUTION_REASON = ("convolution the sparse kernel does not cover (it runs float32 on the CPU, "
                      "zero padding, no dilation): runs dense")

@dataclass(frozen=True)
class LayerChoice:
    """The kernel one prunable layer runs with, and why."""
    name: str         # the weight's state-dict name, as in the masks
    sparsity: float   # fraction of the weight's entries that are zero
    kernel: str       # "dense", "numba_csr", "numba_tiled", "numba_conv", "torch_csr", "semi_structured", "coo"
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


def load_numba_kernels():
    """:mod:`archs.sparse.numba_kernels`, imported on first use: numba costs a replay that never
    builds one of its kernels nothing."""
    from archs.sparse import numba_kernels
    return numba_kernels


def numpy_buffers(module: nn.Module, names: tuple[str, ...]) -> tuple:
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


def record_inputs(model: nn.Module, example_input: torch.Tensor,
                  also: Callable[[nn.Module], bool] = lambda module: False) -> dict[nn.Module, torch.Tensor]:
    """The input every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (and every module ``also``
    accepts) sees when it runs ``example_input``; copies, so later in-place work keeps them."""
    recorded: dict[nn.Module, torch.Tensor] = {}

    def remember(module: nn.Module, args: tuple) -> None:
        recorded[module] = args[0].detach().clone()

    handles = [m.register_forward_pre_hook(remember) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)) or also(m)]
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return recorded
