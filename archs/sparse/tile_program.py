"""A replay that keeps the tile layout of :mod:`archs.sparse.conv` across whole residual and
dense stages: :class:`TileProgram`, its buffers, and the per-channel BatchNorm step.

A :class:`~archs.sparse.conv.SparseConvChain` covers a straight run of convolutions and
max-pools. A ResNet stage or a DenseNet feature extractor also holds blocks (a residual
addition, a concatenation) and BatchNorms that no convolution can absorb. A program is a
list of steps that each read a tile-layout input padded for them and write a tile-layout
output with the border the next step reads, so the NCHW <-> tile conversions happen once
per program instead of once per convolution. Every step has ``padding`` (the zero border
it reads), ``output_size(height, width)`` and ``run(h, height, width, out, margin, threads)``;
the convolution and max-pool steps of :mod:`archs.sparse.conv` are used as they are (their
output channels read by :func:`channels_after`), the blocks' steps are in
:mod:`archs.sparse.blocks` and also say ``channels(in_channels)``.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from archs.sparse.conv import (TILE, ConvSpec, ConvStep, PoolSpec, PoolStep, SparseConvChain, batchnorm_affine,
                               from_tiles, load_conv_kernels, to_tiles)


def load_block_kernels():
    """:mod:`archs.sparse.numba_blocks`, imported (and compiled the first time) on first use."""
    from archs.sparse import numba_blocks
    return numba_blocks


def norm_supported(norm: nn.Module) -> bool:
    return isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None


@dataclass(frozen=True)
class AffineSpec:
    """A BatchNorm no convolution absorbs (None: none), then a ReLU or not."""
    norm: nn.BatchNorm2d | None
    relu: bool


@dataclass(frozen=True)
class BlockSpec:
    """A block :mod:`archs.sparse.blocks` knows how to run in the tile layout."""
    block: nn.Module


# Buffers per thread a program may hold (a residual block needs at most four at once; the
# others keep layouts that later steps find again)
MAX_BUFFERS = 5


class _Buffers(threading.local):
    """Tile-layout buffers per thread, grown on demand and reused by every program (a fresh
    buffer per step costs a page fault per 4 KiB on first touch).

    The steps write only the interior of a buffer, so a buffer handed out again with the
    layout (shape and border) it last had still has a zero border: a free buffer of the
    same layout is preferred, and only a buffer whose layout changes has its border zeroed
    (which took a tenth of ResNet18's sparse replay when done at every step).
    """

    def __init__(self):
        self.buffers: list[torch.Tensor] = []
        self.layouts: list[tuple | None] = []

    def take(self, shape: tuple, margin: tuple[int, int], busy: Sequence[torch.Tensor] = ()
             ) -> torch.Tensor:
        """A buffer viewed as ``shape`` sharing no memory with ``busy``, border of ``margin``
        zero (only its interior may be written)."""
        used = {tensor.untyped_storage().data_ptr() for tensor in busy}
        numel = math.prod(shape)
        layout = (tuple(shape), tuple(margin))
        # ordinary tensors even in inference mode: they are written again outside it
        with torch.inference_mode(False):
            free = [i for i, buffer in enumerate(self.buffers)
                    if buffer.untyped_storage().data_ptr() not in used]
            same = [i for i in free if self.layouts[i] == layout]
            if not free or (not same and len(self.buffers) < MAX_BUFFERS):
                self.buffers.append(torch.empty(0))
                self.layouts.append(None)
                free = [len(self.buffers) - 1]
            index = same[0] if same else free[0]
            if self.buffers[index].numel() < numel:
                self.buffers[index] = torch.empty(numel)
                self.layouts[index] = None
            out = self.buffers[index][:numel].view(shape)
            if self.layouts[index] != layout:
                zero_border(out, margin)
                self.layouts[index] = layout
        return out


def zero_border(out: torch.Tensor, margin: tuple[int, int]) -> None:
    """Zero the border of ``margin`` around the planes of tile-layout ``out`` (contiguous)."""
    if margin == (0, 0):
        return
    tiles, channels, rows, columns, _ = out.shape
    load_block_kernels().zero_border(out.view(-1).numpy(), tiles * channels, rows, columns,
                                     *margin, torch.get_num_threads())


BUFFERS = _Buffers()


def interior(h: torch.Tensor, margin: tuple[int, int]) -> torch.Tensor:
    """The planes of tile-layout ``h`` without their border of ``margin``."""
    return h[:, :, margin[0]:h.shape[2] - margin[0], margin[1]:h.shape[3] - margin[1]]


def padding_of(step: nn.Module) -> tuple[int, int]:
    return tuple(getattr(step, "padding", (0, 0)))


def channels_after(step: nn.Module, channels: int) -> int:
    if isinstance(step, ConvStep):
        return step.out_channels
    if isinstance(step, PoolStep):
        return channels
    return step.channels(channels)


def tile_shape(tiles: int, channels: int, height: int, width: int,
               margin: tuple[int, int]) -> tuple:
    return (tiles, channels, height + 2 * margin[0], width + 2 * margin[1], TILE)


def _planes(h: torch.Tensor) -> torch.Tensor | None:
    """``h`` as one flat tensor from its first element, where each of its channels is a
    whole contiguous plane (no border around it); None where not."""
    tiles, channels, height, width, _ = h.shape
    plane = height * width * TILE
    if h.stride()[1:] != (plane, width * TILE, TILE, 1):
        return None
    return h.as_strided(((tiles - 1) * h.stride(0) + channels * plane,), (1,))


class AffineStep(nn.Module):
    """Per channel ``x * scale + shift`` (a BatchNorm in eval mode), then ReLU or not."""

    def __init__(self, spec: AffineSpec):
        super().__init__()
        self.identity = spec.norm is None
        scale, shift = ((torch.ones(1), torch.zeros(1)) if self.identity
                        else batchnorm_affine(spec.norm))
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("shift", shift.float().contiguous())
        self.relu = spec.relu
        self.padding = (0, 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def channels(self, channels: int) -> int:
        return channels

    def apply(self, h: torch.Tensor, out: torch.Tensor, threads: int) -> None:
        """``out`` = the step of ``h`` (same shape, views allowed)."""
        source = _planes(h)
        if not self.identity and source is not None and out.is_contiguous():
            tiles, channels, height, width, _ = h.shape
            load_block_kernels().affine(
                source.numpy(), h.stride(0), tiles, channels, height * width * TILE,
                self.scale.numpy(), self.shift.numpy(), self.relu, out.view(-1).numpy(), threads)
            return
        with torch.inference_mode(False):
            if self.identity:
                out.copy_(h)
            else:
                view = (1, -1, 1, 1, 1)
                torch.addcmul(self.shift.view(view), h, self.scale.view(view), out=out)
            if self.relu:
                out.clamp_min_(0)

    def run(self, h, height, width, out, margin, threads) -> None:
        del height, width
        self.apply(h, interior(out, margin), threads)

    def shape(self) -> list:
        return ["affine", self.scale.numel(), self.identity, self.relu]


class TileProgram(SparseConvChain):
    """Steps run in the tile layout, NCHW in and out (CPU, float32); with a dense fallback
    for small batches as :class:`~archs.sparse.conv.SparseConvChain`."""

    def __init__(self, specs: Sequence, build_block: Callable[[nn.Module], nn.Module],
                 dense_fallback: Sequence[nn.Module] | None = None, min_batch: int = 0):
        nn.Module.__init__(self)
        steps = []
        for spec in specs:
            if isinstance(spec, ConvSpec):
                steps.append(ConvStep(spec))
            elif isinstance(spec, PoolSpec):
                steps.append(PoolStep(spec))
            elif isinstance(spec, AffineSpec):
                steps.append(AffineStep(spec))
            else:
                steps.append(build_block(spec.block))
        self.steps = nn.ModuleList(steps)
        self._set_fallback(dense_fallback, min_batch)
        load_conv_kernels()
        load_block_kernels()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.dense_if_small(x, "sparse tile program")
        if dense is not None:
            return dense
        threads = torch.get_num_threads()
        images, channels, height, width = x.shape
        padding = padding_of(self.steps[0])
        tiles = -(-images // TILE)
        h = to_tiles(x.detach(), padding, threads,
                     BUFFERS.take(tile_shape(tiles, channels, height, width, padding), padding))
        for index, step in enumerate(self.steps):
            following = self.steps[index + 1] if index + 1 < len(self.steps) else None
            margin = (0, 0) if following is None else padding_of(following)
            out_h, out_w = step.output_size(height, width)
            channels = channels_after(step, channels)
            out = BUFFERS.take(tile_shape(tiles, channels, out_h, out_w, margin), margin, (h,))
            step.run(h, height, width, out, margin, threads)
            h, height, width = out, out_h, out_w
        return from_tiles(h, images, threads)
