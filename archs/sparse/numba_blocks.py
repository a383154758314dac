"""The per-channel steps of residual and dense blocks in the tile layout, compiled with
numba (CPU, float32): a BatchNorm as ``x * scale + shift`` with ReLU or not, the
residual addition with its ReLU, and zeroing a buffer's border. In the tile layout one channel of a tile is a contiguous
plane of ``height x width x 16`` floats, so each job (a tile's channel) is one loop the
compiler vectorises; torch's ``addcmul`` on the same 5-D views, then ``clamp_min_``, took
as long as the block's sparse convolutions (DenseNet121, 90 %, 64 images, 1 thread).
"""
from __future__ import annotations

import numba
from numba import prange

from archs.sparse.numba_kernels import _OPTIONS, _use_threads
from archs.sparse.numba_vectors import TILE


def _affine_job(job, x, x_tile, channels, plane, scale, shift, relu, out):
    tile = job // channels
    channel = job - tile * channels
    s, b = scale[channel], shift[channel]
    source = tile * x_tile + channel * plane
    target = job * plane
    if relu:
        for i in range(plane):
            value = x[source + i] * s + b
            out[target + i] = value if value > 0.0 else 0.0
    else:
        for i in range(plane):
            out[target + i] = x[source + i] * s + b


def _affine_serial(x, x_tile, channels, plane, scale, shift, relu, out, jobs):
    for job in range(jobs):
        _affine_job(job, x, x_tile, channels, plane, scale, shift, relu, out)


def _affine_parallel(x, x_tile, channels, plane, scale, shift, relu, out, jobs):
    for job in prange(jobs):
        _affine_job(job, x, x_tile, channels, plane, scale, shift, relu, out)


def _residual_job(job, out, geometry, source):
    height, width, out_h, out_w, margin_h, margin_w, source_h, source_w, pad_h, pad_w = geometry
    out_plane = job * out_h * out_w * TILE
    source_plane = job * source_h * source_w * TILE
    row = width * TILE
    for y in range(height):
        o = out_plane + ((y + margin_h) * out_w + margin_w) * TILE
        s = source_plane + ((y + pad_h) * source_w + pad_w) * TILE
        for i in range(row):
            value = out[o + i] + source[s + i]
            out[o + i] = value if value > 0.0 else 0.0


def _residual_serial(out, geometry, source, jobs):
    for job in range(jobs):
        _residual_job(job, out, geometry, source)


def _residual_parallel(out, geometry, source, jobs):
    for job in prange(jobs):
        _residual_job(job, out, geometry, source)


def _border_job(job, out, rows, columns, margin_h, margin_w):
    plane = job * rows * columns * TILE
    for y in range(rows):
        start = plane + y * columns * TILE
        if y < margin_h or y >= rows - margin_h:
            for i in range(columns * TILE):
                out[start + i] = 0.0
        else:
            for i in range(margin_w * TILE):
                out[start + i] = 0.0
                out[start + (columns - margin_w) * TILE + i] = 0.0


def _border_serial(out, rows, columns, margin_h, margin_w, jobs):
    for job in range(jobs):
        _border_job(job, out, rows, columns, margin_h, margin_w)


def _border_parallel(out, rows, columns, margin_h, margin_w, jobs):
    for job in prange(jobs):
        _border_job(job, out, rows, columns, margin_h, margin_w)


_border_job = numba.njit(**_OPTIONS)(_border_job)
_border_serial = numba.njit(**_OPTIONS)(_border_serial)
_border_parallel = numba.njit(parallel=True, **_OPTIONS)(_border_parallel)
_affine_job = numba.njit(**_OPTIONS)(_affine_job)
_affine_serial = numba.njit(**_OPTIONS)(_affine_serial)
_affine_parallel = numba.njit(parallel=True, **_OPTIONS)(_affine_parallel)
_residual_job = numba.njit(**_OPTIONS)(_residual_job)
_residual_serial = numba.njit(**_OPTIONS)(_residual_serial)
_residual_parallel = numba.njit(parallel=True, **_OPTIONS)(_residual_parallel)


def affine(x, x_tile: int, tiles: int, channels: int, plane: int, scale, shift, relu: bool,
           out, threads: int) -> None:
    """``out`` (flat, tiles x channels x plane, contiguous) = ``x * scale + shift`` per
    channel, ReLU or not, for the first ``channels`` channels of ``x`` (flat, tile ``t``
    channel ``c`` at ``t * x_tile + c * plane``)."""
    jobs = tiles * channels
    shared = _use_threads(threads, jobs > 1 and jobs * plane >= 32_768)
    (_affine_parallel if shared else _affine_serial)(x, x_tile, channels, plane, scale, shift,
                                                     relu, out, jobs)


def add_relu(out, geometry, source, jobs: int, threads: int) -> None:
    """``out = relu(out + source)`` on the interior of every plane (``jobs`` = tiles x
    channels; ``geometry``: height, width, then each buffer's rows, columns and margins)."""
    plane = int(geometry[0]) * int(geometry[1]) * TILE
    shared = _use_threads(threads, jobs > 1 and jobs * plane >= 32_768)
    (_residual_parallel if shared else _residual_serial)(out, geometry, source, jobs)


def zero_border(out, jobs: int, rows: int, columns: int, margin_h: int, margin_w: int,
                threads: int) -> None:
    """Zero the border (``margin_h`` rows, ``margin_w`` columns) of each of the ``jobs``
    planes of ``rows`` x ``columns`` x TILE floats of ``out`` (flat)."""
    border = rows * columns - (rows - 2 * margin_h) * (columns - 2 * margin_w)
    shared = _use_threads(threads, jobs > 1 and jobs * border * TILE >= 32_768)
    (_border_parallel if shared else _border_serial)(out, rows, columns, margin_h, margin_w,
                                                     jobs)
