"""Residual and dense blocks run in the tile layout of :mod:`archs.sparse.conv`: the steps
of a :class:`~archs.sparse.tile_program.TileProgram` that replace torchvision's
``BasicBlock``, ``Bottleneck``, ``_DenseBlock`` and ``_Transition`` for the replay.

Residual blocks (post-activation, conv -> BN -> ReLU): each BatchNorm is folded into the
convolution before it (:func:`~archs.sparse.conv.fold_batchnorm`, exact), the shortcut's
1x1 convolution too; the block adds the shortcut and applies the last ReLU in place.

Dense blocks (pre-activation, BN -> ReLU -> conv): a BatchNorm *before* a convolution
cannot be folded into it. Without the ReLU between them, ``conv(W, a x + b)`` would be a
convolution of ``x`` with weights ``W a`` plus a bias ``sum W b``, but only where every tap
reads the image: the zero padding is added after the BatchNorm, so at the border the taps
that read padding would wrongly add their share of ``b`` (exact only for unpadded
convolutions). The ReLU in between rules it out everywhere. Nor can it be folded into the
convolution that produced the features: in a dense block every layer's output is read by
all later layers, each through its own BatchNorm. So ``norm1`` + ``relu1`` run as one
per-channel multiply-add and clamp on the concatenated features (what the dense network
does too), and ``norm2`` (after ``conv1``, before ``relu2``) is folded into ``conv1``
exactly. New features are copied into the block's output buffer, which is the
concatenation. A transition (BN, ReLU, 1x1 convolution, 2x2 average pool) pools before the
convolution: a 1x1 convolution and an average pool are both linear per pixel, so they
commute exactly, and the convolution then runs on a quarter of the pixels.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.densenet import _DenseBlock, _DenseLayer, _Transition
from torchvision.models.resnet import BasicBlock, Bottleneck

from archs.sparse.conv import ConvSpec, ConvStep
from archs.sparse.tile_program import (BUFFERS, AffineSpec, AffineStep, interior,
                                       load_block_kernels, norm_supported, tile_shape)


def _conv_ok(conv: nn.Module) -> bool:
    # imported here: conv_conversion imports this module
    from archs.sparse.conv_conversion import conv_supported
    return conv_supported(conv)


def _run_into(step: ConvStep, h: torch.Tensor, height: int, width: int,
              margin: tuple[int, int], threads: int, busy: tuple) -> tuple:
    """``step`` of ``h`` into a fresh buffer with ``margin``; (buffer, height, width)."""
    out_h, out_w = step.output_size(height, width)
    out = BUFFERS.take(tile_shape(h.shape[0], step.out_channels, out_h, out_w, margin), margin,
                       busy)
    step.run(h, height, width, out, margin, threads)
    return out, out_h, out_w


class ResidualStep(nn.Module):
    """``relu(main(x) + shortcut(x))``: the main path's convolutions with their BatchNorms
    folded (ReLU after all but the last), the shortcut the identity or a folded 1x1
    convolution."""

    def __init__(self, main: list[ConvSpec], shortcut: ConvSpec | None):
        super().__init__()
        self.main = nn.ModuleList(ConvStep(spec) for spec in main)
        self.shortcut = None if shortcut is None else ConvStep(shortcut)
        self.padding = self.main[0].padding

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        for step in self.main:
            height, width = step.output_size(height, width)
        return height, width

    def channels(self, channels: int) -> int:
        return self.main[-1].out_channels

    def run(self, h, height, width, out, margin, threads) -> None:
        a, a_h, a_w = h, height, width
        for index, step in enumerate(self.main):
            if index == len(self.main) - 1:
                step.run(a, a_h, a_w, out, margin, threads)
            else:
                a, a_h, a_w = _run_into(step, a, a_h, a_w, self.main[index + 1].padding,
                                        threads, (h, out, a))
        source, pad = h, self.padding
        if self.shortcut is not None:
            if self.shortcut.padding != self.padding:
                pad = self.shortcut.padding
                source = BUFFERS.take(tile_shape(h.shape[0], h.shape[1], height, width, pad),
                                      pad, (h, out))
                with torch.inference_mode(False):
                    interior(source, pad).copy_(interior(h, self.padding))
            source, _, _ = _run_into(self.shortcut, source, height, width, (0, 0), threads,
                                     (h, out, source))
            pad = (0, 0)
        # out = relu(out + shortcut) on the interior (the border stays zero)
        geometry = torch.tensor([*self.output_size(height, width), *out.shape[2:4], *margin,
                                 *source.shape[2:4], *pad])
        load_block_kernels().add_relu(out.view(-1).numpy(), geometry.numpy(),
                                      source.view(-1).numpy(), out.shape[0] * out.shape[1],
                                      threads)

    def shape(self) -> list:
        return ["residual", [step.shape() for step in self.main],
                None if self.shortcut is None else self.shortcut.shape()]


def _residual_parts(block: nn.Module) -> tuple[list, list, ConvSpec | None] | None:
    """The main path's convolutions and BatchNorms and the shortcut's spec; None where the
    block is not a torchvision residual block the kernel covers."""
    if isinstance(block, BasicBlock):
        convs, norms = [block.conv1, block.conv2], [block.bn1, block.bn2]
    elif isinstance(block, Bottleneck):
        convs, norms = [block.conv1, block.conv2, block.conv3], [block.bn1, block.bn2, block.bn3]
    else:
        return None
    if not (all(_conv_ok(c) for c in convs) and all(norm_supported(n) for n in norms)):
        return None
    shortcut = None
    if block.downsample is not None:
        parts = list(block.downsample.children())
        if not (isinstance(block.downsample, nn.Sequential) and len(parts) == 2
                and _conv_ok(parts[0]) and norm_supported(parts[1])):
            return None
        shortcut = ConvSpec(parts[0], parts[1], False)
    return convs, norms, shortcut


def _residual(block: nn.Module) -> ResidualStep:
    convs, norms, shortcut = _residual_parts(block)
    return ResidualStep([ConvSpec(conv, norm, index < len(convs) - 1)
                         for index, (conv, norm) in enumerate(zip(convs, norms))], shortcut)


class DenseBlockStep(nn.Module):
    """A DenseNet block: each layer's ``relu(norm1(features))`` per channel, ``conv1`` with
    ``norm2`` folded and ReLU fused, ``conv2``; the new features appended in the output."""

    def __init__(self, block: _DenseBlock):
        super().__init__()
        layers = list(block.values())
        self.norms = nn.ModuleList(AffineStep(AffineSpec(layer.norm1, True)) for layer in layers)
        self.bottlenecks = nn.ModuleList(ConvStep(ConvSpec(layer.conv1, layer.norm2, True))
                                         for layer in layers)
        self.convs = nn.ModuleList(ConvStep(ConvSpec(layer.conv2, None, False)) for layer in layers)
        self.padding = (0, 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def channels(self, channels: int) -> int:
        return channels + sum(conv.out_channels for conv in self.convs)

    def run(self, h, height, width, out, margin, threads) -> None:
        features = interior(out, margin)
        channels = h.shape[1]
        with torch.inference_mode(False):
            features[:, :channels].copy_(h)
        for norm, bottleneck, conv in zip(self.norms, self.bottlenecks, self.convs):
            activated = BUFFERS.take(tile_shape(h.shape[0], channels, height, width, (0, 0)),
                                     (0, 0), (h, out))
            norm.apply(features[:, :channels], activated, threads)
            narrow, _, _ = _run_into(bottleneck, activated, height, width, conv.padding,
                                     threads, (h, out, activated))
            new, _, _ = _run_into(conv, narrow, height, width, (0, 0), threads,
                                  (h, out, narrow))
            with torch.inference_mode(False):
                features[:, channels:channels + conv.out_channels].copy_(new)
            channels += conv.out_channels

    def shape(self) -> list:
        return ["dense_block", [[b.shape(), c.shape()] for b, c in zip(self.bottlenecks, self.convs)]]


class TransitionStep(nn.Module):
    """A DenseNet transition: ``relu(norm(x))`` per channel, the 2x2 average pool, then the
    1x1 convolution (pool and 1x1 convolution commute)."""

    def __init__(self, transition: _Transition):
        super().__init__()
        self.norm = AffineStep(AffineSpec(transition.norm, True))
        self.conv = ConvStep(ConvSpec(transition.conv, None, False))
        self.padding = (0, 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height // 2, width // 2

    def channels(self, channels: int) -> int:
        return self.conv.out_channels

    def run(self, h, height, width, out, margin, threads) -> None:
        tiles, channels = h.shape[:2]
        out_h, out_w = self.output_size(height, width)
        activated = BUFFERS.take(tuple(h.shape), (0, 0), (h, out))
        self.norm.apply(h, activated, threads)
        pooled = BUFFERS.take(tile_shape(tiles, channels, out_h, out_w, (0, 0)), (0, 0),
                              (h, out, activated))
        rows, columns = slice(0, 2 * out_h, 2), slice(0, 2 * out_w, 2)
        below, right = slice(1, 2 * out_h, 2), slice(1, 2 * out_w, 2)
        with torch.inference_mode(False):
            torch.add(activated[:, :, rows, columns], activated[:, :, below, columns], out=pooled)
            pooled += activated[:, :, rows, right]
            pooled += activated[:, :, below, right]
            pooled *= 0.25
        self.conv.run(pooled, out_h, out_w, out, margin, threads)

    def shape(self) -> list:
        return ["transition", self.conv.shape()]


def _transition_applies(block: nn.Module) -> bool:
    if type(block) is not _Transition:
        return False
    conv, pool = block.conv, block.pool
    return (_conv_ok(conv) and norm_supported(block.norm) and conv.kernel_size == (1, 1)
            and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and isinstance(pool, nn.AvgPool2d) and pool.kernel_size in (2, (2, 2))
            and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
            and not pool.ceil_mode and pool.divisor_override is None)


def _dense_block_applies(block: nn.Module) -> bool:
    return type(block) is _DenseBlock and all(
        type(layer) is _DenseLayer and norm_supported(layer.norm1) and norm_supported(layer.norm2)
        and _conv_ok(layer.conv1) and _conv_ok(layer.conv2) and layer.conv1.padding == (0, 0)
        for layer in block.values())


# (whether it applies to a block, the block's step): a new kind of block joins by appending
BLOCK_KINDS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module], nn.Module]]] = [
    (lambda block: _residual_parts(block) is not None, _residual),
    (_dense_block_applies, DenseBlockStep),
    (_transition_applies, TransitionStep),
]


def block_supported(module: nn.Module) -> bool:
    return any(applies(module) for applies, _ in BLOCK_KINDS)


def block_step(block: nn.Module) -> nn.Module:
    """The tile-layout step that replays ``block`` (one :func:`block_supported` accepts)."""
    for applies, build in BLOCK_KINDS:
        if applies(block):
            return build(block)
    raise ValueError(f"no tile-layout step replays a {type(block).__name__}")
