"""Converting convolutions: find the runs of convolutions (with their BatchNorms, ReLUs and
max-pools) that one :class:`~archs.sparse.conv.SparseConvChain` can replace, and choose
between it and the original modules.

A run is a convolution or a residual or dense block (:mod:`archs.sparse.blocks`), then any
mix of those, BatchNorms (folded into the convolution right before, else applied per
channel), ReLUs, max-pools and modules that are the identity at inference, among the
children of an ``nn.Sequential``; a convolution or block elsewhere is a run of its own. A
run of convolutions and max-pools becomes a :class:`~archs.sparse.conv.SparseConvChain`,
one with blocks or lone BatchNorms a :class:`~archs.sparse.tile_program.TileProgram`. A
ResNet's stem and stages are gathered into one ``nn.Sequential`` first
(:func:`gather_trunk`), so that its whole trunk is one run. "sparse" runs every run
holding a pruned convolution sparse. "auto" chooses per convolution by timing (:mod:`archs.sparse.conv_choice`) in a
run of convolutions and max-pools; a run with blocks is timed as a whole against the
original modules and kept only when at least
:data:`~archs.sparse.common.MEASURED_SPEEDUP_REQUIRED` times faster. Batches smaller than
the example's run the original modules.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torchvision.models.resnet import ResNet

from archs.models.resnet import CifarResNet
from archs.sparse.blocks import block_step, block_supported
from archs.sparse.choice import Settings, weight_name
from archs.sparse.common import (CONVOLUTION_REASON, DENSE, KERNELS_VERSION,
                                 MEASURED_SPEEDUP_REQUIRED, NUMBA_CONV, LayerChoice,
                                 weight_sparsity)
from archs.sparse.conv import ConvSpec, PoolSpec, SparseConvChain
from archs.sparse.conv_choice import choose_conv_kernels
from archs.sparse.tile_program import AffineSpec, BlockSpec, TileProgram, norm_supported
from archs.sparse.timing import timing_key

_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


def conv_supported(conv: nn.Module) -> bool:
    """Whether the sparse convolution kernel can run ``conv``: float32 on the CPU, zero
    padding given as numbers, no dilation."""
    return (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and tuple(conv.dilation) == (1, 1)
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu")


def _pool_spec(pool: nn.Module) -> PoolSpec | None:
    """The max-pool as the kernel runs it, None where it cannot (padding, dilation, ceil)."""
    if not isinstance(pool, nn.MaxPool2d) or pool.ceil_mode or pool.return_indices:
        return None
    pair = nn.modules.utils._pair
    if pair(pool.padding) != (0, 0) or pair(pool.dilation) != (1, 1):
        return None
    return PoolSpec(pair(pool.kernel_size), pair(pool.stride or pool.kernel_size))


@dataclass
class ConvRun:
    """Children of a Sequential one sparse chain can replace; ``specs`` in order."""
    children: list[tuple[str, nn.Module]] = field(default_factory=list)
    specs: list[ConvSpec | PoolSpec | AffineSpec | BlockSpec] = field(default_factory=list)

    def convs(self) -> list[nn.Conv2d]:
        """The run's convolutions, those inside its blocks included."""
        convs = []
        for spec in self.specs:
            if isinstance(spec, ConvSpec):
                convs.append(spec.conv)
            elif isinstance(spec, BlockSpec):
                convs += [m for m in spec.block.modules() if isinstance(m, nn.Conv2d)]
        return convs

    def _relu_target(self) -> int | None:
        """The convolution a ReLU after the run's end can fuse into: the last step, or the
        last before max-pools only (the two commute)."""
        for index in range(len(self.specs) - 1, -1, -1):
            if isinstance(self.specs[index], ConvSpec):
                return index
            if not isinstance(self.specs[index], PoolSpec):
                return None
        return None

    @property
    def straight(self) -> bool:
        """Only convolutions and max-pools (no blocks, no lone BatchNorm): auto can choose
        per convolution."""
        return all(isinstance(spec, (ConvSpec, PoolSpec)) for spec in self.specs)

    def replay(self) -> SparseConvChain:
        """The module that runs the run in the tile layout."""
        return SparseConvChain(self.specs) if self.straight else TileProgram(self.specs, block_step)

    def take(self, module: nn.Module) -> bool:
        """Add ``module`` to the run if it can follow; False where the run must end."""
        last = self.specs[-1] if self.specs else None
        pool = _pool_spec(module)
        if conv_supported(module):
            self.specs.append(ConvSpec(module, None, False))
        elif block_supported(module):
            self.specs.append(BlockSpec(module))
        elif not self.specs:
            return False
        elif (isinstance(module, nn.BatchNorm2d) and isinstance(last, ConvSpec)
              and last.norm is None and not last.relu and module.running_var is not None
              and module.num_features == last.conv.out_channels):
            self.specs[-1] = replace(last, norm=module)
        elif norm_supported(module):
            self.specs.append(AffineSpec(module, False))
        elif isinstance(module, nn.ReLU):
            index = self._relu_target()
            if index is not None:
                self.specs[index] = replace(self.specs[index], relu=True)
            elif isinstance(last, AffineSpec):
                self.specs[-1] = replace(last, relu=True)
            else:
                self.specs.append(AffineSpec(None, True))
        elif pool is not None:
            self.specs.append(pool)
        elif not isinstance(module, _PASS_THROUGH):
            return False
        return True


def conv_runs(children: list[tuple[str, nn.Module]]) -> list[ConvRun]:
    runs: list[ConvRun] = []
    current = ConvRun()
    for name, module in children:
        if current.take(module):
            current.children.append((name, module))
            continue
        if current.specs:
            runs.append(current)
        current = ConvRun()
        if current.take(module):
            current.children.append((name, module))
    if current.specs:
        runs.append(current)
    return runs


def _choices(run: ConvRun, settings: Settings, kernel: str, reason: str) -> list[LayerChoice]:
    return [LayerChoice(weight_name(settings.module_names[conv]), weight_sparsity(conv.weight),
                        kernel, reason) for conv in run.convs()]


def _overall_sparsity(run: ConvRun) -> float:
    weights = [conv.weight for conv in run.convs()]
    return 1.0 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


def _what(chain: SparseConvChain) -> str:
    if isinstance(chain, TileProgram):
        return ("the sparse tile program (residual and dense blocks in the tile layout, "
                "BatchNorm folded or per channel, ReLU fused)")
    return "the sparse convolution chain (BatchNorm folded, ReLU and max-pool fused)"


def _timed(run: ConvRun, chain: SparseConvChain, x: torch.Tensor,
           settings: Settings) -> tuple[SparseConvChain | None, list[LayerChoice]]:
    """The chain (dense below the example's batch) if timed fast enough, else None."""
    originals = [module for _, module in run.children]

    def dense() -> torch.Tensor:
        h = x
        for module in originals:
            h = module(h)
        return h

    key = timing_key(x.device, kernels=KERNELS_VERSION, what="conv", steps=chain.layer_shapes(),
                     input=list(x.shape), dtype=str(x.dtype))
    timings, cached = settings.timing.seconds(key, {DENSE: dense, NUMBA_CONV: lambda: chain(x)},
                                              x.device)
    speedup = timings[DENSE] / timings[NUMBA_CONV]
    source = "cached timing" if cached else "timed"
    if speedup < MEASURED_SPEEDUP_REQUIRED:
        return None, _choices(run, settings, DENSE, f"{source}: {_what(chain)} ran "
                              f"{speedup:.2f}x dense (needs {MEASURED_SPEEDUP_REQUIRED}x)")
    note = f"; batches under {x.shape[0]} images run dense" if x.shape[0] > 1 else ""
    return (chain.with_dense_fallback(originals, x.shape[0]),
            _choices(run, settings, NUMBA_CONV,
                     f"{source}: {_what(chain)} ran {speedup:.2f}x dense{note}"))


def convert_conv_run(run: ConvRun, settings: Settings
                     ) -> tuple[dict[str, nn.Module | None], list[LayerChoice]]:
    """What replaces the children of ``run`` (name -> module, None = removed), and the
    choices of its convolutions."""
    sparsity = _overall_sparsity(run)
    if sparsity == 0:
        return {}, _choices(run, settings, DENSE, "not pruned")
    if settings.mode not in ("sparse", "auto"):
        return {}, _choices(run, settings, DENSE, f"{settings.mode} mode converts linear layers only")
    if settings.mode == "auto" and settings.threshold is not None:
        if sparsity < settings.threshold:
            return {}, _choices(run, settings, DENSE, f"the convolutions' sparsity {sparsity:.3f} "
                                f"< threshold {settings.threshold:.2f}")
        reason = f"the convolutions' sparsity {sparsity:.3f} >= threshold {settings.threshold:.2f}"
    if settings.mode == "auto" and settings.threshold is None and run.straight:
        # chosen per convolution (choose_conv_kernels builds the chains it times)
        replacement, choices = choose_conv_kernels(run.children, run.specs, settings)
        return replacement or {}, choices
    chain = run.replay()
    if settings.mode == "sparse":
        reason = f"pruned convolution; numba's kernel in {_what(chain)}"
    if settings.mode == "auto" and settings.threshold is None:
        recorded = settings.recorded_inputs.get(run.children[0][1])
        if recorded is None:
            return {}, _choices(run, settings, DENSE, "the example input never reached this layer")
        chain, choices = _timed(run, chain, recorded, settings)
        if chain is None:
            return {}, choices
    else:
        choices = _choices(run, settings, NUMBA_CONV, reason)
    replacement: dict[str, nn.Module | None] = {name: None for name, _ in run.children}
    replacement[run.children[0][0]] = chain
    return replacement, choices


# The modules a ResNet's forward runs one after the other before its average pool
_TRUNKS = {ResNet: ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
           CifarResNet: ("conv1", "bn1", "relu", "layer1", "layer2", "layer3")}


def gather_trunk(module: nn.Module) -> None:
    """For a ResNet, whose forward runs conv1, bn1, relu, (maxpool,) layer1, ... in turn:
    all of them as one ``nn.Sequential`` in place of ``conv1``, the others identities, so
    that one run covers them and the tile layout is kept from stem to average pool."""
    names = _TRUNKS.get(type(module))
    if names is None:
        return
    children = []
    for name in names:
        child = getattr(module, name)
        if type(child) is nn.Sequential:
            children += [(f"{name}_{key}", block) for key, block in child.named_children()]
        else:
            children.append((name, child))
        setattr(module, name, nn.Identity())
    module.conv1 = nn.Sequential(OrderedDict(children))


def unsupported_choice(conv: nn.Module, settings: Settings) -> LayerChoice:
    return LayerChoice(weight_name(settings.module_names[conv]), weight_sparsity(conv.weight),
                       DENSE, CONVOLUTION_REASON)
