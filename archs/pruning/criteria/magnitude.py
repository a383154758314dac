"""``magnitude``: |w|, the score of magnitude pruning (Frankle & Carbin, 2019)."""
from __future__ import annotations

from typing import Mapping

import torch

from archs.pruning.criteria.base import Masks, register_criterion


def magnitude_scores(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> Masks:
    """|w| of every masked tensor: the score of magnitude pruning."""
    return {name: weights[name].detach().abs() for name in masks}


@register_criterion("magnitude")
def _magnitude(model, masks, rewind_state, batches, loss_fn) -> Masks:
    return magnitude_scores(dict(model.named_parameters()), masks)
