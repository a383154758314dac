"""LLVM vector instructions for numba kernels: a sparse row times a tile of 16 images with
the sums in vector registers, and a 16 x 16 transpose in registers.

Numba's loop vectoriser does not keep a row's sums in registers (its tiled loops measured
2-3x slower), so these two steps are written as LLVM IR (:func:`row_times_tile`,
:func:`transpose_tile`). LLVM splits the 16-float vectors into two 8-float ones on a CPU
without AVX-512. Used by the tiled linear chain (:mod:`archs.sparse.numba_kernels`) and
the sparse convolution (:mod:`archs.sparse.numba_conv`).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Images per tile of tiled_chain: one 64-byte cache line (an AVX-512 vector) per feature.
# 16 x 784 input features fill 49 KiB, about one core's L1 data cache. Measured (fc1's first
# layer, batch 512, 2 threads): tiles of 32 or 64 images ran 1.3-1.6x slower, their
# activations spilling to L2.
TILE = 16
# Independent accumulators per row: a fused multiply-add has a latency of about 4 cycles
# and two can start per cycle, so one accumulator would stall. Measured on fc1's first layer
# at 90 % sparsity: 4 accumulators 2.2x faster than 2.
ACCUMULATORS = 4


def vector_type() -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), TILE)


def index_vector(indices: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), indices)


def fma_and_splat(builder):
    """The tile's fused multiply-add (LLVM's intrinsic on TILE float32 lanes) and a function that
    broadcasts a scalar into every lane: what each kernel's inner step is built from."""
    vector = vector_type()
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                         f"llvm.fma.v{TILE}f32")

    def splat(scalar):
        lane0 = builder.insert_element(ir.Constant(vector, ir.Undefined), scalar,
                                       ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, ir.Constant(vector, ir.Undefined),
                                      index_vector([0] * TILE))

    return fma, splat


def vector_pointer(builder, array_data, offset):
    return builder.bitcast(builder.gep(array_data, [offset]), vector_type().as_pointer())


@intrinsic
def row_times_tile(typingctx, h, h_start, col, values, start, end, out, out_start, bias, relu):
    """``out[out_start:+TILE] = act(bias + sum over k in [start, end) of values[k] *
    h[h_start + col[k] * TILE:+TILE])``, the sum in vector registers.

    ``h`` and ``out`` are flat float32 arrays (they may be the same array: the result is
    written once, after every read). No bounds are checked.
    """
    float_array = types.Array(types.float32, 1, "C")
    if not (h == float_array and out == float_array and col == types.Array(types.int32, 1, "C")
            and values == float_array and bias == types.float32 and relu == types.boolean
            and all(isinstance(i, types.Integer) for i in (h_start, start, end, out_start))):
        return None
    signature = types.void(h, h_start, col, values, start, end, out, out_start, bias, relu)

    def codegen(context, builder, sig, args):
        h_, h_start_, col_, values_, start_, end_, out_, out_start_, bias_, relu_ = args
        h_start_, start_, end_, out_start_ = (
            context.cast(builder, value, ty, types.int64)
            for value, ty in zip((h_start_, start_, end_, out_start_),
                                 (sig.args[1], sig.args[4], sig.args[5], sig.args[7])))
        h_data = context.make_array(sig.args[0])(context, builder, h_).data
        col_data = context.make_array(sig.args[2])(context, builder, col_).data
        values_data = context.make_array(sig.args[3])(context, builder, values_).data
        out_data = context.make_array(sig.args[6])(context, builder, out_).data
        i64 = ir.IntType(64)
        vector = vector_type()
        zero = ir.Constant(vector, [0.0] * TILE)
        fma, splat = fma_and_splat(builder)

        # stack slots that LLVM promotes to registers (mem2reg)
        sums = [cgutils.alloca_once(builder, vector) for _ in range(ACCUMULATORS)]
        builder.store(splat(bias_), sums[0])
        for slot in sums[1:]:
            builder.store(zero, slot)

        def add_product(k, slot):
            feature = builder.sext(builder.load(builder.gep(col_data, [k])), i64)
            weight = builder.load(builder.gep(values_data, [k]))
            offset = builder.add(h_start_, builder.mul(feature, ir.Constant(i64, TILE)))
            row = builder.load(vector_pointer(builder, h_data, offset), align=4)
            builder.store(builder.call(fma, [splat(weight), row, builder.load(slot)]), slot)

        step = ir.Constant(i64, ACCUMULATORS)
        stored = builder.sub(end_, start_)
        unrolled_end = builder.add(start_, builder.mul(builder.sdiv(stored, step), step))
        with cgutils.for_range_slice(builder, start_, unrolled_end, step) as (k, _):
            for lane, slot in enumerate(sums):
                add_product(builder.add(k, ir.Constant(i64, lane)), slot)
        with cgutils.for_range_slice(builder, unrolled_end, end_, ir.Constant(i64, 1)) as (k, _):
            add_product(k, sums[0])
        total = builder.load(sums[0])
        for slot in sums[1:]:
            total = builder.fadd(total, builder.load(slot))
        # ReLU as "negative -> 0": NaN compares false and stays NaN, as in torch's relu
        negative = builder.fcmp_ordered("<", total, zero)
        total = builder.select(relu_, builder.select(negative, zero, total), total)
        builder.store(total, vector_pointer(builder, out_data, out_start_), align=4)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def transpose_tile(typingctx, x, x_start, x_stride, out, out_start):
    """``out[out_start + f * TILE + j] = x[x_start + j * x_stride + f]`` for f, j < TILE.

    A 16x16 block transposed in registers: 16 vector loads, 64 two-vector shuffles (at
    each of four steps, row i and row i + d swap their d-wide blocks), 16 vector stores.
    Element by element it was most of fc1's time at 97 % sparsity.
    """
    float_array = types.Array(types.float32, 1, "C")
    if not (x == float_array and out == float_array
            and all(isinstance(i, types.Integer) for i in (x_start, x_stride, out_start))):
        return None
    signature = types.void(x, x_start, x_stride, out, out_start)

    def codegen(context, builder, sig, args):
        x_, x_start_, x_stride_, out_, out_start_ = args
        x_start_, x_stride_, out_start_ = (
            context.cast(builder, value, ty, types.int64)
            for value, ty in zip((x_start_, x_stride_, out_start_),
                                 (sig.args[1], sig.args[2], sig.args[4])))
        x_data = context.make_array(sig.args[0])(context, builder, x_).data
        out_data = context.make_array(sig.args[3])(context, builder, out_).data
        i64 = ir.IntType(64)
        rows = [builder.load(vector_pointer(builder, x_data, builder.add(
                    x_start_, builder.mul(x_stride_, ir.Constant(i64, j)))), align=4)
                for j in range(TILE)]
        width = TILE // 2
        while width >= 1:
            swapped = list(rows)
            for i in range(TILE):
                if i & width:
                    continue
                # element k of row i with bit `width` set <-> element k - width of row i + width
                low = [k if not k & width else TILE + k - width for k in range(TILE)]
                high = [TILE + k if k & width else k + width for k in range(TILE)]
                swapped[i] = builder.shuffle_vector(rows[i], rows[i + width], index_vector(low))
                swapped[i + width] = builder.shuffle_vector(rows[i], rows[i + width],
                                                            index_vector(high))
            rows = swapped
            width //= 2
        for f in range(TILE):
            builder.store(rows[f], vector_pointer(builder, out_data, builder.add(
                out_start_, ir.Constant(i64, f * TILE))), align=4)
        return context.get_dummy_value()

    return signature, codegen
