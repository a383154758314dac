"""What a prune type is: how every cycle after the first turns the masks pruning chose and the
rewind state into the cycle's ticket. ``lt`` keeps both (the winning ticket); the others are
whole iterative runs of a control (seed 001's), not a ticket's controls (those are branches).

A prune type is a :class:`PruneType` subclass in its own file in this folder, registered with
:func:`register_prune_type`; the folder's modules are imported by the package, so a new one is
one file. It declares how figures show its runs (``words``, ``style``: see data.conditions).
"""
from __future__ import annotations

from typing import Mapping

import torch

from archs.pruning.masks import Masks
from archs.pruning.structure import Structure
from data.conditions import register_condition
from utils import UserError

State = dict[str, torch.Tensor]


class PruneType:
    name: str = ""
    words: str = ""                        # in figure labels, when runs differ in prune type
    style: tuple[str, str] | None = None   # its own (colour, line style) in every figure

    def masks(self, masks: Masks, previous_masks: Masks, *, seed: int, cycle: int,
              structure: Structure | None = None) -> Masks:
        """The cycle's masks, given those pruning chose and the cycle before's (``structure``:
        the run's N:M structure, which masks of an N:M run keep)."""
        return masks

    def start_state(self, masks: Masks, rewind_state: Mapping[str, torch.Tensor], *, seed: int,
                    cycle: int) -> State:
        """The values the cycle starts from before its masks apply (reproducible from seed and cycle)."""
        return dict(rewind_state)

    def check(self, config) -> None:
        """Raise UserError (one line) for a RunConfig this prune type cannot run."""


PRUNE_TYPES: dict[str, PruneType] = {}


def register_prune_type(cls: type[PruneType]) -> type[PruneType]:
    if not cls.name or cls.name in PRUNE_TYPES:
        raise ValueError(f"a prune type needs a name of its own, got {cls.name!r}")
    PRUNE_TYPES[cls.name] = cls()
    register_condition("prune_type", cls.name, words=cls.words, style=cls.style)
    return cls


def get_prune_type(name: str) -> PruneType:
    if name not in PRUNE_TYPES:
        raise UserError(f"unknown prune type {name!r}; choose one of {', '.join(PRUNE_TYPES)}")
    return PRUNE_TYPES[name]


def cycle_start_state(prune_type: str, masks: Mapping[str, torch.Tensor], rewind_state: Mapping[str, torch.Tensor],
                      seed: int, cycle: int) -> State:
    """The values ``cycle`` starts from before its masks apply: the rewind state (cycle 0 always),
    or what ``prune_type`` makes of it."""
    if cycle == 0:
        return dict(rewind_state)
    return get_prune_type(prune_type).start_state(dict(masks), rewind_state, seed=seed, cycle=cycle)


def control_ticket(prune_type: str, masks: Mapping[str, torch.Tensor], previous_masks: Mapping[str, torch.Tensor],
                   rewind_state: Mapping[str, torch.Tensor], *, seed: int, cycle: int,
                   structure: Structure | None = None) -> tuple[Masks, State]:
    """(masks, start state) of ``cycle`` given the magnitude (or SNIP) masks of this round."""
    if prune_type not in PRUNE_TYPES:
        raise ValueError(f"prune_type must be one of {', '.join(PRUNE_TYPES)}, got {prune_type!r}")
    masks = get_prune_type(prune_type).masks(dict(masks), dict(previous_masks), seed=seed, cycle=cycle,
                                             structure=structure)
    return masks, cycle_start_state(prune_type, masks, rewind_state, seed, cycle)
