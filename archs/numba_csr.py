"""A CSR kernel of our own, compiled with numba, for the linear layers of a chain.

Why not torch's CSR kernels: on a 2-core Intel Xeon (AVX-512) they reach only 0.8-1.2x
dense at 90-97 % sparsity for fc1's layers, far below the 10-33x the FLOP count allows.
This kernel computes ``out = act(W h + b)`` on feature-major activations ``h`` (features x
images): every stored weight adds ``w * h[col, :]`` to its output row, a loop over
contiguous images that LLVM vectorises, and the rows are shared among the threads. Eight
stored weights are added per pass over the output row, so the row is loaded and stored an
eighth as often: the loop is bound by loads, not by arithmetic (measured 5-15 % faster
than four at a time, and 1.5x faster than one).

Tried and dropped (measured on the 2-core Xeon): tiles of 16-256 images taken by one
thread through every layer (the short loops over a tile cost more than the cache
misses they save: 1.4-2x slower than whole rows at batch 512); sharing a layer among
threads by images rather than output rows, so that each core keeps its own images from
layer to layer (0.8x); 512-bit vectors (``NUMBA_CPU_FEATURES=...,-prefer-256-bit``, up to
1.3x on one layer but no clear gain on the whole of fc1, and it would change numba's
settings for the whole process).

Importing this module imports numba (about 0.5 s) and loads the compiled kernels from
numba's disk cache (or compiles them, tens of seconds, the first time), so
:mod:`archs.sparse` imports it only when a numba kernel is built.

Rounding: products are fused (FMA) and eight are added before the running sum, so results
differ from the dense product by float rounding only (relative error ~1e-7).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange


# Below this many multiply-adds a call runs on one thread: waking the pool (several
# microseconds) would cost more than sharing the work saves. Only decides how a call is
# run; whether the kernel is used at all is decided by timing (archs.sparse).
PARALLEL_WORK = 32_768


def _csr_times_feature_major(crow, col, values, bias, h, out, relu):
    """``out = act(W h + b)``, ``W`` given by (crow, col, values); act = ReLU if ``relu``."""
    images = h.shape[1]
    for i in prange(out.shape[0]):
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


def _gather_transposed(x, used, out):
    """``out[f] = x[:, used[f]]``: batch-major rows to feature-major, reading only ``used``.

    Each thread writes whole output rows (contiguous stores); the strided reads of ``x``
    hit the same few cache lines for consecutive features. Measured 1.5x faster than
    torch's fastest transpose at 2 threads.
    """
    images = x.shape[0]
    for f in prange(used.shape[0]):
        row = out[f]
        feature = used[f]
        for j in range(images):
            row[j] = x[j, feature]


_LAYER = "void(int64[::1], int32[::1], float32[::1], float32[::1], float32[:, ::1], float32[:, ::1], boolean)"
_GATHER = "void(float32[:, ::1], int64[::1], float32[:, ::1])"
# fastmath "contract" only: fused multiply-adds, but no reassociation and no assumptions
# about NaN or infinity, so a NaN input still gives NaN as in the dense product.
# An explicit signature compiles when this module is imported, so compile time never
# lands in a timing; cache=True loads the machine code from disk after the first time.
_OPTIONS = dict(fastmath={"contract"}, boundscheck=False, nogil=True, cache=True)
_layer_parallel = numba.njit(_LAYER, parallel=True, **_OPTIONS)(_csr_times_feature_major)
_layer_serial = numba.njit(_LAYER, **_OPTIONS)(_csr_times_feature_major)
_gather_parallel = numba.njit(_GATHER, parallel=True, **_OPTIONS)(_gather_transposed)
_gather_serial = numba.njit(_GATHER, **_OPTIONS)(_gather_transposed)


def _use_threads(threads: int, work: int) -> bool:
    """Set numba's thread count for this call; False when one thread should do the work."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    if threads < 2 or work < PARALLEL_WORK:
        return False
    numba.set_num_threads(threads)
    return True


def csr_layer(crow: np.ndarray, col: np.ndarray, values: np.ndarray, bias: np.ndarray,
              h: np.ndarray, out: np.ndarray, relu: bool, threads: int) -> None:
    """Fill ``out`` (out_features x images) with ``act(W h + b)`` on up to ``threads`` threads.

    ``crow`` int64, ``col`` int32, float32 ``values``, ``bias``, ``h`` and ``out``, all
    C-contiguous.
    """
    kernel = _layer_parallel if _use_threads(threads, values.shape[0] * h.shape[1]) else _layer_serial
    kernel(crow, col, values, bias, h, out, relu)


def gather_transposed(x: np.ndarray, used: np.ndarray, out: np.ndarray, threads: int) -> None:
    """``out[f] = x[:, used[f]]`` (x: images x features, out: len(used) x images)."""
    kernel = _gather_parallel if _use_threads(threads, out.size) else _gather_serial
    kernel(x, used, out)
