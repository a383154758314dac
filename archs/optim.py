"""Optimisers and learning-rate schedules of a training cycle.

A schedule is a pure function of the iteration (the number of optimiser steps already taken
in the cycle): it keeps no state, so a run resumed at iteration i sets exactly the rates an
uninterrupted run would have set. The training loop calls ``set_learning_rate(optimizer,
schedule.lr_at(i, iterations_per_epoch, epochs))`` before each step.

With T = iterations_per_epoch x total_epochs, the rate of step i (0 <= i < T) is
``lr x decay(i) x warm(i)``:

* decay, ``none``: 1.
* decay, ``step``: 0.1 ^ (number of fractions f in (0.5, 0.75) with i >= f x T): x0.1 from
  half of the cycle, x0.01 from three quarters. When f x epochs is a whole number the drop
  falls on an epoch boundary (160 epochs: at epochs 80 and 120, as Frankle & Carbin's ResNet).
* decay, ``cosine``: (1 + cos(pi i / T)) / 2, from 1 at step 0 towards 0 at the end of the cycle.
* warm: min(1, (i + 1) / W) over W warmup steps, then 1: linear from lr / W at the first step
  to lr at step W - 1, so no step is wasted at rate 0. The warmup multiplies the decay, which
  still counts from step 0.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

import torch

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "step", "cosine")

_DURATION = re.compile(r"^(?P<count>\d+)(?P<unit>ep|it)$")


@dataclass(frozen=True)
class Duration:
    """A span of training counted in epochs or in iterations (optimiser steps)."""
    kind: str   # epoch | iteration
    count: int

    def __post_init__(self):
        if self.kind not in ("epoch", "iteration") or self.count < 1:
            raise ValueError(f"invalid duration {self.count} {self.kind}: the kind is epoch or "
                             "iteration and the count at least 1")

    def iterations(self, iterations_per_epoch: int) -> int:
        return self.count * iterations_per_epoch if self.kind == "epoch" else self.count

    def __str__(self) -> str:
        return f"{self.count}{'ep' if self.kind == 'epoch' else 'it'}"


def parse_duration(text: str, flag: str = "--warmup") -> Duration:
    """``<N>ep`` (N epochs) or ``<N>it`` (N iterations), N >= 1; ValueError naming ``flag`` otherwise."""
    match = _DURATION.match(text.strip().lower())
    if match is None or int(match["count"]) == 0:
        raise ValueError(f"invalid {flag} {text!r}: write <N>ep for N epochs (e.g. 2ep) or <N>it "
                         "for N iterations (e.g. 500it), with N >= 1")
    return Duration("epoch" if match["unit"] == "ep" else "iteration", int(match["count"]))


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float,
                    weight_decay: float = 0.0, momentum: float = 0.0) -> torch.optim.Optimizer:
    """Adam (momentum must be 0: Adam has its own moment estimates) or SGD with heavy-ball
    ``momentum``. ``weight_decay`` is the L2 penalty added to the gradient, in both."""
    if lr <= 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"the weight decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ValueError(f"the momentum must be in [0, 1), got {momentum}")
    if name == "adam":
        if momentum:
            raise ValueError("--momentum applies to --optimizer sgd only; Adam keeps its own "
                             "moment estimates")
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class LrSchedule:
    """The learning rate of every step of a cycle (see the module's docstring for the formulas)."""
    lr: float
    kind: str = "none"
    warmup: Duration | None = None
    step_fractions: tuple[float, ...] = (0.5, 0.75)
    step_factor: float = 0.1

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.kind!r}; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if self.lr <= 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")

    def check(self, iterations_per_epoch: int, total_epochs: int) -> None:
        """ValueError when the warmup does not end inside the cycle."""
        total = iterations_per_epoch * total_epochs
        if total < 1:
            raise ValueError(f"a cycle needs at least one step, got {iterations_per_epoch} "
                             f"iterations per epoch x {total_epochs} epochs")
        if self.warmup is not None and self.warmup.iterations(iterations_per_epoch) > total:
            raise ValueError(f"--warmup {self.warmup} lasts {self.warmup.iterations(iterations_per_epoch)} "
                             f"iterations, longer than a cycle ({total} = {total_epochs} epochs x "
                             f"{iterations_per_epoch} iterations); shorten it or train longer")

    def lr_at(self, iteration: int, iterations_per_epoch: int, total_epochs: int) -> float:
        """The rate of step ``iteration`` (0-based, counted from the start of the cycle)."""
        total = iterations_per_epoch * total_epochs
        if not 0 <= iteration < total:
            raise ValueError(f"iteration {iteration} is outside the cycle's {total} steps")
        if self.kind == "step":
            drops = sum(iteration >= fraction * total for fraction in self.step_fractions)
            decay = self.step_factor ** drops
        elif self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * iteration / total))
        else:
            decay = 1.0
        warm = 1.0
        if self.warmup is not None:
            warm = min(1.0, (iteration + 1) / self.warmup.iterations(iterations_per_epoch))
        return self.lr * decay * warm
