"""How a pruning round removes survivors: layer-wise or global ranking of scores, per-layer
rates (the output layer's own, ignored layers), and the counts every level will keep."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from archs.pruning.criteria import magnitude_scores
from archs.pruning.masks import Masks
from archs.pruning.structure import Structure, structured_round, within_projection
from data.settings import expected_percent_remaining, per_round_percent  # noqa: F401  (pruning schedule arithmetic, re-exported)
from utils import UserError


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
    that rate; ignored layers stay dense). ``structure``: (N, M) keeps every pruned layer N:M
    after each round (the rule is in archs.pruning.structure), None prunes unstructured.
    """
    percent: float
    scope: str = "layer"
    output_percent: float | None = None
    ignore: tuple[str, ...] = ()
    structure: Structure | None = None

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
        scores, projections = structured_round(scores, masks, self.structure,
                                               exempt={n for n, rate in rates.items() if rate == 0})
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
        new_masks = within_projection(new_masks, projections)
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

