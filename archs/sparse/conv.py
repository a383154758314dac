"""Sparse convolutions: a run of convolutions (BatchNorm folded in, ReLU and max-pools fused)
replaced by one module that runs numba's direct sparse convolution
(:mod:`archs.sparse.numba_conv`) on tiles of 16 images.

Takes and returns NCHW tensors like the modules it replaces. On entry the batch is cut into
tiles of 16 images (the last one zero-filled) and laid out position-major with the first
convolution's padding around each plane; every layer then writes into a buffer already
padded for the layer after it; on exit the layout is turned back into NCHW. With at least
as many tiles as threads, all of it is one parallel call, each thread taking whole tiles
through every layer (:mod:`archs.sparse.conv_one_call`); otherwise each layer is shared
out among the threads in turn.
"""
from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from archs.sparse.common import numpy_buffers

TILE = 16   # images per tile: archs.sparse.numba_vectors.TILE, without importing numba here
PIXELS = 8  # output pixels per block: archs.sparse.numba_conv.PIXELS


def load_conv_kernels():
    """:mod:`archs.sparse.numba_conv`, imported (and compiled the first time) on first use."""
    from archs.sparse import numba_conv
    return numba_conv


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


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   norm: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``norm(conv(x))`` as one convolution, computed in float64.

    ``norm`` in eval mode scales output channel ``o`` by ``gamma / sqrt(var + eps)`` and
    shifts it; a zero weight stays zero, so the fold keeps the ticket's sparsity.
    """
    out_channels = weight.shape[0]
    weight64 = weight.detach().double()
    bias64 = (torch.zeros(out_channels, dtype=torch.float64) if bias is None
              else bias.detach().double())
    if norm is None:
        return weight64.to(weight.dtype), bias64.to(weight.dtype)
    scale, shift = batchnorm_affine(norm)
    folded = weight64 * scale.reshape(-1, 1, 1, 1)
    return folded.to(weight.dtype), (bias64 * scale + shift).to(weight.dtype)


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of a run: the module, the BatchNorm after it, whether ReLU follows."""
    conv: nn.Conv2d
    norm: nn.BatchNorm2d | None
    relu: bool


@dataclass(frozen=True)
class PoolSpec:
    """A max-pool of a run (no padding, no dilation, floor mode)."""
    kernel: tuple[int, int]
    stride: tuple[int, int]


class ConvStep(nn.Module):
    """One convolution, its weights stored per output channel (CSR of the flattened filter)."""

    def __init__(self, spec: ConvSpec):
        super().__init__()
        conv = spec.conv
        weight, bias = fold_batchnorm(conv.weight, conv.bias, spec.norm)
        self.out_channels, self.group_channels, self.kernel_h, self.kernel_w = weight.shape
        self.groups = conv.groups
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.relu = spec.relu
        flat = weight.reshape(self.out_channels, -1)
        nonzero = flat != 0
        positions = nonzero.nonzero()
        channel, rest = positions[:, 1] // (self.kernel_h * self.kernel_w), positions[:, 1] % (
            self.kernel_h * self.kernel_w)
        group = positions[:, 0] // (self.out_channels // self.groups)
        # where each stored weight reads: input channel, row, column of the filter
        self.register_buffer("taps", torch.stack(
            [group * self.group_channels + channel, rest // self.kernel_w, rest % self.kernel_w], 1))
        self.register_buffer("crow", torch.cat([torch.zeros(1, dtype=torch.int64),
                                                nonzero.sum(1).cumsum(0)]).contiguous())
        self.register_buffer("values", flat[nonzero].float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())
        self._plans: dict[tuple, tuple] = {}

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output height and width for an unpadded input of ``height`` x ``width``."""
        return ((height + 2 * self.padding[0] - self.kernel_h) // self.stride[0] + 1,
                (width + 2 * self.padding[1] - self.kernel_w) // self.stride[1] + 1)

    def plan(self, padded_h: int, padded_w: int, margin: tuple[int, int],
             pool: bool = False) -> tuple:
        """What the kernel needs for one input size (made once per size): geometry, each
        output pixel's base and target, each stored weight's offset (see
        :func:`archs.sparse.numba_conv.conv_layer`); with ``pool``, a 2 x 2 max-pool fused."""
        key = (padded_h, padded_w, margin, pool, self.taps.data_ptr())
        if key not in self._plans:
            self._plans[key] = self._make_plan(padded_h, padded_w, margin, pool)
        return self._plans[key]

    def _make_plan(self, padded_h: int, padded_w: int, margin: tuple[int, int],
                   pool: bool) -> tuple:
        out_h = (padded_h - self.kernel_h) // self.stride[0] + 1
        out_w = (padded_w - self.kernel_w) // self.stride[1] + 1
        if pool:
            # a block: PIXELS / 4 windows of 2 x 2 output pixels, one stored maximum each
            out_h, out_w, per_block = out_h // 2, out_w // 2, PIXELS // 4
        else:
            per_block = PIXELS
        rows, columns = out_h + 2 * margin[0], out_w + 2 * margin[1]
        pixels = out_h * out_w
        blocks = -(-pixels // per_block)
        # the last block repeats the last pixel: computed twice, written twice, same value
        index = torch.arange(blocks * per_block).clamp_max(pixels - 1)
        oy, ox = index // out_w, index % out_w
        targets = ((oy + margin[0]) * columns + ox + margin[1]) * TILE
        if pool:
            oy = (2 * oy[:, None] + torch.tensor([0, 0, 1, 1])).reshape(-1)
            ox = (2 * ox[:, None] + torch.tensor([0, 1, 0, 1])).reshape(-1)
        bases = (oy * self.stride[0] * padded_w + ox * self.stride[1]) * TILE
        channel, row, column = self.taps.unbind(1)
        offsets = ((channel * padded_h + row) * padded_w + column).to(torch.int32)
        geometry = torch.tensor([self.group_channels * self.groups, padded_h, padded_w,
                                 self.out_channels, rows * columns, blocks, int(pool)])
        return tuple(array.contiguous().numpy() for array in (geometry, bases, targets, offsets))

    def run(self, h: torch.Tensor, height: int, width: int, out: torch.Tensor,
            margin: tuple[int, int], threads: int, pool: bool = False) -> None:
        """This convolution of ``h`` (tile layout, padded for it; ``height`` x ``width``
        unpadded) written into ``out`` (tile layout, its border of ``margin`` zero); with
        ``pool``, max-pooled 2 x 2 (stride 2) as it is written."""
        del height, width  # the plan reads the padded size off ``h``
        geometry, bases, targets, offsets = self.plan(h.shape[2], h.shape[3], margin, pool)
        crow, values, bias = numpy_buffers(self, ("crow", "values", "bias"))
        load_conv_kernels().conv_layer(h.view(-1).numpy(), geometry, bases, targets, crow,
                                       offsets, values, bias, self.relu, out.view(-1).numpy(),
                                       h.shape[0], threads)

    def shape(self) -> list:
        return ["conv", self.out_channels, self.group_channels, self.kernel_h, self.kernel_w,
                *self.stride, *self.padding, self.groups, self.values.numel(), self.relu]

    def extra_repr(self) -> str:
        return (f"{self.group_channels * self.groups}->{self.out_channels}, kernel="
                f"{self.kernel_h}x{self.kernel_w}, stride={self.stride}, padding={self.padding}, "
                f"groups={self.groups}, stored={self.values.numel()}, relu={self.relu}")


class PoolStep(nn.Module):
    def __init__(self, spec: PoolSpec):
        super().__init__()
        self.kernel, self.stride = spec.kernel, spec.stride

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return ((height - self.kernel[0]) // self.stride[0] + 1,
                (width - self.kernel[1]) // self.stride[1] + 1)

    def run(self, h: torch.Tensor, height: int, width: int, out: torch.Tensor,
            margin: tuple[int, int], threads: int) -> None:
        """The max-pool of ``h`` (tile layout, ``height`` x ``width``, no border) into ``out``."""
        out_h, out_w = self.output_size(height, width)
        geometry = torch.tensor([h.shape[1], height, width, out_h, out_w, *self.kernel,
                                 *self.stride, *margin])
        load_conv_kernels().pool_layer(h.view(-1).numpy(), geometry.numpy(),
                                       out.view(-1).numpy(), h.shape[0], threads)

    def fuses(self) -> bool:
        """Whether the convolution before it can compute it as it writes (2 x 2, stride 2)."""
        return self.kernel == (2, 2) and self.stride == (2, 2)

    def shape(self) -> list:
        return ["maxpool", *self.kernel, *self.stride]

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


class _Workspace(threading.local):
    """Two buffers per thread that every chain's layers write in turn, grown on demand.

    A fresh buffer per layer costs a page fault per 4 KiB on first touch (measured: 6.6 ms
    to zero 19 MB, a third of a sparse 3x3 layer at 64 images); reused buffers do not. A
    chain's forward never runs inside another's, so one pair per thread serves them all.
    """

    def __init__(self):
        self.buffers = [torch.empty(0), torch.empty(0)]

    def take(self, which: int, shape: tuple, margin: tuple[int, int]) -> torch.Tensor:
        """Buffer ``which`` (0 or 1) viewed as ``shape``, its border of ``margin`` zeroed."""
        # ordinary tensors even in inference mode: they are written again outside it
        with torch.inference_mode(False):
            numel = math.prod(shape)
            if self.buffers[which].numel() < numel:
                self.buffers[which] = torch.empty(numel)
            out = self.buffers[which][:numel].view(shape)
            margin_h, margin_w = margin
            if margin_h:
                out[:, :, :margin_h].zero_()
                out[:, :, -margin_h:].zero_()
            if margin_w:
                out[:, :, :, :margin_w].zero_()
                out[:, :, :, -margin_w:].zero_()
            return out


_WORKSPACE = _Workspace()


def to_tiles(x: torch.Tensor, padding: tuple[int, int], threads: int,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """NCHW ``x`` as tiles x C x (H + 2 pad) x (W + 2 pad) x TILE, zero border and filling
    (into ``out`` when given, whose border must be zero)."""
    images, channels, height, width = x.shape
    tiles = -(-images // TILE)
    if out is None:
        out = x.new_zeros(tiles, channels, height + 2 * padding[0], width + 2 * padding[1], TILE)
    elif images < tiles * TILE:
        with torch.inference_mode(False):
            out[-1].zero_()
    load_conv_kernels().to_tiles(x.contiguous().view(-1).numpy(), x.shape, padding,
                                 out.view(-1).numpy(), threads)
    return out


def from_tiles(h: torch.Tensor, images: int, threads: int) -> torch.Tensor:
    """The first ``images`` images of tiles ``h`` (tiles x C x H x W x TILE) as NCHW."""
    _, channels, height, width, _ = h.shape
    out = h.new_empty(images, channels, height, width)
    load_conv_kernels().from_tiles(h.view(-1).numpy(), images, channels, height * width,
                                   out.view(-1).numpy(), threads)
    return out


class SparseConvChain(nn.Module):
    """Convolutions and max-pools run in the tile layout, NCHW in and out (CPU, float32).

    With a ``dense_fallback`` (the original modules), batches of fewer than ``min_batch``
    images run those instead: "auto" timed the chain at one batch size, and a smaller batch
    fills its last tile of 16 with zeros.
    """

    def __init__(self, specs: Sequence[ConvSpec | PoolSpec],
                 dense_fallback: Sequence[nn.Module] | None = None, min_batch: int = 0):
        super().__init__()
        self.steps = nn.ModuleList(ConvStep(s) if isinstance(s, ConvSpec) else PoolStep(s)
                                   for s in specs)
        if not isinstance(self.steps[0], ConvStep):
            raise ValueError("a sparse convolution chain starts with a convolution")
        self._set_fallback(dense_fallback, min_batch)
        load_conv_kernels()    # import (and compile, the first time) now, not in a timed call

    def _set_fallback(self, dense_fallback, min_batch: int) -> None:
        self.dense_fallback = None if dense_fallback is None else nn.ModuleList(dense_fallback)
        self.min_batch = min_batch

    def with_dense_fallback(self, dense_fallback: Sequence[nn.Module],
                            min_batch: int) -> "SparseConvChain":
        """A copy (sharing the weights) that runs batches under ``min_batch`` images dense."""
        chain = copy.copy(self)
        chain._modules = dict(self._modules)
        chain._set_fallback(dense_fallback, min_batch)
        return chain

    def layer_shapes(self) -> list[list]:
        return [step.shape() for step in self.steps]

    def _margin(self, index: int) -> tuple[int, int]:
        """The zero border the step after ``index`` reads around its input."""
        following = self.steps[index + 1] if index + 1 < len(self.steps) else None
        return following.padding if isinstance(following, ConvStep) else (0, 0)

    def dense_if_small(self, x: torch.Tensor, what: str = "sparse convolution chain") -> torch.Tensor | None:
        """The dense fallback's output for a batch under ``min_batch`` images, else None once
        ``x`` is checked to be what the kernels take (float32 NCHW on the CPU)."""
        if self.dense_fallback is not None and x.shape[0] < self.min_batch:
            for module in self.dense_fallback:
                x = module.forward(x)
            return x
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
            raise TypeError(f"the {what} takes float32 NCHW input on the CPU, "
                            f"got {x.dtype} {tuple(x.shape)} on {x.device.type}")
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.dense_if_small(x)
        if dense is not None:
            return dense
        threads = torch.get_num_threads()
        images, _, height, width = x.shape
        padding = self.steps[0].padding
        tiles = -(-images // TILE)
        from archs.sparse import conv_one_call
        if conv_one_call.worth_it(tiles, threads):
            return conv_one_call.run(self, x.detach(), threads)
        h = to_tiles(x.detach(), padding, threads, _WORKSPACE.take(0, (
            tiles, x.shape[1], height + 2 * padding[0], width + 2 * padding[1], TILE), padding))
        return from_tiles(self.run_tiles(h, height, width, 1), images, threads)

    def run_tiles(self, h: torch.Tensor, height: int, width: int, buffer: int = 0) -> torch.Tensor:
        """Every step on ``h`` (tile layout, padded for the first step; ``height`` x ``width``
        unpadded), the steps' outputs in this thread's workspace buffers from ``buffer`` on,
        in turn. Returns the last output (no border)."""
        threads = torch.get_num_threads()
        for step, pool, margin in self.schedule():
            out_h, out_w = step.output_size(height, width)
            if pool is not None:
                out_h, out_w = pool.output_size(out_h, out_w)
            shape = (h.shape[0], step.out_channels if isinstance(step, ConvStep) else h.shape[1],
                     out_h + 2 * margin[0], out_w + 2 * margin[1], TILE)
            out = _WORKSPACE.take(buffer % 2, shape, margin)
            if pool is not None:
                step.run(h, height, width, out, margin, threads, pool=True)
            else:
                step.run(h, height, width, out, margin, threads)
            h, height, width, buffer = out, out_h, out_w, buffer + 1
        return h

    def schedule(self) -> list[tuple[ConvStep | PoolStep, PoolStep | None, tuple[int, int]]]:
        """The steps as the kernels run them: (step, the 2 x 2 max-pool fused into it or None,
        the border its output needs). A 2 x 2 max-pool right after a convolution is
        computed as it writes: the full-size output is never stored (LeNet5's second layer
        at 64 images wrote 16 MiB, then read them again to pool)."""
        steps, scheduled, index = list(self.steps), [], 0
        while index < len(steps):
            step = steps[index]
            following = steps[index + 1] if index + 1 < len(steps) else None
            pool = (following if isinstance(step, ConvStep) and isinstance(following, PoolStep)
                    and following.fuses() else None)
            last = index + 1 if pool is not None else index
            scheduled.append((step, pool, self._margin(last)))
            index = last + 1
        return scheduled
