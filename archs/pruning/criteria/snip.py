"""``snip``: SNIP's connection sensitivity |g * w|, scored at the rewind state (Lee et al., 2019)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from archs.pruning.criteria.base import Masks, register_criterion
from archs.pruning.masks import prunable_names
from archs.pruning.rewind import rewind


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
