"""Masks and magnitude pruning, as pure functions over ``{parameter name: tensor}`` dicts.

A mask is a boolean tensor shaped like its weight: True keeps the weight, False prunes it.
Only the weights of convolution and linear layers are prunable; biases and BatchNorm
parameters never are (the original pruned everything named "weight", BatchNorm included).

``torch.nn.utils.prune`` is not used: it reparametrises each weight as
``weight_orig * weight_mask`` behind a forward hook, which renames the state-dict keys the
saved tickets are read by and adds a multiplication to every forward pass. Plain masks
applied after each optimiser step keep the state dicts ordinary and the training loop fast.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

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
    if not 0 <= percent < 100:
        raise ValueError(f"percent must be in [0, 100), got {percent}")
    new_masks: Masks = {}
    for name, mask in masks.items():
        flat_mask = mask.reshape(-1)
        alive = int(flat_mask.sum())
        keep = alive - round(alive * percent / 100)
        scores = weights[name].detach().abs().reshape(-1).to(torch.float64)
        scores = scores.masked_fill(~flat_mask.to(scores.device), float("-inf"))
        order = torch.argsort(scores, descending=True, stable=True)
        kept = torch.zeros_like(flat_mask)
        kept[order[:keep].to(kept.device)] = True
        new_masks[name] = kept.reshape(mask.shape)
    return new_masks


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


def masks_from_state(state: Mapping[str, torch.Tensor], names: list[str]) -> Masks:
    """Recover a ticket's masks from its weights: its exact zeros are the pruned entries."""
    return {name: state[name] != 0 for name in names}


def count_alive(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(surviving, total) prunable weights."""
    alive = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return alive, total


def percent_remaining(masks: Mapping[str, torch.Tensor]) -> float:
    alive, total = count_alive(masks)
    return 100.0 * alive / total if total else 100.0


def expected_percent_remaining(prune_percent: float, cycle: int) -> float:
    """Weights left after ``cycle`` rounds of pruning, ignoring rounding: 100 (1 - p)^cycle."""
    return 100.0 * (1 - prune_percent / 100) ** cycle


def layer_table_rows(masks: Mapping[str, torch.Tensor]) -> list[tuple]:
    """Per-layer rows: name, nonzeros / total, percent alive, pruned count, shape."""
    rows = []
    for name, mask in masks.items():
        alive, total = int(mask.sum()), mask.numel()
        rows.append((name, f"{alive} / {total}", f"{100 * alive / total:.2f}%",
                     total - alive, "x".join(map(str, mask.shape))))
    return rows
