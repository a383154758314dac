"""What a branch is: one more cycle trained from a level of a finished winning-ticket run,
changed in one way (open_lth's idea, done for this toolkit).

A branch is a :class:`Branch` subclass in its own file in this folder, registered with
:func:`register_branch`; the folder's modules are imported by the package, so a new branch is
one file. A branch says where each level starts (:meth:`Branch.start`: masks, values, how the
learning rate runs, which data order), which training settings it changes and, if it needs
to, what it computes once a level's copies are trained (:meth:`Branch.finish_level`); and how
tables and figures show it (``control``, ``style``: see data.conditions). The engine that
trains branches is :class:`archs.train.branch.BranchRun`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from archs.pruning.masks import Masks
from data.conditions import register_condition
from utils import UserError

State = dict[str, torch.Tensor]


@dataclass
class ParentTicket:
    """What a branch may read of its parent run: the masks of every level, the initial and
    rewind states, the seed and bias initialisation, and ``final_state(level)``, the trained
    weights of a level (read from the run's cycle tickets when asked), and the N:M structure
    of its pruning (its random controls keep it)."""
    masks: list[Masks]
    initial_state: State
    rewind_state: State
    seed: int
    bias_init: str
    final_state: Callable[[int], State]
    structure: tuple[int, int] | None = None   # the run's --prune_structure (N, M), None: unstructured

    @property
    def levels(self) -> int:
        return len(self.masks)


@dataclass
class LevelStart:
    """Where one copy of a level starts. ``state`` holds the values before the masks apply;
    ``data_order``: "ticket" replays the
    batch order the parent's cycle of that level saw (paired comparisons), "other" draws
    another one from (seed, branch, level, copy)."""
    masks: Masks
    state: State
    data_order: str = "ticket"


class Branch:
    name: str = ""
    description: str = ""
    # branch_args keys this branch accepts, each with its parser (command-line text -> value)
    settings: dict[str, Callable[[str], Any]] = {}
    copies: int = 1              # networks trained per level (lmc: 2)
    # "schedule" plays the run's learning-rate schedule from its start; "final" keeps the
    # schedule's final rate throughout (fine-tuning)
    lr: str = "schedule"
    includes_dense: bool = False  # whether level 0 is among the default levels
    # A control of the winning ticket names itself here as the control table (and the API's
    # compare_controls) shows it; control_rank orders the controls there
    control: str = ""
    control_rank: int = 0
    style: tuple[str, str] | None = None   # its own (colour, line style) in every figure

    def parse_args(self, text: str) -> dict[str, Any]:
        values = {}
        for item in filter(None, text.split(",")):
            key, _, value = item.partition("=")
            if key not in self.settings:
                known = ", ".join(self.settings) or "none"
                raise UserError(f"--branch {self.name} has no setting {key!r} (its settings: {known})")
            try:
                values[key] = self.settings[key](value)
            except ValueError as exc:
                raise UserError(f"--branch_args {key}={value}: {exc}") from None
        return values

    def default_levels(self, parent_levels: int) -> list[int]:
        return list(range(0 if self.includes_dense else 1, parent_levels))

    def training_overrides(self, args: dict[str, Any]) -> dict[str, Any]:
        """Settings of the run (RunConfig fields) this branch trains with instead of the parent's."""
        return {}

    def start(self, parent: ParentTicket, level: int, args: dict[str, Any], copy: int) -> LevelStart:
        raise NotImplementedError

    def finish_level(self, level: int, finals: list[State], masks: Masks,
                     evaluate: Callable[[State], float], args: dict[str, Any]) -> dict | None:
        """Called once every copy of ``level`` is trained (``finals``: their final weights);
        ``evaluate(state)`` is the test error (percent) of the network holding ``state``.
        What it returns is saved in the results' ``branch_levels`` list."""
        return None


BRANCHES: dict[str, Branch] = {}


def register_branch(cls: type[Branch]) -> type[Branch]:
    if not cls.name or cls.name in BRANCHES:
        raise ValueError(f"a branch needs a name of its own, got {cls.name!r}")
    BRANCHES[cls.name] = cls()
    register_condition("branch", cls.name, control=cls.control, control_rank=cls.control_rank, style=cls.style)
    return cls


def control_branches() -> list[Branch]:
    """The branches that are controls of the winning ticket, in their tables' order."""
    return sorted((b for b in BRANCHES.values() if b.control), key=lambda b: b.control_rank)


def get_branch(name: str) -> Branch:
    if name not in BRANCHES:
        raise UserError(f"unknown branch {name!r}; choose one of {', '.join(sorted(BRANCHES))}")
    return BRANCHES[name]


def ticket_start(parent: ParentTicket, level: int) -> LevelStart:
    """Level ``level``'s ticket as the parent trained it: its masks, rewound."""
    return LevelStart(dict(parent.masks[level]), dict(parent.rewind_state if level else parent.initial_state))
