"""Converting a model: find the runs of linear layers, choose their kernels, and rebuild
the model around the chains (:func:`sparsify`, the package's entry point)."""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterable

import torch
from torch import nn

from archs.pruning import PRUNABLE_LAYERS
from archs.sparse.chains import (Affine, NumbaTiledChain, TransposedChain, build_layer,
                                 compact_chain)
from archs.sparse.choice import (PER_LAYER_CHAIN, TILED_CHAIN, Settings, Timing, choose_kernel,
                                 keep_fastest_chain, tiled_applies, weight_name)
from archs.sparse.blocks import block_supported
from archs.sparse.conv_conversion import (conv_runs, convert_conv_run, gather_trunk,
                                          unsupported_choice)
from archs.sparse.common import (BENCHMARK_MODES, COO, DENSE, KERNEL_MODES, TORCH_CSR,
                                 NUMBA_TILED, LayerChoice, record_inputs, weight_sparsity)
from archs.sparse.cuda import SEMI_STRUCTURED, sparsify_layers
from archs.sparse.layers import CooLinear
from archs.sparse.timing import KernelTimingCache, Timer
from utils import UserError

# Modules that may sit between linear layers of a chain: the identity at inference.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.AlphaDropout)

# --------------------------------------------------------------------------- finding chains
@dataclass
class _Run:
    """Children of an ``nn.Sequential`` that can share feature-major activations.

    A Linear, then any mix of Linears, ReLUs and modules that are the identity at
    inference. ``linears`` holds (child name, module, whether a ReLU follows it).
    """
    children: list[tuple[str, nn.Module]]
    linears: list[tuple[str, nn.Linear, bool]]


def _linear_runs(children: Iterable[tuple[str, nn.Module]]) -> list[_Run]:
    runs: list[_Run] = []
    current: _Run | None = None
    for name, module in children:
        if isinstance(module, nn.Linear):
            current = current or _Run([], [])
            current.linears.append((name, module, False))
        elif current is not None and isinstance(module, nn.ReLU):
            last_name, last_linear, _ = current.linears[-1]
            current.linears[-1] = (last_name, last_linear, True)
        elif current is None or not isinstance(module, _PASS_THROUGH):
            if current is not None:
                runs.append(current)
            current = None
            continue
        current.children.append((name, module))
    if current is not None:
        runs.append(current)
    return runs


# --------------------------------------------------------------------------- conversion
def _as_affine(linear: nn.Linear, relu: bool, kernel: str) -> Affine:
    weight = linear.weight.detach()
    bias = (linear.bias.detach() if linear.bias is not None
            else torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))
    return Affine(weight=weight, bias=bias, has_bias=linear.bias is not None, relu=relu,
                   kernel=kernel)


# The candidates "auto" times for a whole chain, besides the original layers ("dense"):

def _convert_run(run: _Run,
                 settings: Settings) -> tuple[dict[str, nn.Module | None], list[LayerChoice]]:
    """What replaces the children of ``run`` (name -> module, None = removed) and the choices.

    Leading dense layers keep their original modules (batch-major, no transposes). From
    the first sparse layer on, the run becomes one chain: numba's tiled chain ("sparse"
    mode), or a :class:`TransposedChain` whose dense layers are computed feature-major,
    which costs the same as ``nn.Linear``. "auto" times both against the original layers,
    the tiled chain from the first pruned layer even when no layer alone was faster sparse.
    """
    choices = [choose_kernel(weight_name(settings.module_names[linear]), linear, relu,
                             settings.mode, settings.threshold,
                             settings.recorded_inputs.get(linear), settings.timing)
               for _, linear, relu in run.linears]
    sparse_positions = [i for i, choice in enumerate(choices) if choice.kernel != DENSE]
    pruned_positions = [i for i, choice in enumerate(choices) if choice.sparsity > 0]
    # "auto" times chains from the first pruned layer whose input the example reached
    timed = bool(pruned_positions) and run.linears[pruned_positions[0]][1] in settings.recorded_inputs
    starts = pruned_positions if timed else sparse_positions
    if not starts:
        return {}, choices
    first = starts[0]
    first_name, first_linear, _ = run.linears[first]
    layers = [_as_affine(linear, relu, choice.kernel)
              for (_, linear, relu), choice in zip(run.linears[first:], choices[first:])]
    compacted, used_inputs = compact_chain(layers)
    start = [name for name, _ in run.children].index(first_name)
    segment = [module for _, module in run.children[start:]]
    if timed:
        candidates = {}
        if sparse_positions:
            candidates[PER_LAYER_CHAIN] = TransposedChain(
                [build_layer(layer) for layer in compacted], first_linear.in_features, used_inputs)
        if tiled_applies(compacted):
            candidates[TILED_CHAIN] = NumbaTiledChain(compacted, first_linear.in_features,
                                                      used_inputs)
        if not candidates:
            return {}, choices
        chain, choices = keep_fastest_chain(segment, candidates, choices, first,
                                             settings.recorded_inputs[first_linear],
                                             settings.timing)
        if chain is None:
            return {}, choices
    elif settings.mode == "sparse" and tiled_applies(compacted):
        chain = NumbaTiledChain(compacted, first_linear.in_features, used_inputs)
        choices[first:] = [replace(c, kernel=NUMBA_TILED, reason=(
            "pruned linear layer" if c.is_sparse else "not pruned") + "; numba's tiled chain "
            "runs it with the chain's other layers") for c in choices[first:]]
    else:
        chain = TransposedChain([build_layer(layer) for layer in compacted],
                                first_linear.in_features, used_inputs)
    replacement: dict[str, nn.Module | None] = {name: None for name, _ in run.children[start:]}
    replacement[first_name] = chain
    return replacement, choices


def _rebuild(module: nn.Module, settings: Settings, choices: list[LayerChoice]) -> nn.Module:
    """``module`` with its linear layers and convolutions converted, recursing into its
    children.

    A plain ``nn.Sequential`` is rebuilt so that a chain can replace several children; any
    other container keeps its own ``forward`` and has its layers converted one by one
    (each then changes layout on its own).
    """
    if isinstance(module, nn.Linear):
        lone = _Run(children=[("", module)], linears=[("", module, False)])
        replacement, run_choices = _convert_run(lone, settings)
        choices.extend(run_choices)
        return replacement.get("", module)
    if isinstance(module, nn.Conv2d) or block_supported(module):
        runs = conv_runs([("", module)])
        if not runs:
            choices.append(unsupported_choice(module, settings))
            return module
        replacement, run_choices = convert_conv_run(runs[0], settings)
        choices.extend(run_choices)
        return replacement.get("", module)
    if type(module) is nn.Sequential:
        children = list(module.named_children())
        replacement: dict[str, nn.Module | None] = {}
        in_runs: set[str] = set()
        for run in _linear_runs(children):
            run_replacement, run_choices = _convert_run(run, settings)
            replacement.update(run_replacement)
            choices.extend(run_choices)
            in_runs.update(name for name, _ in run.children)
        for conv_run in conv_runs(children):
            run_replacement, run_choices = convert_conv_run(conv_run, settings)
            replacement.update(run_replacement)
            choices.extend(run_choices)
            in_runs.update(name for name, _ in conv_run.children)
        kept = OrderedDict()
        for name, child in children:
            if name in replacement:
                if replacement[name] is not None:
                    kept[name] = replacement[name]
            else:
                kept[name] = child if name in in_runs else _rebuild(child, settings, choices)
        return nn.Sequential(kept)
    if settings.mode in ("sparse", "auto"):
        gather_trunk(module)
    for name, child in list(module.named_children()):
        setattr(module, name, _rebuild(child, settings, choices))
    return module


def _with_coo_linears(module: nn.Module, settings: Settings,
                      choices: list[LayerChoice]) -> nn.Module:
    """Every ``nn.Linear`` replaced by :class:`CooLinear`, as the original program did."""
    if isinstance(module, nn.Linear):
        name = weight_name(settings.module_names[module])
        choices.append(LayerChoice(name, weight_sparsity(module.weight), COO,
                                   "original program's approach: every linear layer as COO"))
        return CooLinear(module.weight, module.bias)
    for name, child in list(module.named_children()):
        setattr(module, name, _with_coo_linears(child, settings, choices))
    return module


def _check_arguments(mode: str, threshold: float | None,
                     example_input: torch.Tensor | None) -> None:
    if mode not in BENCHMARK_MODES:
        raise UserError(f"unknown kernel mode {mode!r}; choose one of {', '.join(KERNEL_MODES)}")
    if threshold is not None and mode != "auto":
        raise UserError("a sparsity threshold only applies to the 'auto' kernel mode")
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError(f"the sparsity threshold must be in [0, 1], got {threshold}")
    if mode == "auto" and threshold is None and example_input is None:
        raise UserError("the 'auto' kernel mode times the kernels on this machine and needs an "
                        "example input batch (or a sparsity threshold of your own)")


def sparsify(model: nn.Module, mode: str, *, example_input: torch.Tensor | None = None,
             timing_cache: KernelTimingCache | None = None, timer: Timer | None = None,
             threshold: float | None = None) -> tuple[nn.Module, list[LayerChoice]]:
    """An inference-only copy of ``model`` whose linear layers use the chosen kernels.

    ``mode``: "dense" returns an unchanged copy; "sparse" runs every pruned ``nn.Linear``
    (any zero weight) with numba's CSR kernel (torch's off the CPU or for other dtypes);
    "auto" runs each pruned layer with whichever of dense, torch's and numba's CSR kernels
    is fastest when timed on this machine with the activations ``example_input`` (a batch
    as the model will see it) produces at that layer, keeps a chain of layers only if it
    beats the original layers as a whole, and runs batches smaller than
    ``example_input`` dense. ``timing_cache`` keeps those timings between runs (None: time
    every time); ``timer`` replaces :class:`~archs.sparse.timing.InterleavedTimer` (tests).
    With a ``threshold`` instead, "auto" runs sparse every layer at least that sparse,
    without timing. "torch_csr" and "coo" are for the benchmark: torch's CSR kernel for
    every pruned layer, and the original program's COO approach. ``example_input`` is
    only used by "auto". The copy is in eval mode without gradients; the original is not
    modified. Returns the copy and one :class:`LayerChoice` per prunable layer
    (convolutions included), in the model's order. A model on a CUDA device, and the
    "semi_structured" mode, go to :func:`archs.sparse.cuda.sparsify_layers` (per-layer dense,
    CSR and 2:4 kernels).
    """
    _check_arguments(mode, threshold, example_input)
    if mode == SEMI_STRUCTURED or (mode in ("sparse", "auto", TORCH_CSR) and _on_cuda(model)):
        # per layer, dense, CSR or cuSPARSELt's 2:4 (archs/sparse/cuda.py)
        return sparsify_layers(model, mode, example_input=example_input, threshold=threshold,
                               timing=Timing(timer, timing_cache))
    converted = copy.deepcopy(model).eval().requires_grad_(False)
    module_names = {module: name for name, module in converted.named_modules()}
    timing = Timing(timer, timing_cache)
    made: list[LayerChoice] = []
    if mode == COO:
        converted = _with_coo_linears(converted, Settings(mode, None, {}, module_names, timing), made)
    elif mode != DENSE:
        timed = mode == "auto" and threshold is None
        recorded = record_inputs(converted, example_input, also=block_supported) if timed else {}
        settings = Settings(mode, threshold, recorded, module_names, timing)
        converted = _rebuild(converted, settings, made)
    # eval() again: the modules created by the conversion start in training mode
    converted.eval()
    return converted, _choices_in_model_order(module_names, made, mode)


def _on_cuda(model: nn.Module) -> bool:
    return any(parameter.device.type == "cuda" for parameter in model.parameters())


def _choices_in_model_order(module_names: dict[nn.Module, str], made: list[LayerChoice],
                            mode: str) -> list[LayerChoice]:
    by_name = {choice.name: choice for choice in made}
    choices = []
    for module, module_name in module_names.items():
        if not isinstance(module, PRUNABLE_LAYERS):
            continue
        name = weight_name(module_name)
        sparsity = weight_sparsity(module.weight)
        if name in by_name:
            choices.append(by_name[name])
        else:
            choices.append(LayerChoice(name, sparsity, "dense", f"{mode} mode"))
    return choices


