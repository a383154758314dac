"""Ticket transfer (a ticket found on one dataset trained on another, Morcos et al. 2019) and
pretrained starting states: a saved state fitted to a network of the same layout."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from archs.pruning.prune_types.base import State, cycle_start_state
from archs.pruning.masks import Masks, full_masks
from archs.registry import output_layer_name
from utils import UserError


def fit_state(start_state: Mapping[str, torch.Tensor], target: nn.Module) -> tuple[State, list[str]]:
    """``start_state`` fitted to ``target``, a network of the same layout for another dataset,
    and the names of the tensors that could not be taken: every tensor comes from
    ``start_state`` except the output layer's weight and bias when the class count differs,
    which keep ``target``'s own initial values. Any other difference is a UserError."""
    target_state = target.state_dict()
    output = output_layer_name(target)
    output_bias = output.removesuffix("weight") + "bias"
    state: State = {}
    replaced = []
    for name, value in target_state.items():
        source = start_state.get(name)
        if source is None:
            raise UserError(f"the saved state has no tensor {name}: it was made with another network")
        if source.shape != value.shape:
            if name in (output, output_bias):
                state[name] = value.detach().clone()
                replaced.append(name)
                continue
            raise UserError(f"the saved {name} has shape {tuple(source.shape)} but this network needs "
                            f"{tuple(value.shape)}: only the output layer may differ (the datasets "
                            "must share image size and channels)")
        state[name] = source.detach().to(value.device, value.dtype).clone()
    return state, replaced


def transfer(masks: Mapping[str, torch.Tensor], start_state: Mapping[str, torch.Tensor],
             target: nn.Module) -> tuple[Masks, State]:
    """A ticket (masks and start state) fitted to ``target`` (see :func:`fit_state`); a
    re-initialised output layer is dense. The state returned has the masks applied."""
    state, replaced = fit_state(start_state, target)
    new_masks: Masks = {}
    for name in full_masks(target):
        if name in replaced:
            new_masks[name] = torch.ones_like(state[name], dtype=torch.bool)
        elif name in masks:
            new_masks[name] = masks[name].to(state[name].device, torch.bool).clone()
        else:
            raise UserError(f"the ticket has no mask for {name}: it was found on another network")
    for name, mask in new_masks.items():
        state[name] = state[name] * mask.to(state[name].dtype)
    return new_masks, state


def source_ticket(results: Mapping[str, Any], cycle: int) -> tuple[Masks, State]:
    """Masks and start state of ``cycle`` of a saved run (its results file's contents): the
    state its survivors were rewound (or, for a reinit run, re-drawn) to before that cycle."""
    history = results["masks"]
    if not 0 <= cycle < len(history):
        raise UserError(f"the source run has cycles 0 to {len(history) - 1}, not {cycle}")
    masks = {name: mask.bool() for name, mask in history[cycle].items()}
    rewind_state = results.get("rewind_state_dict") or results["initial_state_dict"]
    if cycle == 0:
        rewind_state = results["initial_state_dict"]
    args = results.get("args", {})
    start = cycle_start_state(args.get("prune_type", "lt"), masks, rewind_state, int(args.get("seed", 0)), cycle)
    return masks, start


def pretrained_state(saved: Mapping[str, Any], target: nn.Module) -> State:
    """A pretrained state fitted to ``target``: ``saved`` is a state dict, or a results file of
    this toolkit (its best weights). The output layer keeps ``target``'s values when the class
    count differs."""
    state = saved.get("best_state_dict", saved)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("the pretrained file holds no state dict (save it with torch.save(model.state_dict(), path))")
    return fit_state(state, target)[0]

