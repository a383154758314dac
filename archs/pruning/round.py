"""One pruning round: scores -> masks -> control -> start state. The one implementation that
both the training loop (:class:`archs.train.LotteryRun`) and the Python API call."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from archs.pruning.controls import State
from archs.pruning.criteria import criterion_scores
from archs.pruning.masks import Masks, apply_masks
from archs.pruning.plan import PruningPlan
from archs.pruning.prune_types import control_ticket


@torch.no_grad()
def keep_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` again. Call it after every ``optimizer.step()`` of
    your training loop: momentum, Adam's moments and weight decay would otherwise revive them."""
    apply_masks(model, masks)


def next_ticket(model: nn.Module, masks: Mapping[str, torch.Tensor], rewind_state: Mapping[str, torch.Tensor],
                plan: PruningPlan, *, prune_type: str = "lt", criterion: str = "magnitude", seed: int = 0,
                cycle: int, snip_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                loss_fn: Callable = F.cross_entropy) -> tuple[Masks, State]:
    """One pruning round: the masks of ``cycle`` (1 for the first pruned cycle) and the state it
    starts from (apply with ``archs.pruning.rewind(model, state, masks)``).

    ``model`` holds the trained weights of the cycle before and ``masks`` its masks. The
    magnitude criterion ranks survivors by |w|; ``snip`` rewinds ``model`` to ``rewind_state``
    and ranks them by |g*w| over ``snip_batches`` (inputs, targets) with ``loss_fn``. ``plan``
    sets the rate, scope, output-layer rate and ignored layers; the control (``prune_type``)
    is then applied by :func:`control_ticket`.
    """
    scores = criterion_scores(criterion, model, masks, rewind_state, snip_batches, loss_fn)
    new_masks = plan.prune(scores, masks, cycle)
    return control_ticket(prune_type, new_masks, masks, rewind_state, seed=seed, cycle=cycle,
                          structure=plan.structure)

