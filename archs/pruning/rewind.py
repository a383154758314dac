"""Rewinding: where each cycle's survivors restart (the initialisation, or late rewinding)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from archs.optim import parse_duration
from archs.pruning.masks import apply_masks

@dataclass(frozen=True)
class RewindPoint:
    """Where each cycle's survivors are rewound to: the initialisation, or the weights after
    ``count`` epochs or iterations of cycle 0 (late rewinding, Frankle et al. 2020)."""
    kind: str = "init"   # init | epoch | iteration
    count: int = 0

    def __post_init__(self):
        if self.kind not in ("init", "epoch", "iteration"):
            raise ValueError(f"a rewind point is init, epoch or iteration, got {self.kind!r}")
        if (self.kind == "init") != (self.count == 0) or self.count < 0:
            raise ValueError(f"invalid rewind point {self.kind} {self.count}: init has count 0, "
                             "epoch and iteration a positive count")

    def iteration(self, iterations_per_epoch: int) -> int:
        """The number of optimiser steps of cycle 0 after which the rewind state is taken."""
        return self.count * iterations_per_epoch if self.kind == "epoch" else self.count

    def __str__(self) -> str:
        return {"init": "init", "epoch": f"{self.count}ep", "iteration": f"{self.count}it"}[self.kind]


def parse_rewind_point(text: str) -> RewindPoint:
    """``init``, ``<N>ep`` (after N epochs of cycle 0) or ``<N>it`` (after N iterations), N >= 1."""
    if text.strip().lower() == "init":
        return RewindPoint()
    try:
        duration = parse_duration(text, "--rewind_to")
    except ValueError:
        raise ValueError(f"invalid --rewind_to {text!r}: write init (the initial weights), <N>ep "
                         "(after N epochs of the dense cycle, e.g. 2ep) or <N>it (after N "
                         "iterations, e.g. 500it), with N >= 1") from None
    return RewindPoint(duration.kind, duration.count)


@torch.no_grad()
def rewind(model: nn.Module, initial_state: Mapping[str, torch.Tensor],
           masks: Mapping[str, torch.Tensor]) -> None:
    """Reset every parameter and buffer to ``initial_state``, then zero the pruned weights."""
    model.load_state_dict(initial_state)
    apply_masks(model, masks)

