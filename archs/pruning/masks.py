"""Masks as pure functions over ``{parameter name: tensor}`` dicts.

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

@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device))


# (integer type of the same width, exponent bits, mantissa bits) of the float types
_FLOAT_BITS = {torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF),
               torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
               torch.float16: (torch.int16, 0x7C00, 0x03FF),
               torch.bfloat16: (torch.int16, 0x7F80, 0x007F)}


def is_nonzero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor != 0``, decided on the bits for float types (-0.0 counts as zero).

    With denormals flushed (``torch.set_flush_denormal(True)`` sets denormals-are-zero), the
    CPU compares a denormal weight as equal to zero: a dense network would look pruned.
    """
    if tensor.dtype not in _FLOAT_BITS:
        return tensor != 0
    int_type, exponent, mantissa = _FLOAT_BITS[tensor.dtype]
    return (tensor.detach().view(int_type) & (exponent | mantissa)) != 0


def is_denormal(tensor: torch.Tensor) -> torch.Tensor:
    """Entries that are denormal: exponent bits all zero, mantissa bits not (False for
    tensors of other than float types)."""
    if tensor.dtype not in _FLOAT_BITS:
        return torch.zeros_like(tensor, dtype=torch.bool)
    int_type, exponent, mantissa = _FLOAT_BITS[tensor.dtype]
    bits = tensor.detach().view(int_type)
    return ((bits & exponent) == 0).logical_and_((bits & mantissa) != 0)


def masks_from_state(state: Mapping[str, torch.Tensor], names: list[str]) -> Masks:
    """Recover a ticket's masks from its weights: its exact zeros are the pruned entries."""
    return {name: is_nonzero(state[name]) for name in names}


def count_alive(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(surviving, total) prunable weights."""
    alive = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return alive, total


def percent_remaining(masks: Mapping[str, torch.Tensor]) -> float:
    alive, total = count_alive(masks)
    return 100.0 * alive / total if total else 100.0


def layer_table_rows(masks: Mapping[str, torch.Tensor]) -> list[tuple]:
    """Per-layer rows: name, nonzeros / total, percent alive, pruned count, shape."""
    rows = []
    for name, mask in masks.items():
        alive, total = int(mask.sum()), mask.numel()
        rows.append((name, f"{alive} / {total}", f"{100 * alive / total:.2f}%",
                     total - alive, "x".join(map(str, mask.shape))))
    return rows
