"""Converting convolutions: find the runs of convolutions (with their BatchNorms, ReLUs and
max-pools) that one :class:`~archs.sparse.conv.SparseConvChain` can replace, and choose
between it and the original modules.

A run is a convolution, then any mix of convolutions, BatchNorms right after a
convolution, ReLUs, max-pools and modules that are the identity at inference, among the
children of an ``nn.Sequential``; a convolution elsewhere (in a residual block, say) is a
run of its own. "sparse" runs every run holding a pruned convolution sparse; "auto" chooses
per convolution by timing (:mod:`archs.sparse.conv_choice`), with the original modules
for batches smaller than the example's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from archs.sparse.choice import Settings, weight_name
from archs.sparse.common import (CONVOLUTION_REASON, DENSE, NUMBA_CONV, LayerChoice,
                                 weight_sparsity)
from archs.sparse.conv import ConvSpec, PoolSpec, SparseConvChain
from archs.sparse.conv_choice import choose_conv_kernels

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
    specs: list[ConvSpec | PoolSpec] = field(default_factory=list)

    def convs(self) -> list[nn.Conv2d]:
        return [spec.conv for spec in self.specs if isinstance(spec, ConvSpec)]

    def _last_conv(self) -> int:
        return max(i for i, spec in enumerate(self.specs) if isinstance(spec, ConvSpec))

    def take(self, module: nn.Module) -> bool:
        """Add ``module`` to the run if it can follow; False where the run must end."""
        last = self.specs[-1] if self.specs else None
        pool = _pool_spec(module)
        if conv_supported(module):
            self.specs.append(ConvSpec(module, None, False))
        elif not self.specs:
            return False
        elif (isinstance(module, nn.BatchNorm2d) and isinstance(last, ConvSpec)
              and last.norm is None and not last.relu and module.running_var is not None
              and module.num_features == last.conv.out_channels):
            self.specs[-1] = replace(last, norm=module)
        elif isinstance(module, nn.ReLU):
            # after a max-pool too: the two commute
            index = self._last_conv()
            self.specs[index] = replace(self.specs[index], relu=True)
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
    else:
        reason = "pruned convolution; numba's sparse convolution chain (BatchNorm folded, ReLU " \
                 "and max-pool fused)"
    if settings.mode == "auto" and settings.threshold is None:
        replacement, choices = choose_conv_kernels(run.children, run.specs, settings)
        return replacement or {}, choices
    chain = SparseConvChain(run.specs)
    choices = _choices(run, settings, NUMBA_CONV, reason)
    replacement: dict[str, nn.Module | None] = {name: None for name, _ in run.children}
    replacement[run.children[0][0]] = chain
    return replacement, choices


def unsupported_choice(conv: nn.Module, settings: Settings) -> LayerChoice:
    return LayerChoice(weight_name(settings.module_names[conv]), weight_sparsity(conv.weight),
                       DENSE, CONVOLUTION_REASON)
