"""Fast inference for pruned networks: sparse kernels for linear layers and convolutions.

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
  (:func:`archs.sparse.numba_kernels.tiled_chain`): tiles of 16 images go through every layer on one
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
medians: :mod:`archs.sparse.timing`), keeps the fastest, and then times the assembled
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

Convolutions: "sparse" and "auto" replace each run of convolutions (BatchNorm folded,
ReLU and max-pools fused) with numba's direct sparse convolution, "numba_conv"
(:mod:`archs.sparse.conv`); "auto" keeps it only where timed at least
:data:`MEASURED_SPEEDUP_REQUIRED` times faster than the original modules.

Modules: :mod:`.common` (names, the choice record, helpers), :mod:`.layers` (one linear
layer per kernel), :mod:`.chains` (chains of linear layers, exact compaction),
:mod:`.choice` (timing and choosing kernels), :mod:`.conversion` (:func:`sparsify`),
:mod:`.conv` and :mod:`.conv_conversion` (sparse convolution chains and where they
replace a network's modules), :mod:`.timing` (timing on the machine at hand, the timing
cache), :mod:`.cuda` (a model on a GPU: dense, torch's CSR or 2:4 semi-structured per layer),
and numba's kernels, imported on first use: :mod:`.numba_kernels` (linear),
:mod:`.numba_conv` (convolution), :mod:`.numba_vectors` (their LLVM vector steps).
"""
from archs.sparse.chains import LinearChain, NumbaTiledChain, TransposedChain
from archs.sparse.choice import candidate_layers, choose_kernel, time_layer
from archs.sparse.common import (AGREEMENT_TOLERANCE, BENCHMARK_MODES, CONVOLUTION_REASON,
                                 CSR_BLOCK_BYTES, KERNEL_MODES, MEASURED_SPEEDUP_REQUIRED,
                                 Agreement, LayerChoice, batch_chunk, compare_outputs,
                                 contiguous, effective_sparsity, numba_applies, relative_error,
                                 weight_sparsity)
from archs.sparse.conversion import sparsify
from archs.sparse.layers import CooLinear, DenseTransposedLinear, NumbaCsrLinear, SparseLinear

__all__ = ["AGREEMENT_TOLERANCE", "BENCHMARK_MODES", "CONVOLUTION_REASON", "CSR_BLOCK_BYTES",
           "KERNEL_MODES", "MEASURED_SPEEDUP_REQUIRED", "Agreement", "CooLinear",
           "DenseTransposedLinear", "LayerChoice", "LinearChain", "NumbaCsrLinear",
           "NumbaTiledChain", "SparseLinear", "TransposedChain", "batch_chunk",
           "candidate_layers", "choose_kernel", "compare_outputs", "contiguous",
           "effective_sparsity", "numba_applies", "relative_error", "sparsify", "time_layer",
           "weight_sparsity"]
