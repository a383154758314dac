"""A whole run of sparse convolutions in one parallel call: each thread takes whole tiles of
16 images from NCHW input through every layer to NCHW output, in two buffers of its own.

Layer by layer (:func:`archs.sparse.numba_conv.conv_layer`) every layer is a parallel
region, and so are the layout changes in and out: at the end of each, every thread waits
for the slowest. On a shared machine a thread that the scheduler has set aside holds the
others up for its time slice: measured on the 2-core Xeon at load 7, every region cost
about 20 ms, whatever its work, so a LeNet5 layer with its pool took 60 ms as two regions
and 40 ms as one. Here a run of any length is one region, and the tiles' activations stay
in their thread's buffers (no other thread reads them). It needs as many tiles as
threads, so few images (one or two tiles) still go layer by layer.

The layers are described by a table (:data:`STEP_FIELDS`, one row per step) and the
layers' arrays concatenated, each row saying where its own entries start.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from archs.sparse.numba_conv import (TILE, conv_block, entry_plane, exit_plane, pool_plane)
from archs.sparse.numba_kernels import _OPTIONS, _use_threads

# one row per step: convolution (kind 0) or max-pool (1), ReLU, where the step's entries
# start in bases, targets, crow and bias, the output's channels, rows and columns and
# border, then (from GEOMETRY on) the step's geometry (numba_conv's CONV_ or POOL_GEOMETRY)
STEP_FIELDS = ("kind", "relu", "bases_at", "targets_at", "crow_at", "bias_at", "out_channels",
               "rows", "columns", "margin_h", "margin_w")
GEOMETRY = 16
STEP_WIDTH = GEOMETRY + 11


def _zero_border(out, channels, rows, columns, margin_h, margin_w):
    """Zero the border of ``margin_h`` rows and ``margin_w`` columns of each plane."""
    if margin_h == 0 and margin_w == 0:
        return
    for c in range(channels):
        plane = c * rows * columns
        for y in range(rows):
            inside = margin_h <= y < rows - margin_h
            start = (plane + y * columns) * TILE
            if not inside:
                out[start:start + columns * TILE] = 0.0
            else:
                out[start:start + margin_w * TILE] = 0.0
                end = start + columns * TILE
                out[end - margin_w * TILE:end] = 0.0


def _tiles_of_thread(thread, threads, x, shape, program, bases, targets, crow, col, values,
                     bias, scratch, out):
    """Tiles ``thread``, ``thread + threads``, ... of NCHW ``x`` through every step into
    NCHW ``out``. ``shape``: images, channels, height, width, padding (2) of the input."""
    images, channels, height, width, pad_h, pad_w = shape[0], shape[1], shape[2], shape[3], \
        shape[4], shape[5]
    tiles = (images + TILE - 1) // TILE
    last = program.shape[0] - 1
    for tile in range(thread, tiles, threads):
        source, target = scratch[2 * thread], scratch[2 * thread + 1]
        rows, columns = height + 2 * pad_h, width + 2 * pad_w
        if tile * TILE + TILE > images:
            # the missing images of a last tile: zeros, as the layer-by-layer path has
            source[:channels * rows * columns * TILE] = 0.0
        else:
            _zero_border(source, channels, rows, columns, pad_h, pad_w)
        for c in range(channels):
            entry_plane(x, tile, c, images, channels, height, width, pad_h, pad_w, source,
                        c * rows * columns)
        for s in range(program.shape[0]):
            step = program[s]
            geometry = step[GEOMETRY:]
            out_channels, rows, columns = step[6], step[7], step[8]
            _zero_border(target, out_channels, rows, columns, step[9], step[10])
            if step[0] == 0:
                for block in range(geometry[5]):
                    conv_block(source, 0, block, geometry, bases, targets, crow, col, values,
                               bias, step[1] != 0, target, 0, step[2:6])
            else:
                for c in range(out_channels):
                    pool_plane(source, c * geometry[1] * geometry[2], geometry, target,
                               c * rows * columns)
            if s < last:
                source, target = target, source
        for c in range(program[last, 6]):
            plane = program[last, 7] * program[last, 8]
            exit_plane(target, c * plane * TILE, tile, c, images, program[last, 6], plane, out)


def _chain_serial(x, shape, program, bases, targets, crow, col, values, bias, scratch, out):
    _tiles_of_thread(0, 1, x, shape, program, bases, targets, crow, col, values, bias,
                     scratch, out)


def _chain_parallel(x, shape, program, bases, targets, crow, col, values, bias, scratch, out):
    threads = scratch.shape[0] // 2
    for thread in prange(threads):
        _tiles_of_thread(thread, threads, x, shape, program, bases, targets, crow, col, values,
                         bias, scratch, out)


_CHAIN = ("void(float32[::1], int64[::1], int64[:, ::1], int64[::1], int64[::1], int64[::1], "
          "int32[::1], float32[::1], float32[::1], float32[:, ::1], float32[::1])")
_zero_border = numba.njit(**_OPTIONS)(_zero_border)
_tiles_of_thread = numba.njit(**_OPTIONS)(_tiles_of_thread)
_chain_serial = numba.njit(_CHAIN, **_OPTIONS)(_chain_serial)
_chain_parallel = numba.njit(_CHAIN, parallel=True, **_OPTIONS)(_chain_parallel)


def chain_in_one_call(tiles: int, threads: int) -> bool:
    """Whether a run over ``tiles`` tiles should go in one call on ``threads`` threads:
    when every thread gets a tile and the shares differ by at most a quarter."""
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    return threads < 2 or (tiles >= threads and (tiles % threads == 0 or tiles >= 4 * threads))


def conv_chain(x, shape, program, bases, targets, crow, col, values, bias, scratch, out,
               threads: int) -> None:
    """Every step of ``program`` on NCHW ``x`` (flat; ``shape`` int64: images, channels,
    height, width, padding of the first step) into NCHW ``out`` (flat). ``scratch``:
    2 x threads rows, each as large as a tile's largest activations (padded); the table
    and arrays as :data:`STEP_FIELDS` says. The chain's ``crow`` entries index the
    concatenated ``col`` and ``values``."""
    tiles = -(-int(shape[0]) // TILE)
    shared = _use_threads(threads, tiles > 1 and threads > 1) and scratch.shape[0] >= 4
    (_chain_parallel if shared else _chain_serial)(x, shape, program, bases, targets, crow,
                                                   col, values, bias, scratch, out)


def step_row(kind: int, relu: bool, at: tuple[int, int, int, int], out: tuple[int, int, int],
             margin: tuple[int, int], geometry: np.ndarray) -> np.ndarray:
    """One row of the table (see :data:`STEP_FIELDS`)."""
    row = np.zeros(STEP_WIDTH, np.int64)
    row[:11] = (kind, int(relu), *at, *out, *margin)
    row[GEOMETRY:GEOMETRY + len(geometry)] = geometry
    return row
