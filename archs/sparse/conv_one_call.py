"""Running a :class:`~archs.sparse.conv.SparseConvChain` in one parallel call
(:mod:`archs.sparse.numba_conv_chain`): its steps as one table, their arrays concatenated,
and each thread's two buffers."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from archs.sparse.common import numpy_buffers
from archs.sparse.conv import TILE, ConvStep


def _kernels():
    from archs.sparse import numba_conv_chain
    return numba_conv_chain


def worth_it(tiles: int, threads: int) -> bool:
    """Whether ``tiles`` tiles go in one call (see numba_conv_chain.chain_in_one_call)."""
    return _kernels().chain_in_one_call(tiles, threads)


@dataclass(frozen=True)
class Program:
    """The chain for one input size: the step table, the concatenated arrays, the largest
    activations of one tile (floats, padding included) and the output's C, H, W."""
    table: np.ndarray
    arrays: tuple[np.ndarray, ...]   # bases, targets, crow, col, values, bias
    largest: int
    output: tuple[int, int, int]


def build(chain, channels: int, height: int, width: int) -> Program:
    step_row = _kernels().step_row
    padding = chain.steps[0].padding
    rows, columns = height + 2 * padding[0], width + 2 * padding[1]
    largest = channels * rows * columns * TILE
    table, parts = [], [[] for _ in range(6)]
    at, stored = [0, 0, 0, 0], 0
    for step, pool, margin in chain.schedule():
        out_h, out_w = step.output_size(height, width)
        if pool is not None:
            out_h, out_w = pool.output_size(out_h, out_w)
        out_rows, out_columns = out_h + 2 * margin[0], out_w + 2 * margin[1]
        if isinstance(step, ConvStep):
            geometry, bases, targets, offsets = step.plan(rows, columns, margin, pool is not None)
            crow, values, bias = numpy_buffers(step, ("crow", "values", "bias"))
            channels = step.out_channels
            table.append(step_row(0, step.relu, tuple(at), (channels, out_rows, out_columns),
                                  margin, geometry))
            for part, array in zip(parts, (bases, targets, crow + stored, offsets, values, bias)):
                part.append(array)
            at = [at[0] + len(bases), at[1] + len(targets), at[2] + len(crow), at[3] + len(bias)]
            stored += len(values)
        else:
            geometry = np.array([channels, height, width, out_h, out_w, *step.kernel,
                                 *step.stride, *margin], np.int64)
            table.append(step_row(1, False, tuple(at), (channels, out_rows, out_columns), margin,
                                  geometry))
        largest = max(largest, channels * out_rows * out_columns * TILE)
        height, width, rows, columns = out_h, out_w, out_rows, out_columns
    dtypes = (np.int64, np.int64, np.int64, np.int32, np.float32, np.float32)
    arrays = tuple(np.ascontiguousarray(np.concatenate(part) if part else np.zeros(0, dtype),
                                        dtype=dtype) for part, dtype in zip(parts, dtypes))
    return Program(np.ascontiguousarray(np.stack(table)), arrays, largest,
                   (channels, height, width))


class _Scratch(threading.local):
    """Each calling thread's buffer for the kernel's threads (grown on demand, reused: a
    fresh one costs a page fault per 4 KiB)."""

    def __init__(self):
        self.buffer = torch.empty(0)

    def take(self, rows: int, length: int) -> torch.Tensor:
        with torch.inference_mode(False):
            if self.buffer.numel() < rows * length:
                self.buffer = torch.empty(rows * length)
            return self.buffer[:rows * length].view(rows, length)


_SCRATCH = _Scratch()


def run(chain, x: torch.Tensor, threads: int) -> torch.Tensor:
    """``chain`` on NCHW ``x`` (float32, CPU) in one call; NCHW out."""
    images, channels, height, width = x.shape
    programs = chain.__dict__.setdefault("_one_call_programs", {})
    key = (channels, height, width)
    if key not in programs:
        programs[key] = build(chain, channels, height, width)
    program = programs[key]
    kernels = _kernels()
    workers = max(1, min(threads, kernels.numba.config.NUMBA_NUM_THREADS))
    scratch = _SCRATCH.take(2 * workers, program.largest)
    out = x.new_empty(images, *program.output)
    padding = chain.steps[0].padding
    shape = np.array([images, channels, height, width, *padding], np.int64)
    kernels.conv_chain(x.contiguous().view(-1).numpy(), shape, program.table, *program.arrays,
                       scratch.numpy(), out.view(-1).numpy(), threads)
    return out
