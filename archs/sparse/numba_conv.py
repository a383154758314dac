"""Sparse convolution kernels of our own, compiled with numba (CPU, float32).

Direct sparse convolution (Park et al. 2017, "Faster CNNs with direct sparse convolutions"),
in the layout of the tiled linear chain (:mod:`archs.sparse.numba_kernels`): images are cut
into tiles of :data:`TILE` (16) and a tile's activations are stored position-major,
``h[channel, y, x, 0:16]``, one 64-byte vector of 16 images per pixel. An output pixel of
output channel ``o`` is then ``bias[o] + sum over the stored weights w of o of
w * h[base + offset(w)]``, where ``base`` is the pixel's top-left input position and
``offset(w) = (c * H + ky) * W + kx`` is where the weight reads, relative to it: the same
sparse dot product as a row of a CSR linear layer, with ``offset`` in place of the column.
So :func:`~archs.sparse.numba_kernels.row_times_tile` (broadcast weight, fused multiply-add
on 16 images, four accumulators in vector registers) computes it unchanged, and a pruned
weight costs nothing. This needs no im2col matrix and, unlike the scatter form of Park et
al., writes each output vector once.

Padding is stored: each layer writes its output into a buffer whose border (the next
convolution's padding) is zero, so no bounds are checked. Strides and groups only change
``base`` and ``offset``. ReLU is applied as each output is written. A 2 x 2 max-pool
(stride 2) right after a convolution is computed as it writes: a block's 8 pixels are then
two pooling windows, and only their maxima are stored (the full-size output never is);
other max-pools run on the same layout (:func:`pool_layer`), the ReLU before them (they
commute).

Work is shared out by (tile, block of 8 output pixels): a job reads ``kernel height``
input rows of every channel (for 64 channels of 34 padded pixels, 420 KiB: in L2), and
walks every stored weight of the layer once per block.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from archs.sparse.numba_kernels import _OPTIONS, _use_threads
from archs.sparse.numba_vectors import (TILE, fma_and_splat, transpose_tile, vector_pointer,
                                        vector_type)

# Output pixels computed together: each stored weight is loaded and broadcast once and
# multiplied into this many input vectors, which also gives as many independent chains of
# fused multiply-adds (a chain waits ~4 cycles per step, two steps can start per cycle).
PIXELS = 8

# geometry of a convolution: input channels, padded input height and width, output channels,
# output plane size (rows x columns of the output buffer, margins included), pixel blocks,
# whether a 2 x 2 max-pool is fused (1) or not (0)
CONV_GEOMETRY = ("channels", "height", "width", "out_channels", "out_plane", "blocks", "pool")
# geometry of a max-pool: channels, input height and width, output height and width,
# kernel, strides, margins of the output buffer
POOL_GEOMETRY = ("channels", "height", "width", "out_height", "out_width", "kernel_h",
                 "kernel_w", "stride_h", "stride_w", "margin_h", "margin_w")


@intrinsic
def _pixels_times_weights(typingctx, h, h_tile, bases, first, col, values, start, end, out,
                          out_start, targets, target_first, bias, relu, pool):
    """For r < PIXELS: ``sum[r] = bias + sum over k in [start, end) of values[k] *
    h[h_tile + bases[first + r] + col[k] * TILE:+TILE]``, then either ``out[out_start +
    targets[target_first + r]:+TILE] = act(sum[r])`` or, with ``pool``, the maximum of each
    4 consecutive sums (a 2 x 2 max-pool window) ``act(max(sum[4 q:4 q + 4]))`` at
    ``targets[target_first + q]``, q < PIXELS / 4.

    The sums stay in vector registers; each weight is loaded and broadcast once for all
    pixels. ``h`` and ``out`` flat float32 arrays, ``bases`` and ``targets`` int64 (in
    floats), ``col`` int32 (in pixels). No bounds are checked.
    """
    float_array = types.Array(types.float32, 1, "C")
    index_array = types.Array(types.int64, 1, "C")
    integers = (h_tile, first, start, end, out_start, target_first)
    if not (h == float_array and out == float_array and values == float_array
            and col == types.Array(types.int32, 1, "C") and bases == index_array
            and targets == index_array and bias == types.float32 and relu == types.boolean
            and pool == types.boolean and all(isinstance(i, types.Integer) for i in integers)):
        return None
    signature = types.void(h, h_tile, bases, first, col, values, start, end, out, out_start,
                           targets, target_first, bias, relu, pool)

    def codegen(context, builder, sig, args):
        (h_, h_tile_, bases_, first_, col_, values_, start_, end_, out_, out_start_, targets_,
         target_first_, bias_, relu_, pool_) = args
        i64 = ir.IntType(64)
        h_tile_, first_, start_, end_, out_start_, target_first_ = (
            context.cast(builder, value, sig.args[position], types.int64)
            for value, position in zip((h_tile_, first_, start_, end_, out_start_, target_first_),
                                       (1, 3, 6, 7, 9, 11)))

        def data(position, value):
            return context.make_array(sig.args[position])(context, builder, value).data

        h_data, bases_data, col_data = data(0, h_), data(2, bases_), data(4, col_)
        values_data, out_data, targets_data = data(5, values_), data(8, out_), data(10, targets_)
        vector = vector_type()
        zero = ir.Constant(vector, [0.0] * TILE)
        fma, splat = fma_and_splat(builder)

        pixel_bases = [builder.add(h_tile_, builder.load(builder.gep(
            bases_data, [builder.add(first_, ir.Constant(i64, r))]))) for r in range(PIXELS)]
        sums = [cgutils.alloca_once(builder, vector) for _ in range(PIXELS)]
        for slot in sums:
            builder.store(splat(bias_), slot)
        with cgutils.for_range_slice(builder, start_, end_, ir.Constant(i64, 1)) as (k, _):
            weight = splat(builder.load(builder.gep(values_data, [k])))
            offset = builder.mul(builder.sext(builder.load(builder.gep(col_data, [k])), i64),
                                 ir.Constant(i64, TILE))
            for base, slot in zip(pixel_bases, sums):
                row = builder.load(vector_pointer(builder, h_data, builder.add(base, offset)),
                                   align=4)
                builder.store(builder.call(fma, [weight, row, builder.load(slot)]), slot)

        def store(total, index):
            # ReLU as "negative -> 0": NaN compares false and stays NaN, as in torch's relu
            negative = builder.fcmp_ordered("<", total, zero)
            total = builder.select(relu_, builder.select(negative, zero, total), total)
            target = builder.add(out_start_, builder.load(builder.gep(
                targets_data, [builder.add(target_first_, ir.Constant(i64, index))])))
            builder.store(total, vector_pointer(builder, out_data, target), align=4)

        totals = [builder.load(slot) for slot in sums]
        with builder.if_else(pool_) as (pooled, plain):
            with pooled:
                for window in range(PIXELS // 4):
                    best = totals[4 * window]
                    for total in totals[4 * window + 1:4 * window + 4]:
                        # NaN propagates, as in torch's max-pool: a NaN best stays, a NaN
                        # total (unordered, so "greater") replaces it
                        greater = builder.fcmp_unordered(">", total, best)
                        keep = builder.fcmp_unordered("uno", best, best)
                        best = builder.select(keep, best, builder.select(greater, total, best))
                    store(best, window)
            with plain:
                for r, total in enumerate(totals):
                    store(total, r)
        return context.get_dummy_value()

    return signature, codegen


def conv_block(x, in_tile, block, geometry, bases, targets, crow, col, values, bias, relu,
               out, out_tile, at):
    """Block ``block`` of PIXELS output pixels, every output channel (max-pooled 2 x 2 when
    ``geometry[6]``), of the tile at ``in_tile`` in ``x`` into the one at ``out_tile`` in
    ``out``. ``at``: where this layer's entries start in ``bases``, ``targets``, ``crow``
    and ``bias`` (arrays that may hold several layers')."""
    out_channels, out_plane = geometry[3], geometry[4]
    pool = geometry[6] != 0
    first = at[0] + block * PIXELS
    target_first = at[1] + (block * (PIXELS // 4) if pool else block * PIXELS)
    for o in range(out_channels):
        _pixels_times_weights(x, in_tile, bases, first, col, values, crow[at[2] + o],
                              crow[at[2] + o + 1], out, out_tile + o * out_plane * TILE,
                              targets, target_first, bias[at[3] + o], relu, pool)


_NO_OFFSETS = np.zeros(4, np.int64)


def _conv_job(job, x, geometry, bases, targets, crow, col, values, bias, relu, out):
    """Block ``job % blocks`` of tile ``job // blocks``."""
    channels, height, width, out_channels, out_plane, blocks = geometry[:6]
    tile = job // blocks
    conv_block(x, tile * channels * height * width * TILE, job % blocks, geometry, bases,
               targets, crow, col, values, bias, relu, out, tile * out_channels * out_plane * TILE,
               _NO_OFFSETS)


def _conv_serial(x, geometry, bases, targets, crow, col, values, bias, relu, out, tiles):
    for job in range(tiles * geometry[5]):
        _conv_job(job, x, geometry, bases, targets, crow, col, values, bias, relu, out)


def _conv_parallel(x, geometry, bases, targets, crow, col, values, bias, relu, out, tiles):
    for job in prange(tiles * geometry[5]):
        _conv_job(job, x, geometry, bases, targets, crow, col, values, bias, relu, out)


def _pool_job(job, x, geometry, out):
    """Max-pool of one channel plane of one tile (``job = tile * channels + channel``)."""
    height, width, out_height, out_width = geometry[1], geometry[2], geometry[3], geometry[4]
    margin_h, margin_w = geometry[9], geometry[10]
    pool_plane(x, job * height * width, geometry, out,
               job * (out_height + 2 * margin_h) * (out_width + 2 * margin_w))


def pool_plane(x, source, geometry, out, target):
    """Max-pool of the channel plane at pixel ``source`` of ``x`` into the one at pixel
    ``target`` of ``out``."""
    width, out_height, out_width = geometry[2:5]
    kernel_h, kernel_w, stride_h, stride_w, margin_h, margin_w = geometry[5:11]
    columns = out_width + 2 * margin_w
    # the running maximum in a local array: not aliasing x or out, its loops vectorise
    best = np.empty(TILE, np.float32)
    for oy in range(out_height):
        for ox in range(out_width):
            first = (source + oy * stride_h * width + ox * stride_w) * TILE
            for j in range(TILE):
                best[j] = x[first + j]
            for ky in range(kernel_h):
                for kx in range(kernel_w):
                    at = first + (ky * width + kx) * TILE
                    for j in range(TILE):
                        value = x[at + j]
                        # NaN propagates, as in torch's max-pool
                        best[j] = value if value > best[j] or value != value else best[j]
            start = (target + (oy + margin_h) * columns + ox + margin_w) * TILE
            for j in range(TILE):
                out[start + j] = best[j]


def _pool_serial(x, geometry, out, planes):
    for job in range(planes):
        _pool_job(job, x, geometry, out)


def _pool_parallel(x, geometry, out, planes):
    for job in prange(planes):
        _pool_job(job, x, geometry, out)


def _entry_job(job, x, images, channels, height, width, pad_h, pad_w, out):
    """Plane ``job % channels`` of tile ``job // channels`` of NCHW ``x`` into the padded tile
    layout (``out``'s border and the missing images of a last tile are left as they are)."""
    entry_plane(x, job // channels, job % channels, images, channels, height, width, pad_h,
                pad_w, out, job * (height + 2 * pad_h) * (width + 2 * pad_w))


def entry_plane(x, tile, channel, images, channels, height, width, pad_h, pad_w, out, plane):
    """Channel ``channel`` of tile ``tile`` of NCHW ``x`` into the padded plane that starts
    at pixel ``plane`` of ``out`` (its border, and the missing images of a last tile, left
    as they are).

    Whole tiles go 16 pixels at a time: a 16 x 16 block (images x pixels) transposed in
    registers, then each pixel's 16 images stored where the padded plane keeps it.
    """
    padded_w = width + 2 * pad_w
    count = min(TILE, images - tile * TILE)
    pixels = height * width
    image = channels * pixels
    first = tile * TILE * image + channel * pixels
    done = 0
    if count == TILE:
        scratch = np.empty(TILE * TILE, np.float32)
        done = pixels // TILE * TILE
        for block in range(0, done, TILE):
            transpose_tile(x, first + block, image, scratch, 0)
            for f in range(TILE):
                p = block + f
                target = (plane + (p // width + pad_h) * padded_w + p % width + pad_w) * TILE
                for j in range(TILE):
                    out[target + j] = scratch[f * TILE + j]
    for p in range(done, pixels):
        target = (plane + (p // width + pad_h) * padded_w + p % width + pad_w) * TILE
        for j in range(count):
            out[target + j] = x[first + j * image + p]


def _exit_job(job, h, images, channels, plane, out):
    """Plane ``job % channels`` of tile ``job // channels`` of the tile layout ``h`` (no
    border) into NCHW ``out``."""
    exit_plane(h, job * plane * TILE, job // channels, job % channels, images, channels, plane,
               out)


def exit_plane(h, source, tile, channel, images, channels, plane, out):
    """The plane (no border) at float ``source`` of ``h`` into channel ``channel`` of tile
    ``tile`` of NCHW ``out``, 16 pixels at a time where it can."""
    count = min(TILE, images - tile * TILE)
    image = channels * plane
    first = tile * TILE * image + channel * plane
    scratch = np.empty(TILE * TILE, np.float32)
    done = plane // TILE * TILE
    for block in range(0, done, TILE):
        # scratch row j: image j's 16 pixels
        transpose_tile(h, source + block * TILE, TILE, scratch, 0)
        for j in range(count):
            for f in range(TILE):
                out[first + j * image + block + f] = scratch[j * TILE + f]
    for j in range(count):
        for f in range(done, plane):
            out[first + j * image + f] = h[source + f * TILE + j]


def _entry_serial(x, images, channels, height, width, pad_h, pad_w, out, tiles):
    for job in range(tiles * channels):
        _entry_job(job, x, images, channels, height, width, pad_h, pad_w, out)


def _entry_parallel(x, images, channels, height, width, pad_h, pad_w, out, tiles):
    for job in prange(tiles * channels):
        _entry_job(job, x, images, channels, height, width, pad_h, pad_w, out)


def _exit_serial(h, images, channels, plane, out, tiles):
    for job in range(tiles * channels):
        _exit_job(job, h, images, channels, plane, out)


def _exit_parallel(h, images, channels, plane, out, tiles):
    for job in prange(tiles * channels):
        _exit_job(job, h, images, channels, plane, out)


_ENTRY = "void(float32[::1], int64, int64, int64, int64, int64, int64, float32[::1], int64)"
_EXIT = "void(float32[::1], int64, int64, int64, float32[::1], int64)"
_CONV = ("void(float32[::1], int64[::1], int64[::1], int64[::1], int64[::1], int32[::1], "
         "float32[::1], float32[::1], boolean, float32[::1], int64)")
_POOL = "void(float32[::1], int64[::1], float32[::1], int64)"
conv_block = numba.njit(**_OPTIONS)(conv_block)
pool_plane = numba.njit(**_OPTIONS)(pool_plane)
entry_plane = numba.njit(**_OPTIONS)(entry_plane)
exit_plane = numba.njit(**_OPTIONS)(exit_plane)
_conv_job = numba.njit(**_OPTIONS)(_conv_job)
_pool_job = numba.njit(**_OPTIONS)(_pool_job)
_entry_job = numba.njit(**_OPTIONS)(_entry_job)
_exit_job = numba.njit(**_OPTIONS)(_exit_job)
_entry_parallel = numba.njit(_ENTRY, parallel=True, **_OPTIONS)(_entry_parallel)
_entry_serial = numba.njit(_ENTRY, **_OPTIONS)(_entry_serial)
_exit_parallel = numba.njit(_EXIT, parallel=True, **_OPTIONS)(_exit_parallel)
_exit_serial = numba.njit(_EXIT, **_OPTIONS)(_exit_serial)
_conv_parallel = numba.njit(_CONV, parallel=True, **_OPTIONS)(_conv_parallel)
_conv_serial = numba.njit(_CONV, **_OPTIONS)(_conv_serial)
_pool_parallel = numba.njit(_POOL, parallel=True, **_OPTIONS)(_pool_parallel)
_pool_serial = numba.njit(_POOL, **_OPTIONS)(_pool_serial)


def conv_layer(x, geometry, bases, targets, crow, col, values, bias, relu: bool, out,
               tiles: int, threads: int) -> None:
    """Fill ``out`` (flat: tiles x out_channels x out_plane x TILE; borders left as they
    are) with ``act(conv(x) + bias)``. ``x`` flat, padded, tiles x channels x height x
    width x TILE; ``geometry`` int64 as :data:`CONV_GEOMETRY`. Output pixel ``p`` reads
    from ``bases[p]`` in its tile's input and is written at ``targets[p]`` in its channel's
    output plane (both in floats; ``blocks * PIXELS`` entries, the last block padded by
    repeating the last pixel). Output channel ``o``'s stored weights are
    ``values[crow[o]:crow[o + 1]]``, read at ``col`` (offsets in pixels from the base).
    With a fused 2 x 2 max-pool (``geometry[6]``) the pixels of a block are two pooling
    windows of 4, and ``targets`` has an entry per window (``blocks * PIXELS / 4``)."""
    jobs = tiles * int(geometry[5])
    shared = _use_threads(threads, jobs > 1 and values.shape[0] * jobs * PIXELS * TILE >= 32_768)
    (_conv_parallel if shared else _conv_serial)(x, geometry, bases, targets, crow, col, values,
                                                 bias, relu, out, tiles)


def pool_layer(x, geometry, out, tiles: int, threads: int) -> None:
    """Max-pool ``x`` (flat, tiles x channels x height x width x TILE) into ``out`` (flat,
    tiles x channels x rows x columns x TILE; borders left as they are)."""
    planes = tiles * int(geometry[0])
    shared = _use_threads(threads, planes > 1 and x.shape[0] >= 32_768)
    (_pool_parallel if shared else _pool_serial)(x, geometry, out, planes)


def to_tiles(x, shape, padding: tuple[int, int], out, threads: int) -> None:
    """NCHW ``x`` (flat; ``shape`` its N, C, H, W) into ``out`` (flat, zero-filled: tiles x C
    x (H + 2 pad) x (W + 2 pad) x TILE)."""
    images, channels, height, width = shape
    tiles = -(-images // TILE)
    shared = _use_threads(threads, tiles * channels > 1 and x.shape[0] >= 32_768)
    (_entry_parallel if shared else _entry_serial)(x, images, channels, height, width,
                                                   padding[0], padding[1], out, tiles)


def from_tiles(h, images: int, channels: int, plane: int, out, threads: int) -> None:
    """Tile layout ``h`` (flat, tiles x C x plane x TILE) into NCHW ``out`` (flat)."""
    tiles = -(-images // TILE)
    shared = _use_threads(threads, tiles * channels > 1 and out.shape[0] >= 32_768)
    (_exit_parallel if shared else _exit_serial)(h, images, channels, plane, out, tiles)
