"""A replay that keeps the tile layout of :mod:`archs.sparse.conv` across whole residual and
dense stages: :class:`TileProgram`, its buffers, and the per-channel BatchNorm step.

A :class:`~archs.sparse.conv.SparseConvChain` covers a straight run of convolutions and
max-pools. A ResNet stage or a DenseNet feature extractor also holds blocks (a residual
addition, a concatenation) and BatchNorms that no convolution can absorb. A program is a
list of steps that each read a tile-layout input padded for them and write a tile-layout
output with the border the next step reads, so the NCHW <-> tile conversions happen once
per program instead of once per convolution. Every step has ``padding`` (the zero border
it reads), ``output_size(height, width)``, ``channels(in_channels)`` and
``run(h, height, width, out, margin, threads)``; the convolution and max-pool steps of
:mod:`archs.sparse.conv` are steps as they are, the blocks' are in :mod:`archs.sparse.blocks`.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from archs.sparse.conv import (TILE, ConvSpec, ConvStep, PoolSpec, PoolStep, SparseConvChain,
                               from_tiles, load_conv_kernels, to_tiles)


def batchnorm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm`` in eval mode as ``x * scale + shift`` per channel (computed in float64)."""
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    shift = -norm.running_mean.double() * scale
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double()
        shift = shift * norm.weight.detach().double()
    if norm.bias is not None:
        shift = shift + norm.bias.detach().double()
    return scale, shift


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


class _Buffers(threading.local):
    """Tile-layout buffers per thread, grown on demand and reused by every program (a fresh
    buffer per step costs a page fault per 4 KiB on first touch)."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []

    def take(self, shape: tuple, margin: tuple[int, int], busy: Sequence[torch.Tensor] = ()
             ) -> torch.Tensor:
        """A buffer viewed as ``shape`` sharing no memory with ``busy``, border of ``margin``
        zeroed."""
        used = {tensor.untyped_storage().data_ptr() for tensor in busy}
        numel = math.prod(shape)
        # ordinary tensors even in inference mode: they are written again outside it
        with torch.inference_mode(False):
            free = [i for i, buffer in enumerate(self.buffers)
                    if buffer.untyped_storage().data_ptr() not in used]
            if not free:
                self.buffers.append(torch.empty(0))
                free = [len(self.buffers) - 1]
            index = free[0]
            if self.buffers[index].numel() < numel:
                self.buffers[index] = torch.empty(numel)
            out = self.buffers[index][:numel].view(shape)
            zero_border(out, margin)
        return out


def zero_border(out: torch.Tensor, margin: tuple[int, int]) -> None:
    """Zero the border of ``margin`` around the planes of tile-layout ``out``."""
    margin_h, margin_w = margin
    with torch.inference_mode(False):
        if margin_h:
            out[:, :, :margin_h].zero_()
            out[:, :, -margin_h:].zero_()
        if margin_w:
            out[:, :, :, :margin_w].zero_()
            out[:, :, :, -margin_w:].zero_()


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


class AffineStep(nn.Module):
    """Per channel ``x * scale + shift`` (a BatchNorm in eval mode), then ReLU or not."""

    def __init__(self, spec: AffineSpec, channels: int | None = None):
        super().__init__()
        if spec.norm is None:
            scale, shift = torch.ones(channels or 1), torch.zeros(channels or 1)
        else:
            scale, shift = batchnorm_affine(spec.norm)
        self.identity = spec.norm is None
        self.register_buffer("scale", scale.float().reshape(1, -1, 1, 1, 1))
        self.register_buffer("shift", shift.float().reshape(1, -1, 1, 1, 1))
        self.relu = spec.relu
        self.padding = (0, 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def channels(self, channels: int) -> int:
        return channels

    def apply(self, h: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` = the step of ``h`` (same shape, views allowed)."""
        with torch.inference_mode(False):
            if self.identity:
                out.copy_(h)
            else:
                torch.addcmul(self.shift, h, self.scale, out=out)
            if self.relu:
                out.clamp_min_(0)

    def run(self, h, height, width, out, margin, threads) -> None:
        del height, width, threads
        self.apply(h, interior(out, margin))

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_fallback is not None and x.shape[0] < self.min_batch:
            for module in self.dense_fallback:
                x = module.forward(x)
            return x
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
            raise TypeError("the sparse tile program takes float32 NCHW input on the CPU, "
                            f"got {x.dtype} {tuple(x.shape)} on {x.device.type}")
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
