"""N:M semi-structured sparsity (2:4 is what NVIDIA's sparse tensor cores and cuSPARSELt run,
through torch's ``to_sparse_semi_structured``): at most N nonzero weights in every group of
M consecutive weights along each row of a layer's matrix (``out x in`` for a linear layer,
``out x in*kh*kw`` for a convolution, the matrix its implicit GEMM multiplies).

Pure mask arithmetic, CPU-tested. Not wired into training or the replay yet: no GPU was
available to test the CUDA path (``to_sparse_semi_structured`` needs one), and a
``--prune_structure 2:4`` run setting belongs to the run identity (data/runs.py).
"""
from __future__ import annotations

import torch


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
    ranked = _groups(scores.detach().to(torch.float64), m).masked_fill(~alive, float("-inf"))
    # stable: among equal scores the lower index sorts first
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(m).expand_as(order).contiguous())
    return ((rank < n) & alive).reshape(mask.shape)


def is_n_of_m(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive weights of each row holds at most ``n``
    nonzeros (False where the rows do not split into groups of ``m``)."""
    try:
        groups = _groups(mask != 0, m)
    except ValueError:
        return False
    return bool((groups.sum(-1) <= n).all())
