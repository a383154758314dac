"""CSR kernels of our own, compiled with numba, for the linear layers of a chain.

Why not torch's CSR kernels: on a 2-core Intel Xeon (AVX-512) they reach only 0.8-1.2x
dense at 90-97 % sparsity for fc1's layers, far below the 10-33x the FLOP count allows.

Two kernels:

* :func:`tiled_chain`, the fast one: a whole chain of linear layers (ReLU between them) in
  one call, on batch-major input and output. The images are cut into tiles of
  :data:`TILE` (16) and each thread takes whole tiles through every layer, so a tile's
  activations never leave its core's cache. Inside a tile the activations are
  feature-major (``h[feature, 0:16]``, one 64-byte line per feature) and a row of ``W``
  accumulates ``w * h[col]`` for its stored weights in registers: the inner step is one
  broadcast and one fused multiply-add on a 16-float vector, from 4 independent
  accumulators (hides the FMA latency). Numba's loop vectoriser does not keep such
  accumulators in registers (its tiled loops measured 2-3x slower), so this step and the
  16x16 transpose of the input are written as LLVM vector instructions
  (:mod:`archs.sparse.numba_vectors`); LLVM splits the 16-float vectors
  into two 8-float ones on a CPU without AVX-512. Measured on the 2-core Xeon, all of fc1
  at batch 512: 2.7x dense at 90 % sparsity, 7.7x at 97 % (the per-layer kernel below:
  1.3x, 2.3x).
* :func:`csr_layer`, one layer on feature-major activations (features x images), whole rows
  of images at a time: what a chain mixing dense and sparse layers uses.

Importing this module imports numba (about 0.5 s) and loads the compiled kernels from
numba's disk cache (or compiles them, tens of seconds, the first time), so
:mod:`archs.sparse` imports it only when a numba kernel is built.

Rounding: products are fused (FMA) and summed in a different order than the dense
product's, so results differ from it by float rounding only (relative error ~1e-7).
"""
from __future__ import annotations

import sys

import numba
import numpy as np
from numba import prange
from numba.np.ufunc.parallel import _launch_threads

from archs.sparse.numba_vectors import TILE, row_times_tile, transpose_tile


def _start_thread_pool() -> None:
    """Start numba's thread pool now, keeping torch's thread count: starting numba's OpenMP
    layer sets the OpenMP count torch shares to every core (--threads 1 read 2 afterwards)."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    _launch_threads()
    if threads:
        torch.set_num_threads(threads)


_start_thread_pool()


# Below this many multiply-adds a call runs on one thread: waking the pool (several
# microseconds) would cost more than sharing the work saves. Only decides how a call is
# run; whether the kernel is used at all is decided by timing (archs.sparse).
PARALLEL_WORK = 32_768


def _chain_on_tile(tile, x, features, layers, crow, col, values, bias, width, out):
    """The chain's output for images ``tile * TILE`` on (``x`` flat, ``features`` per image)."""
    images = out.shape[0]
    first = tile * TILE
    count = min(TILE, images - first)
    last = layers.shape[0] - 1
    # two halves, a layer's input and output, 64-byte aligned (whole cache lines)
    scratch = np.empty(2 * width * TILE + TILE, np.float32)
    h = (-(scratch.ctypes.data // 4)) % TILE
    g = h + width * TILE
    source = x
    start = first * features
    if count < TILE:
        # a last, partial tile: its images then zeros, so that it transposes like the others
        source = np.zeros(TILE * features, np.float32)
        source[:count * features] = x[start:start + count * features]
        start = 0
    blocks = features // TILE
    for block in range(blocks):
        transpose_tile(source, start + block * TILE, features, scratch, h + block * TILE * TILE)
    for f in range(blocks * TILE, features):
        for j in range(TILE):
            scratch[h + f * TILE + j] = source[start + j * features + f]
    for layer in range(last + 1):
        row_start = layers[layer, 1]
        relu = layers[layer, 2] != 0
        for i in range(layers[layer, 0]):
            r = row_start + i
            row_times_tile(scratch, h, col, values, crow[r], crow[r + 1], scratch,
                            g + i * TILE, bias[r], relu)
        h, g = g, h
    for j in range(count):
        for o in range(layers[last, 0]):
            out[first + j, o] = scratch[h + o * TILE + j]


# Each kernel comes as two functions, serial and parallel, rather than one compiled twice:
# numba's disk cache does not tell `parallel=True` from False for the same function, and
# would hand one variant's machine code to the other.
def _tiled_chain_serial(x, features, layers, crow, col, values, bias, width, out):
    for tile in range((out.shape[0] + TILE - 1) // TILE):
        _chain_on_tile(tile, x, features, layers, crow, col, values, bias, width, out)


def _tiled_chain_parallel(x, features, layers, crow, col, values, bias, width, out):
    for tile in prange((out.shape[0] + TILE - 1) // TILE):
        _chain_on_tile(tile, x, features, layers, crow, col, values, bias, width, out)


def _csr_row_feature_major(i, crow, col, values, bias, h, out, relu):
    """Row ``i`` of ``out = act(W h + b)``, ``W`` given by (crow, col, values).

    Every stored weight adds ``w * h[col, :]`` to the output row, a loop over contiguous
    images that LLVM vectorises. Eight stored weights are added per pass over the row, so
    the row is loaded and stored an eighth as often (5-15 % faster than four at a time,
    1.5x faster than one).
    """
    images = h.shape[1]
    row = out[i]
    b = bias[i]
    for j in range(images):
        row[j] = b
    k = crow[i]
    end = crow[i + 1]
    while k + 8 <= end:
        w0 = values[k]
        w1 = values[k + 1]
        w2 = values[k + 2]
        w3 = values[k + 3]
        w4 = values[k + 4]
        w5 = values[k + 5]
        w6 = values[k + 6]
        w7 = values[k + 7]
        h0 = h[col[k]]
        h1 = h[col[k + 1]]
        h2 = h[col[k + 2]]
        h3 = h[col[k + 3]]
        h4 = h[col[k + 4]]
        h5 = h[col[k + 5]]
        h6 = h[col[k + 6]]
        h7 = h[col[k + 7]]
        for j in range(images):
            row[j] += ((w0 * h0[j] + w1 * h1[j]) + (w2 * h2[j] + w3 * h3[j])
                       + ((w4 * h4[j] + w5 * h5[j]) + (w6 * h6[j] + w7 * h7[j])))
        k += 8
    if k + 4 <= end:
        w0 = values[k]
        w1 = values[k + 1]
        w2 = values[k + 2]
        w3 = values[k + 3]
        h0 = h[col[k]]
        h1 = h[col[k + 1]]
        h2 = h[col[k + 2]]
        h3 = h[col[k + 3]]
        for j in range(images):
            row[j] += (w0 * h0[j] + w1 * h1[j]) + (w2 * h2[j] + w3 * h3[j])
        k += 4
    while k < end:
        w0 = values[k]
        h0 = h[col[k]]
        for j in range(images):
            row[j] += w0 * h0[j]
        k += 1
    if relu:
        for j in range(images):
            row[j] = max(row[j], 0.0)


def _csr_serial(crow, col, values, bias, h, out, relu):
    for i in range(out.shape[0]):
        _csr_row_feature_major(i, crow, col, values, bias, h, out, relu)


def _csr_parallel(crow, col, values, bias, h, out, relu):
    for i in prange(out.shape[0]):
        _csr_row_feature_major(i, crow, col, values, bias, h, out, relu)


def _gather_feature(f, x, used, out):
    """``out[f] = x[:, used[f]]``: one feature of the batch-major ``x``, as a row.

    Each thread writes whole output rows (contiguous stores); the strided reads of ``x``
    hit the same few cache lines for consecutive features. Measured 1.5x faster than
    torch's fastest transpose at 2 threads.
    """
    row = out[f]
    feature = used[f]
    for j in range(x.shape[0]):
        row[j] = x[j, feature]


def _gather_serial(x, used, out):
    for f in range(used.shape[0]):
        _gather_feature(f, x, used, out)


def _gather_parallel(x, used, out):
    for f in prange(used.shape[0]):
        _gather_feature(f, x, used, out)


_CHAIN = ("void(float32[::1], int64, int64[:, ::1], int64[::1], int32[::1], float32[::1], "
          "float32[::1], int64, float32[:, ::1])")
_LAYER = ("void(int64[::1], int32[::1], float32[::1], float32[::1], float32[:, ::1], "
          "float32[:, ::1], boolean)")
_GATHER = "void(float32[:, ::1], int64[::1], float32[:, ::1])"
# fastmath "contract" only: fused multiply-adds, but no reassociation and no assumptions
# about NaN or infinity, so a NaN input still gives NaN as in the dense product.
# An explicit signature compiles when this module is imported, so compile time never
# lands in a timing; cache=True loads the machine code from disk after the first time.
_OPTIONS = dict(fastmath={"contract"}, boundscheck=False, nogil=True, cache=True)
_chain_on_tile = numba.njit(**_OPTIONS)(_chain_on_tile)
_csr_row_feature_major = numba.njit(**_OPTIONS)(_csr_row_feature_major)
_gather_feature = numba.njit(**_OPTIONS)(_gather_feature)
_chain_parallel = numba.njit(_CHAIN, parallel=True, **_OPTIONS)(_tiled_chain_parallel)
_chain_serial = numba.njit(_CHAIN, **_OPTIONS)(_tiled_chain_serial)
_layer_parallel = numba.njit(_LAYER, parallel=True, **_OPTIONS)(_csr_parallel)
_layer_serial = numba.njit(_LAYER, **_OPTIONS)(_csr_serial)
_gather_parallel = numba.njit(_GATHER, parallel=True, **_OPTIONS)(_gather_parallel)
_gather_serial = numba.njit(_GATHER, **_OPTIONS)(_gather_serial)


def _use_threads(threads: int, worth_sharing: bool) -> bool:
    """Set numba's thread count for this call; False when one thread should do the work."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if threads < 2 or not worth_sharing:
        return False
    numba.set_num_threads(threads)
    return True


def csr_layer(crow: np.ndarray, col: np.ndarray, values: np.ndarray, bias: np.ndarray,
              h: np.ndarray, out: np.ndarray, relu: bool, threads: int) -> None:
    """Fill ``out`` (out_features x images) with ``act(W h + b)`` on up to ``threads`` threads.

    ``crow`` int64, ``col`` int32, float32 ``values``, ``bias``, ``h`` and ``out``, all
    C-contiguous.
    """
    shared = _use_threads(threads, values.shape[0] * h.shape[1] >= PARALLEL_WORK)
    kernel = _layer_parallel if shared else _layer_serial
    kernel(crow, col, values, bias, h, out, relu)


def gather_transposed(x: np.ndarray, used: np.ndarray, out: np.ndarray, threads: int) -> None:
    """``out[f] = x[:, used[f]]`` (x: images x features, out: len(used) x images)."""
    kernel = _gather_parallel if _use_threads(threads, out.size >= PARALLEL_WORK) else _gather_serial
    kernel(x, used, out)


def tiled_chain(x: np.ndarray, layers: np.ndarray, crow: np.ndarray, col: np.ndarray,
                values: np.ndarray, bias: np.ndarray, out: np.ndarray, threads: int,
                width: int) -> None:
    """Fill ``out`` (images x outputs) with the chain's output for ``x`` (images x features).

    ``layers`` (int64, one row per layer): outputs, first row in ``crow``/``bias``, ReLU
    (1 or 0). Layer L's rows are ``crow[first:first + outputs + 1]``: offsets into ``col``
    and ``values``, which hold every layer's stored weights; ``bias`` one value per row
    (of every layer). Layer 0's ``col`` indexes ``x``'s features, layer L's the outputs of
    layer L-1. All arrays C-contiguous; float32, ``crow`` int64, ``col`` int32. ``width``:
    the most features of any layer's input or output, :func:`chain_width`.
    """
    features = x.shape[1]
    tiles = -(-x.shape[0] // TILE)
    kernel = _chain_parallel if _use_threads(threads, tiles > 1) else _chain_serial
    kernel(x.reshape(-1), features, layers, crow, col, values, bias, width, out)


def chain_width(features: int, layers: np.ndarray) -> int:
    """The ``width`` :func:`tiled_chain` needs: the most features any layer reads or writes."""
    return max(features, int(layers[:, 0].max(initial=0)))
