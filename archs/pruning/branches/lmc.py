"""``lmc``: linear mode connectivity (Frankle et al. 2020). Two copies of level K's ticket are
trained from the rewind point with different batch orders (the parent's, and one drawn from
seed, branch and level); the test error is evaluated at ``points`` evenly spaced points of the
straight line between their final weights (masks applied: both copies keep the same zeros),
and the *instability* is the largest error along the path minus the mean error of its two
ends. Stable tickets have an instability near 0. Networks with BatchNorm are evaluated with
the interpolated running statistics, not recomputed ones."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from archs.pruning.branches.base import Branch, LevelStart, register_branch, ticket_start
from archs.pruning.masks import Masks


def interpolate(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], alpha: float,
                masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(1 - alpha) * a + alpha * b for every floating tensor (integer buffers taken from a),
    with the masks applied."""
    out = {}
    for name, a in state_a.items():
        b = state_b[name]
        value = torch.lerp(a, b.to(a.dtype), alpha) if a.is_floating_point() else a.clone()
        if name in masks:
            value = value * masks[name].to(value.device, value.dtype)
        out[name] = value
    return out


def instability(errors: list[float]) -> float:
    """The largest error on the path minus the mean of the errors at its two ends."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def error_path(state_a, state_b, masks: Masks, evaluate: Callable[[dict], float], points: int = 11) -> dict:
    alphas = [i / (points - 1) for i in range(points)]
    errors = [float(evaluate(interpolate(state_a, state_b, alpha, masks))) for alpha in alphas]
    return {"alphas": alphas, "test_errors": errors, "instability": instability(errors)}


def _points(text: str) -> int:
    value = int(text)
    if value < 2:
        raise ValueError("the path needs at least 2 points")
    return value


@register_branch
class LinearModeConnectivity(Branch):
    name = "lmc"
    description = "two copies trained with different batch orders; error along the line between them"
    settings = {"points": _points}
    copies = 2
    style = ("#4d4d4d", "-.")
    includes_dense = True

    def start(self, parent, level, args, copy) -> LevelStart:
        """Both copies start at the rewind point, the dense level too (with late rewinding the
        parent's dense cycle started at initialisation instead)."""
        ticket = ticket_start(parent, level)
        return LevelStart(ticket.masks, dict(parent.rewind_state), "ticket" if copy == 0 else "other")

    def finish_level(self, level, finals, masks, evaluate, args):
        return error_path(finals[0], finals[1], masks, evaluate, args.get("points", 11))
