"""Pruning criteria: the score that ranks survivors (the lowest are pruned first).

|w| for magnitude pruning, |g * w| for SNIP (:func:`snip_scores`). A criterion joins
:data:`CRITERIA` with :func:`register_criterion`; its function receives the model holding
the trained weights of the cycle before, the masks, the rewind state and the scoring
batches, and returns one score tensor per masked weight.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from archs.pruning.masks import Masks, prunable_names
from archs.pruning.rewind import rewind

Scorer = Callable[..., Masks]
CRITERIA: dict[str, Scorer] = {}


def register_criterion(name: str) -> Callable[[Scorer], Scorer]:
    """Add a criterion ``fn(model, masks, rewind_state, batches, loss_fn) -> scores``."""
    def add(fn: Scorer) -> Scorer:
        if name in CRITERIA:
            raise ValueError(f"the criterion {name!r} is registered twice")
        CRITERIA[name] = fn
        return fn
    return add


def criterion_scores(criterion: str, model: nn.Module, masks: Mapping[str, torch.Tensor],
                     rewind_state: Mapping[str, torch.Tensor],
                     batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     loss_fn: Callable = F.cross_entropy) -> Masks:
    """The scores of ``criterion`` for the survivors of ``masks``."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    return CRITERIA[criterion](model, masks, rewind_state, batches, loss_fn)


def magnitude_scores(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> Masks:
    """|w| of every masked tensor: the score of magnitude pruning."""
    return {name: weights[name].detach().abs() for name in masks}



@register_criterion("magnitude")
def _magnitude(model, masks, rewind_state, batches, loss_fn) -> Masks:
    return magnitude_scores(dict(model.named_parameters()), masks)


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



@register_criterion("snip")
def _snip(model, masks, rewind_state, batches, loss_fn) -> Masks:
    """Scored at the rewind state (SNIP scores the network it will train)."""
    if batches is None:
        raise ValueError("the snip criterion needs snip_batches: a list of (inputs, targets)")
    rewind(model, rewind_state, masks)
    return snip_scores(model, batches, loss_fn, list(masks))
