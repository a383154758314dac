"""What a pruning criterion is: the score that ranks survivors (the lowest are pruned first).

A criterion is a function in its own file in this folder that joins :data:`CRITERIA` with
:func:`register_criterion` (the folder's modules are imported by the package, so a new
criterion is one file). It receives the model holding the trained weights of the cycle
before, the masks, the rewind state and the scoring batches, and returns one score tensor
per masked weight.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from archs.pruning.masks import Masks

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
