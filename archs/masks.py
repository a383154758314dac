"""Masks and pruning, as pure functions over ``{parameter name: tensor}`` dicts.

A mask is a boolean tensor shaped like its weight: True keeps the weight, False prunes it.
Only the weights of convolution and linear layers are prunable; biases and BatchNorm
parameters never are (the original pruned everything named "weight", BatchNorm included).

Pruning ranks survivors by a score: |w| for magnitude pruning, |g * w| for SNIP
(:func:`snip_scores`). The scope is layer-wise (every layer loses its own rate of its
survivors) or global (the layers are ranked together). The experiment's controls are
built from the magnitude masks: :func:`random_masks` keeps the same per-layer counts at
random places, :func:`reinitialise_survivors` redraws the ticket's initial values.

``torch.nn.utils.prune`` is not used: it reparametrises each weight as
``weight_orig * weight_mask`` behind a forward hook, which renames the state-dict keys the
saved tickets are read by and adds a multiplication to every forward pass. Plain masks
applied after each optimiser step keep the state dicts ordinary and the training loop fast.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from archs.optim import parse_duration
from data.settings import expected_percent_remaining, per_round_percent  # noqa: F401  (pruning schedule arithmetic, re-exported)
from utils import UserError

Masks = dict[str, torch.Tensor]

PRUNABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.state_dict()``) of the weights that pruning may remove."""
    return [f"{name}.weight" if name else "weight"
            for name, module in model.named_modules() if isinstance(module, PRUNABLE_LAYERS)]


def full_masks(model: nn.Module) -> Masks:
    """All-True masks: the dense network of cycle 0."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in prunable_names(model)}


def prune_by_magnitude(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                       percent: float) -> Masks:
    """New masks that remove ``percent`` % of each tensor's surviving weights, smallest |w| first.

    Layer-wise, as the original: every tensor loses round(percent/100 x survivors) weights.
    Ties are broken by position, so the result is deterministic. Pruned weights stay pruned.
    """
    _check_percent(percent)
    return prune_layerwise(magnitude_scores(weights, masks), masks, dict.fromkeys(masks, percent))


def _check_percent(percent: float, what: str = "percent") -> None:
    if not 0 <= percent < 100:
        raise ValueError(f"{what} must be in [0, 100), got {percent}")


def pruned_count(alive: int, percent: float) -> int:
    """How many of ``alive`` survivors a round at ``percent`` removes (Python's round: half to even)."""
    return round(alive * percent / 100)


def magnitude_scores(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> Masks:
    """|w| of every masked tensor: the score of magnitude pruning."""
    return {name: weights[name].detach().abs() for name in masks}


def _keep_best(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest-scoring survivors of ``mask``; equal scores favour the lower index."""
    flat_mask = mask.reshape(-1)
    flat_scores = scores.detach().reshape(-1).to(torch.float64)
    flat_scores = flat_scores.masked_fill(~flat_mask.to(flat_scores.device), float("-inf"))
    order = torch.argsort(flat_scores, descending=True, stable=True)
    kept = torch.zeros_like(flat_mask)
    kept[order[:keep].to(kept.device)] = True
    return kept.reshape(mask.shape)


def prune_layerwise(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                    percent_for_layer: Mapping[str, float]) -> Masks:
    """Each tensor loses ``pruned_count(survivors, percent_for_layer[name])`` of its survivors,
    lowest score first, ties broken by position. A layer absent from the mapping is kept as is."""
    new_masks: Masks = {}
    for name, mask in masks.items():
        percent = percent_for_layer.get(name, 0.0)
        _check_percent(percent, f"the prune percent of {name}")
        alive = int(mask.sum())
        new_masks[name] = _keep_best(scores[name], mask, alive - pruned_count(alive, percent))
    return new_masks


def prune_global(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 percent: float, ranked: Iterable[str] | None = None) -> Masks:
    """Rank the survivors of the ``ranked`` layers (default: all) together and remove exactly
    ``pruned_count(their survivors in total, percent)``, lowest score first. Equal scores favour
    the earlier layer (in ``masks`` order), then the lower position. Other layers are kept."""
    _check_percent(percent)
    wanted = set(masks if ranked is None else ranked)
    ranked = [n for n in masks if n in wanted]
    new_masks: Masks = {name: mask.clone() for name, mask in masks.items()}
    if not ranked:
        return new_masks
    device = masks[ranked[0]].device
    flat_masks = torch.cat([masks[n].reshape(-1).to(device) for n in ranked])
    flat_scores = torch.cat([scores[n].detach().reshape(-1).to(device, torch.float64) for n in ranked])
    alive = int(flat_masks.sum())
    kept = _keep_best(flat_scores, flat_masks, alive - pruned_count(alive, percent))
    start = 0
    for name in ranked:
        size = masks[name].numel()
        new_masks[name] = kept[start:start + size].reshape(masks[name].shape).to(masks[name].device)
        start += size
    return new_masks


class LayerCollapse(UserError):
    """A pruning round would leave a layer without any weight."""

    def __init__(self, layer: str, cycle: int):
        self.layer, self.cycle = layer, cycle
        super().__init__(
            f"pruning would leave layer {layer} with no weight in cycle {cycle} (cycle 0 is the "
            "dense network); lower --prune_percent (or --output_prune_percent, --target_sparsity), "
            f"run fewer --prune_iterations, or leave the layer dense with --prune_ignore "
            f"{layer.removesuffix('.weight')}")


@dataclass(frozen=True)
class PruningPlan:
    """How each round prunes: the rate, the scope and the layers that follow other rules.

    ``percent``: the per-round rate of every layer. ``output_percent``: the rate of the last
    prunable layer (None: ``percent``). ``ignore``: layers never pruned, by module name ("fc")
    or weight name ("fc.weight"). ``scope``: "layer" (each layer loses its own rate of its
    survivors) or "global" (the layers at ``percent`` are ranked together; the output layer
    joins them unless ``output_percent`` is given, in which case it is pruned on its own at
    that rate; ignored layers stay dense).
    """
    percent: float
    scope: str = "layer"
    output_percent: float | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self):
        if self.scope not in ("layer", "global"):
            raise ValueError(f"the prune scope must be layer or global, got {self.scope!r}")
        _check_percent(self.percent, "the prune percent")
        if self.output_percent is not None:
            _check_percent(self.output_percent, "the output prune percent")

    def ignored(self, names: list[str]) -> set[str]:
        """The weight names of the ignored layers; an unknown name is a ValueError."""
        found = set()
        for wanted in self.ignore:
            matches = [n for n in names if wanted in (n, n.removesuffix(".weight"))]
            if not matches:
                layers = ", ".join(n.removesuffix(".weight") for n in names)
                raise ValueError(f"--prune_ignore {wanted}: no prunable layer of that name; "
                                 f"the prunable layers are {layers}")
            found.update(matches)
        return found

    def percent_for_layer(self, names: list[str]) -> dict[str, float]:
        """The layer-wise rate of every layer (0 for ignored ones), in ``names`` order."""
        ignored = self.ignored(names)
        rates = dict.fromkeys(names, self.percent)
        if names and self.output_percent is not None:
            rates[names[-1]] = self.output_percent
        return {n: 0.0 if n in ignored else rate for n, rate in rates.items()}

    def prune(self, scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
              cycle: int) -> Masks:
        """The masks of ``cycle`` (the cycle about to start, 1 for the first pruning) from the
        masks of the cycle before and the scores of their survivors. Raises
        :class:`LayerCollapse` instead of returning a mask with an empty layer."""
        names = list(masks)
        rates = self.percent_for_layer(names)
        if self.scope == "layer":
            new_masks = prune_layerwise(scores, masks, rates)
        else:
            ignored = self.ignored(names)
            separate = {n for n in names if n in ignored
                        or (self.output_percent is not None and n == names[-1])}
            ranked = [n for n in names if n not in separate]
            new_masks = prune_global(scores, masks, self.percent, ranked)
            new_masks.update(prune_layerwise(scores, {n: masks[n] for n in separate},
                                             {n: rates[n] for n in separate}))
            new_masks = {n: new_masks[n] for n in names}
        for name, mask in new_masks.items():
            if not bool(mask.any()):
                raise LayerCollapse(name, cycle)
        return new_masks


def planned_survivors(layer_sizes: Mapping[str, int], percent_for_layer: Mapping[str, float],
                      rounds: int) -> list[dict[str, int]]:
    """Survivors of every layer in cycles 0..``rounds`` of layer-wise pruning (``rounds`` + 1
    dicts; the first is ``layer_sizes``), with exactly the rounding of :func:`prune_layerwise`."""
    plan = [dict(layer_sizes)]
    for _ in range(rounds):
        plan.append({name: alive - pruned_count(alive, percent_for_layer.get(name, 0.0))
                     for name, alive in plan[-1].items()})
    return plan


def first_collapse(layer_sizes: Mapping[str, int], percent_for_layer: Mapping[str, float],
                   rounds: int) -> tuple[str, int] | None:
    """(layer, cycle) of the first cycle in which layer-wise pruning leaves a layer empty
    (the first such layer in ``layer_sizes`` order), or None. Checked before training starts."""
    for cycle, survivors in enumerate(planned_survivors(layer_sizes, percent_for_layer, rounds)):
        for name, alive in survivors.items():
            if alive == 0:
                return name, cycle
    return None


def layer_sizes(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {name: mask.numel() for name, mask in masks.items()}


# --------------------------------------------------------------------------- controls
def derived_generator(seed: int, stream: str, cycle: int = 0) -> torch.Generator:
    """A CPU generator for one purpose ("random_mask", "reinit", "snip"...) of one cycle of one
    seed, independent of the training generator and rebuilt identically on resume."""
    digest = hashlib.sha256(f"{stream}/{seed}/{cycle}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_masks(reference: Mapping[str, torch.Tensor], within: Mapping[str, torch.Tensor],
                 generator: torch.Generator) -> Masks:
    """Masks keeping, in every layer, as many weights as ``reference`` keeps, drawn uniformly
    among the survivors of ``within`` (the random-pruning control: pass the magnitude masks of
    this round and the masks of the cycle before, so pruned weights stay pruned)."""
    new_masks: Masks = {}
    for name, ref in reference.items():
        keep = int(ref.sum())
        base = within[name]
        if keep > int(base.sum()):
            raise ValueError(f"{name}: cannot keep {keep} weights among {int(base.sum())} survivors")
        draws = torch.rand(base.numel(), generator=generator, dtype=torch.float64)
        new_masks[name] = _keep_best(draws, base.cpu(), keep).to(base.device)
    return new_masks


def xavier_normal_std(shape: torch.Size | tuple[int, ...]) -> float:
    """The standard deviation of ``nn.init.xavier_normal_`` (gain 1) for a weight of ``shape``."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return math.sqrt(2.0 / (fan_in + fan_out))


@torch.no_grad()
def reinitialise_survivors(model_or_state: nn.Module | Mapping[str, torch.Tensor],
                           masks: Mapping[str, torch.Tensor], generator: torch.Generator,
                           redraw_biases: bool = True) -> dict[str, torch.Tensor]:
    """A copy of the state whose masked weights are redrawn from the original initialisation's
    distribution (Xavier-normal, see ``archs.initialise``) with ``generator`` and multiplied by
    their mask: the random-reinitialisation control. The biases of those layers are redrawn
    too (N(0, 1)), so no part of the original draw of a pruned layer survives; everything
    else (BatchNorm, running statistics) is copied. Draws are made on the CPU in ``masks``
    order (weight, then bias), so a seeded generator gives the same state on any device."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    new_state = {name: tensor.detach().clone() for name, tensor in state.items()}
    for name, mask in masks.items():
        weight = state[name]
        draw = torch.randn(weight.shape, generator=generator) * xavier_normal_std(weight.shape)
        new_state[name] = draw.to(weight.device, weight.dtype) * mask.to(weight.device)
        bias_name = name.removesuffix("weight") + "bias"
        if redraw_biases and name.endswith("weight") and bias_name in state:
            bias = state[bias_name]
            new_state[bias_name] = torch.randn(bias.shape, generator=generator).to(bias.device, bias.dtype)
    return new_state


# --------------------------------------------------------------------------- SNIP
def snip_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                names: list[str] | None = None) -> Masks:
    """SNIP's connection sensitivity |g * w| of every prunable weight (Lee et al., 2019).

    g is the gradient of the mean over ``batches`` of ``loss_fn(model(inputs), targets)``,
    taken at the model's current weights (at initialisation, pruned weights already zero:
    their score is 0). The paper's normalisation by the sum of scores is left out: it divides
    every score by the same number, so no ranking, layer-wise or global, changes. The forward
    passes run in training mode, as the paper's; the model's mode, buffers (BatchNorm running
    statistics) and ``.grad`` fields are left as they were.
    """
    names = prunable_names(model) if names is None else names
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    totals = [torch.zeros_like(w) for w in weights]
    n_batches = 0
    model.train()
    try:
        for inputs, targets in batches:
            loss = loss_fn(model(inputs), targets)
            for total, grad in zip(totals, torch.autograd.grad(loss, weights)):
                total.add_(grad)
            n_batches += 1
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    if n_batches == 0:
        raise ValueError("snip_scores needs at least one batch")
    return {n: (total / n_batches * w.detach()).abs() for n, total, w in zip(names, totals, weights)}


# --------------------------------------------------------------------------- rewinding
@dataclass(frozen=True)
class RewindPoint:
    """Where each cycle's survivors are rewound to: the initialisation, or the weights after
    ``count`` epochs or iterations of cycle 0 (late rewinding, Frankle et al. 2020)."""
    kind: str = "init"   # init | epoch | iteration
    count: int = 0

    def __post_init__(self):
        if self.kind not in ("init", "epoch", "iteration"):
            raise ValueError(f"a rewind point is init, epoch or iteration, got {self.kind!r}")
        if (self.kind == "init") != (self.count == 0) or self.count < 0:
            raise ValueError(f"invalid rewind point {self.kind} {self.count}: init has count 0, "
                             "epoch and iteration a positive count")

    def iteration(self, iterations_per_epoch: int) -> int:
        """The number of optimiser steps of cycle 0 after which the rewind state is taken."""
        return self.count * iterations_per_epoch if self.kind == "epoch" else self.count

    def __str__(self) -> str:
        return {"init": "init", "epoch": f"{self.count}ep", "iteration": f"{self.count}it"}[self.kind]


def parse_rewind_point(text: str) -> RewindPoint:
    """``init``, ``<N>ep`` (after N epochs of cycle 0) or ``<N>it`` (after N iterations), N >= 1."""
    if text.strip().lower() == "init":
        return RewindPoint()
    try:
        duration = parse_duration(text, "--rewind_to")
    except ValueError:
        raise ValueError(f"invalid --rewind_to {text!r}: write init (the initial weights), <N>ep "
                         "(after N epochs of the dense cycle, e.g. 2ep) or <N>it (after N "
                         "iterations, e.g. 500it), with N >= 1") from None
    return RewindPoint(duration.kind, duration.count)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device))


@torch.no_grad()
def rewind(model: nn.Module, initial_state: Mapping[str, torch.Tensor],
           masks: Mapping[str, torch.Tensor]) -> None:
    """Reset every parameter and buffer to ``initial_state``, then zero the pruned weights."""
    model.load_state_dict(initial_state)
    apply_masks(model, masks)


# (integer type of the same width, exponent bits, mantissa bits) of the float types
_FLOAT_BITS = {torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF),
               torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
               torch.float16: (torch.int16, 0x7C00, 0x03FF),
               torch.bfloat16: (torch.int16, 0x7F80, 0x007F)}


def is_nonzero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor != 0``, decided on the bits for float types (-0.0 counts as zero).

    With denormals flushed (``torch.set_flush_denormal(True)`` sets denormals-are-zero), the
    CPU compares a denormal weight as equal to zero: a dense network would look pruned.
    """
    if tensor.dtype not in _FLOAT_BITS:
        return tensor != 0
    int_type, exponent, mantissa = _FLOAT_BITS[tensor.dtype]
    return (tensor.detach().view(int_type) & (exponent | mantissa)) != 0


def is_denormal(tensor: torch.Tensor) -> torch.Tensor:
    """Entries that are denormal: exponent bits all zero, mantissa bits not (False for
    tensors of other than float types)."""
    if tensor.dtype not in _FLOAT_BITS:
        return torch.zeros_like(tensor, dtype=torch.bool)
    int_type, exponent, mantissa = _FLOAT_BITS[tensor.dtype]
    bits = tensor.detach().view(int_type)
    return ((bits & exponent) == 0).logical_and_((bits & mantissa) != 0)


def masks_from_state(state: Mapping[str, torch.Tensor], names: list[str]) -> Masks:
    """Recover a ticket's masks from its weights: its exact zeros are the pruned entries."""
    return {name: is_nonzero(state[name]) for name in names}


def count_alive(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(surviving, total) prunable weights."""
    alive = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return alive, total


def percent_remaining(masks: Mapping[str, torch.Tensor]) -> float:
    alive, total = count_alive(masks)
    return 100.0 * alive / total if total else 100.0


def layer_table_rows(masks: Mapping[str, torch.Tensor]) -> list[tuple]:
    """Per-layer rows: name, nonzeros / total, percent alive, pruned count, shape."""
    rows = []
    for name, mask in masks.items():
        alive, total = int(mask.sum()), mask.numel()
        rows.append((name, f"{alive} / {total}", f"{100 * alive / total:.2f}%",
                     total - alive, "x".join(map(str, mask.shape))))
    return rows
