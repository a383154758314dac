"""The replay's kernels on a GPU: dense (cuDNN, cuBLAS), torch's CSR (cuSPARSE) and 2:4
semi-structured sparsity (cuSPARSELt), chosen per layer. The CSR kernels run on the CPU too.

:func:`sparsify` (archs.sparse.conversion) hands a model whose weights are on a CUDA device to
:func:`sparsify_layers`, as it does any model in the "semi_structured" mode. Every prunable
``nn.Linear`` and ``nn.Conv2d`` is replaced on its own (no chains, no BatchNorm folding: on a
GPU those save launches, not arithmetic) by one of

* "dense": the layer as it is (cuDNN's convolution, with ``cudnn.benchmark`` autotuning set
  by archs.runtime for the replay; cuBLAS's product);
* "torch_csr": the weight as a CSR matrix (``weight.to_sparse_csr()`` products through
  :class:`archs.sparse.layers.SparseLinear`: cuSPARSE on a GPU, torch's CPU kernel on the
  CPU). A convolution multiplies its weight, ``out x (in*kh*kw)``, by the unfolded input
  (``F.unfold``, im2col; a 1x1 convolution of stride 1 needs no unfolding), a batch at a time
  within :data:`UNFOLD_BYTES`. Groups other than 1 and non-zero padding modes stay dense.
  Float32 products, as the dense layer's;
* "semi_structured": ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, or CUTLASS
  where torch falls back on it) for a weight that is 2:4 along its input dimension
  (``--prune_structure 2:4`` tickets) and whose shape the backend accepts (rows and columns
  multiples of its minimum block: :func:`semi_structured_reason`). These kernels take float16
  or bfloat16 only: the weight, the bias and the layer's input are cast to
  :data:`SEMI_STRUCTURED_DTYPE` and the output back to float32. That is a precision change
  (float16 keeps 11 significant bits, about 3 decimal digits; products accumulate in float32),
  so the replay's agreement check allows :func:`agreement_tolerance` instead of float32's.

Modes: "dense"; "torch_csr" (every pruned layer CSR, where it applies); "semi_structured"
(every eligible layer, others dense); "sparse" (semi-structured where eligible, CSR for the
other pruned layers); "auto" times the candidates of each layer on the input an example batch
gives it, interleaved (:class:`archs.sparse.timing.InterleavedTimer`, which synchronises
the GPU around every sample), and keeps a sparse kernel only when it is at least
:data:`MEASURED_SPEEDUP_REQUIRED` times faster than dense; or, given a sparsity threshold, runs
sparse every layer at least that sparse.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from archs.pruning import is_n_of_m
from archs.sparse.choice import Timing, weight_name
from archs.sparse.common import (AGREEMENT_TOLERANCE, DENSE, KERNELS_VERSION, MEASURED_SPEEDUP_REQUIRED,
                                 TORCH_CSR, LayerChoice, record_inputs, weight_sparsity)
from archs.sparse.layers import SparseLinear
from archs.sparse.timing import timing_key
from utils import first_line

SEMI_STRUCTURED = "semi_structured"
GPU_MODES = ("dense", "sparse", "auto", TORCH_CSR, SEMI_STRUCTURED)
SEMI_STRUCTURED_DTYPE = torch.float16
# Relative error (Frobenius, of the logits) the replay allows a network with a layer in
# float16 (unit roundoff 4.9e-4, input and weight rounded per layer) or bfloat16 (3.9e-3).
HALF_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
UNFOLD_BYTES = 256 * 1024 * 1024   # the most unfolded input a convolution holds at once


# --------------------------------------------------------------------------- eligibility
def semi_structured_constraints(dtype: torch.dtype = SEMI_STRUCTURED_DTYPE) -> tuple[int, int]:
    """(rows, columns) the sparse weight's shape must be multiples of (and at least), for the
    backend ``to_sparse_semi_structured`` picks: cuSPARSELt, or CUTLASS when torch is told to
    (torch 2.x: cuSPARSELt 16 x 16 for float16, CUTLASS 32 x 64)."""
    from torch.sparse import SparseSemiStructuredTensor as Base
    backend = (torch.sparse.SparseSemiStructuredTensorCUTLASS if Base._FORCE_CUTLASS
               else torch.sparse.SparseSemiStructuredTensorCUSPARSELT)
    config = backend._DTYPE_SHAPE_CONSTRAINTS[dtype]
    return config.sparse_min_rows, config.sparse_min_cols


def csr_reason(module: nn.Module) -> str | None:
    """Why torch's CSR product cannot run ``module`` (None: it can)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups}: the CSR path unfolds convolutions of one group only"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return "padding other than explicit zero padding"
    elif not isinstance(module, nn.Linear):
        return f"{type(module).__name__} is neither a linear layer nor a 2-D convolution"
    return None


def semi_structured_reason(weight: torch.Tensor, module: nn.Module | None = None, device_type: str | None = None,
                           constraints: tuple[int, int] | None = None,
                           capability: tuple[int, int] | None = None) -> str | None:
    """Why the semi-structured kernel cannot run a layer with ``weight`` (None: it can): not
    on a CUDA device, one older than Ampere (compute ``capability`` 8.0, read from the weight's
    device when it is a GPU), not 2:4 along the input dimension, or a shape the backend refuses
    (``out`` and ``in*kh*kw`` multiples of ``constraints``)."""
    device_type = device_type or weight.device.type
    if device_type != "cuda":
        return "semi-structured kernels run on CUDA devices only"
    if capability is None and weight.is_cuda:
        capability = torch.cuda.get_device_capability(weight.device)
    if capability is not None and tuple(capability) < (8, 0):
        return (f"compute capability {capability[0]}.{capability[1]}: 2:4 sparse tensor cores need "
                "8.0 (Ampere) or newer")
    if module is not None and csr_reason(module) is not None:
        return csr_reason(module)
    matrix = weight.detach().reshape(weight.shape[0], -1)
    if not is_n_of_m(matrix, 2, 4):
        return "not 2:4 along the input dimension (train with --prune_structure 2:4)"
    rows, columns = constraints or semi_structured_constraints()
    out, k = matrix.shape
    if out < rows or out % rows or k < columns or k % columns:
        return f"shape {out} x {k}: needs multiples of {rows} x {columns}"
    return None


def agreement_tolerance(choices: list[LayerChoice], dtype: torch.dtype = SEMI_STRUCTURED_DTYPE) -> float:
    """The relative error a converted network may show: float32's, or half precision's when a
    layer runs semi-structured."""
    if any(choice.kernel == SEMI_STRUCTURED for choice in choices):
        return HALF_TOLERANCE[dtype]
    return AGREEMENT_TOLERANCE


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Geometry:
    """What unfolding a convolution's input needs to know of it."""
    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, module: nn.Module) -> "Geometry | None":
        if not isinstance(module, nn.Conv2d):
            return None
        return cls(module.in_channels, module.kernel_size, module.stride, module.padding, module.dilation)


def _columns(conv: Geometry, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x`` unfolded to (batch, in*kh*kw, positions), and the output's height and width."""
    height = (x.shape[2] + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) \
        // conv.stride[0] + 1
    width = (x.shape[3] + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) \
        // conv.stride[1] + 1
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0):
        return x.reshape(x.shape[0], x.shape[1], -1), (height, width)
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride), (height, width)


def _batch_pieces(conv: Geometry, x: torch.Tensor) -> int:
    per_image = conv.in_channels * math.prod(conv.kernel_size) * x.shape[2] * x.shape[3] * x.element_size()
    return max(1, UNFOLD_BYTES // max(per_image, 1))


class CsrLayer(nn.Module):
    """A linear layer or a 2-D convolution whose weight is a CSR matrix (``out x in*kh*kw``)."""

    def __init__(self, module: nn.Linear | nn.Conv2d):
        super().__init__()
        matrix = module.weight.detach().reshape(module.weight.shape[0], -1)
        self.product = SparseLinear(matrix, module.bias.detach() if module.bias is not None else None, False)
        self.conv = Geometry.of(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            rows = x.reshape(-1, x.shape[-1])
            return self.product(rows.t()).t().reshape(*x.shape[:-1], -1)
        outputs, step = [], _batch_pieces(self.conv, x)
        for start in range(0, x.shape[0], step):
            columns, (height, width) = _columns(self.conv, x[start:start + step])
            batch, k, positions = columns.shape
            out = self.product(columns.transpose(0, 1).reshape(k, batch * positions))
            outputs.append(out.reshape(-1, batch, height, width).transpose(0, 1))
        return torch.cat(outputs).contiguous()


class SemiStructuredLayer(nn.Module):
    """A linear layer or a 2-D convolution through ``to_sparse_semi_structured`` in half
    precision (see the module's docstring); CUDA only."""

    def __init__(self, module: nn.Linear | nn.Conv2d, dtype: torch.dtype = SEMI_STRUCTURED_DTYPE):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        matrix = module.weight.detach().reshape(module.weight.shape[0], -1).to(dtype).contiguous()
        self.weight = nn.Parameter(to_sparse_semi_structured(matrix), requires_grad=False)
        self.register_buffer("bias", None if module.bias is None else module.bias.detach().to(dtype))
        self.dtype = dtype
        self.conv = Geometry.of(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.linear(x.to(self.dtype), self.weight, self.bias).to(x.dtype)
        outputs, step = [], _batch_pieces(self.conv, x)
        for start in range(0, x.shape[0], step):
            columns, (height, width) = _columns(self.conv, x[start:start + step].to(self.dtype))
            batch, k, positions = columns.shape
            out = F.linear(columns.transpose(1, 2).reshape(batch * positions, k), self.weight, self.bias)
            outputs.append(out.reshape(batch, height, width, -1).permute(0, 3, 1, 2))
        return torch.cat(outputs).to(x.dtype).contiguous()


def build(module: nn.Module, kernel: str) -> nn.Module:
    if kernel == TORCH_CSR:
        return CsrLayer(module)
    if kernel == SEMI_STRUCTURED:
        return SemiStructuredLayer(module)
    return module


def try_build(module: nn.Module, kernel: str) -> tuple[nn.Module | None, str | None]:
    """(the layer, None), or (None, why) when torch refuses to build it (a backend missing from
    this torch build, say: cuSPARSELt is not in every CUDA build)."""
    try:
        return build(module, kernel), None
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        return None, f"{kernel} refused by torch: {first_line(exc)}"


# --------------------------------------------------------------------------- choosing
def candidates(module: nn.Module) -> dict[str, str | None]:
    """Each sparse kernel with why it cannot run ``module`` (None: it can)."""
    return {SEMI_STRUCTURED: semi_structured_reason(module.weight, module), TORCH_CSR: csr_reason(module)}


def choose(name: str, module: nn.Module, mode: str, threshold: float | None, recorded: torch.Tensor | None,
           timing: Timing) -> LayerChoice:
    """The kernel of one prunable layer in ``mode`` (see the module's docstring)."""
    sparsity = weight_sparsity(module.weight)
    reasons = candidates(module)
    if mode == DENSE:
        return LayerChoice(name, sparsity, DENSE, "dense mode")
    if sparsity == 0:
        return LayerChoice(name, sparsity, DENSE, "not pruned")
    if mode in (TORCH_CSR, SEMI_STRUCTURED):
        why = reasons[mode]
        return LayerChoice(name, sparsity, DENSE if why else mode, why or f"{mode} mode")
    usable = [kernel for kernel, why in reasons.items() if why is None]
    if mode == "sparse" or (mode == "auto" and threshold is not None):
        if threshold is not None and sparsity < threshold:
            return LayerChoice(name, sparsity, DENSE, f"sparsity {sparsity:.3f} < threshold {threshold:.2f}")
        if not usable:
            return LayerChoice(name, sparsity, DENSE, "; ".join(f"{k}: {w}" for k, w in reasons.items()))
        return LayerChoice(name, sparsity, usable[0], "pruned layer" + (
            f"; 2:4 in {str(SEMI_STRUCTURED_DTYPE).removeprefix('torch.')}" if usable[0] == SEMI_STRUCTURED else ""))
    if recorded is None:
        return LayerChoice(name, sparsity, DENSE, "the example input never reached this layer")
    return time_candidates(name, module, sparsity, usable, recorded, timing)


def time_candidates(name: str, module: nn.Module, sparsity: float, usable: list[str], recorded: torch.Tensor,
                    timing: Timing) -> LayerChoice:
    """Dense and every usable sparse kernel timed on ``recorded``; the fastest sparse one if it
    beats dense by :data:`MEASURED_SPEEDUP_REQUIRED`."""
    layers = {DENSE: module}
    for kernel in usable:
        layer, _ = try_build(module, kernel)
        if layer is not None:
            layers[kernel] = layer
    key = timing_key(recorded.device, kernels=KERNELS_VERSION, what=f"gpu {type(module).__name__}",
                     shape=list(module.weight.shape), nonzeros=int(torch.count_nonzero(module.weight)),
                     input=list(recorded.shape), dtype=str(module.weight.dtype),
                     conv=None if not isinstance(module, nn.Conv2d) else
                     [module.stride, module.padding, module.dilation, module.groups])
    runs = {kernel: (lambda layer=layer: layer(recorded)) for kernel, layer in layers.items()}
    timings, cached = timing.seconds(key, runs, recorded.device)
    fastest = min(timings, key=timings.get)
    compared = ", ".join(f"{k} {timings[DENSE] / timings[k]:.2f}x" for k in sorted(timings) if k != DENSE)
    source = "cached timing" if cached else "timed"
    if fastest == DENSE or timings[DENSE] / timings[fastest] < MEASURED_SPEEDUP_REQUIRED:
        return LayerChoice(name, sparsity, DENSE, f"{source}: {compared or 'no sparse kernel'} vs dense "
                           f"(needs {MEASURED_SPEEDUP_REQUIRED}x)")
    return LayerChoice(name, sparsity, fastest, f"{source}: {compared} vs dense")


def sparsify_layers(model: nn.Module, mode: str, *, example_input: torch.Tensor | None = None,
                    timing: Timing, threshold: float | None = None) -> tuple[nn.Module, list[LayerChoice]]:
    """An inference-only copy of ``model`` with every prunable layer replaced by its kernel,
    and one :class:`LayerChoice` per prunable layer in the model's order."""
    if mode not in GPU_MODES:
        raise ValueError(f"mode {mode!r} has no GPU path; choose one of {', '.join(GPU_MODES)}")
    converted = copy.deepcopy(model).eval().requires_grad_(False)
    timed = mode == "auto" and threshold is None
    recorded = record_inputs(converted, example_input) if timed and example_input is not None else {}
    choices = []
    for module_name, module in list(converted.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            choices.append(LayerChoice(weight_name(module_name), weight_sparsity(module.weight), DENSE,
                                       f"{type(module).__name__}: no sparse GPU path"))
            continue
        choice = choose(weight_name(module_name), module, mode, threshold, recorded.get(module), timing)
        replacement = None
        if choice.kernel != DENSE:
            replacement, why = try_build(module, choice.kernel)
            if replacement is None:
                choice = replace(choice, kernel=DENSE, reason=why)
        choices.append(choice)
        if replacement is not None:
            parent_name, _, child = module_name.rpartition(".")
            if not child:
                return replacement.eval(), choices
            setattr(converted.get_submodule(parent_name) if parent_name else converted, child, replacement)
    return converted.eval(), choices
