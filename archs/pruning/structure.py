"""N:M semi-structured pruning (``--prune_structure 2:4``), as pure mask functions.

An N:M mask keeps at most N weights in every group of M consecutive weights along the input
dimension of a layer's matrix: ``out x in`` for a linear layer, ``out x in*kh*kw`` for a
convolution (the K dimension of its implicit GEMM, the one cuSPARSELt compresses). 2:4 is what
NVIDIA's sparse tensor cores run (torch's ``to_sparse_semi_structured``).

How iterative rounds combine with N:M (the rule this toolkit follows). NVIDIA's ASP (Mishra
et al. 2021, "Accelerating sparse deep neural networks") prunes a trained dense network to 2:4
by magnitude in one step and retrains; Zhou et al. 2021 ("Learning N:M fine-grained structured
sparse networks") keep the N largest of every group. Here each round

1. projects the layer's current mask onto N:M by the round's scores (the N best survivors of
   every group of M: :func:`n_of_m_mask`; a mask that is already N:M is unchanged),
2. removes the round's usual count (``round(percent x survivors)``, layer-wise or global, as
   without a structure), taking the weights the projection drops first and then the lowest
   scores among the projection's survivors,

so the mask after every round is N:M. The first round of a dense network thus imposes the
pattern by magnitude (ASP's step) and prunes at least the round's rate: at ``--prune_percent``
below 1 - N/M (50% for 2:4) the pattern removes more than the rate asks; at or above it every
layer-wise round keeps exactly the schedule's count. Later rounds prune unstructured within
the pattern, which stays valid. Layers whose K is not a multiple of M
(LeNet5's first convolution: 1x5x5 = 25) and layers the plan does not prune (``--prune_ignore``,
a rate of 0) are left as without a structure; the run's layer table says which. Whether a
GPU's kernels accept a layer's shape is decided at replay, not here.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from data.settings import prune_structure_text

Structure = tuple[int, int]   # (N, M); None stands for unstructured


def parse_structure(text: str | None) -> Structure | None:
    """``"2:4"`` -> (2, 4); ``"unstructured"``, ``""`` or None -> None (ValueError otherwise)."""
    canonical = prune_structure_text(text or "")
    if canonical == "unstructured":
        return None
    n, m = canonical.split(":")
    return int(n), int(m)


def _groups(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """``tensor`` seen as (rows, groups per row, m)."""
    if tensor.dim() < 2:
        raise ValueError(f"an N:M pattern needs a matrix or a filter bank, got shape {tuple(tensor.shape)}")
    rows = tensor.reshape(tensor.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"rows of {rows.shape[1]} weights do not split into groups of {m}")
    return rows.reshape(rows.shape[0], -1, m)


def n_of_m_mask(scores: torch.Tensor, mask: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """``mask`` narrowed to the ``n`` highest-scoring survivors of every group of ``m``.

    A group with ``n`` survivors or fewer keeps them all; equal scores favour the lower
    index, so the result is deterministic. Returns a bool tensor shaped like ``mask``;
    pruned weights stay pruned.
    """
    if not 0 < n <= m:
        raise ValueError(f"an N:M pattern needs 0 < N <= M, got {n}:{m}")
    alive = _groups(mask.bool(), m)
    ranked = _groups(scores.detach().to(alive.device, torch.float64), m).masked_fill(~alive, float("-inf"))
    # stable: among equal scores the lower index sorts first
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(m, device=order.device).expand_as(order).contiguous())
    return ((rank < n) & alive).reshape(mask.shape)


def is_n_of_m(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive weights of each row holds at most ``n``
    nonzeros (False where the rows do not split into groups of ``m``)."""
    try:
        groups = _groups(mask != 0, m)
    except ValueError:
        return False
    return bool((groups.sum(-1) <= n).all())


def unstructured_reason(shape: torch.Size | tuple[int, ...], structure: Structure) -> str | None:
    """Why a weight of ``shape`` cannot take the N:M pattern (None: it can)."""
    if len(shape) < 2:
        return "not a matrix"
    k, m = math.prod(shape[1:]), structure[1]
    if k % m:
        return f"K={k} is not a multiple of {m}"
    return None


def structured_round(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                     structure: Structure | None, exempt=()) -> tuple[dict, dict]:
    """(scores, projections) for a round under ``structure``: each eligible layer's projection
    :func:`n_of_m_mask` of its mask, and its scores with the weights the projection drops set
    to -inf (so that any ranking removes them first). Exempt and ineligible layers keep their
    scores and have no projection. Intersect the round's masks with the projections
    (:func:`within_projection`) to finish the round."""
    if structure is None:
        return dict(scores), {}
    n, m = structure
    new_scores, projections = dict(scores), {}
    for name, mask in masks.items():
        if name in exempt or unstructured_reason(mask.shape, structure) is not None:
            continue
        projection = n_of_m_mask(scores[name], mask, n, m)
        projections[name] = projection
        new_scores[name] = scores[name].detach().to(torch.float64).masked_fill(
            ~projection.to(scores[name].device), float("-inf"))
    return new_scores, projections


def within_projection(masks: Mapping[str, torch.Tensor], projections: Mapping[str, torch.Tensor]) -> dict:
    """Each mask intersected with its layer's projection (layers without one unchanged)."""
    return {name: mask & projections[name].to(mask.device) if name in projections else mask
            for name, mask in masks.items()}


def structure_column(mask: torch.Tensor, structure: Structure | None, exempt: bool = False) -> str:
    """What the layer table says of a layer's pattern under ``structure``."""
    if structure is None:
        return "unstructured"
    label = f"{structure[0]}:{structure[1]}"
    reason = "not pruned" if exempt else unstructured_reason(mask.shape, structure)
    if reason is not None:
        return f"unstructured ({reason})"
    return label if is_n_of_m(mask, *structure) else f"{label} from cycle 1"
