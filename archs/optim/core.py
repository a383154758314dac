"""The optimiser and learning-rate-schedule registries, durations, and the rate of every step.

An optimiser is a builder ``(params, lr, weight_decay, momentum) -> torch.optim.Optimizer``;
a schedule is a decay ``(iteration, total) -> factor`` of the base rate, a pure function of the
step (0 <= iteration < total = iterations per epoch x epochs per cycle), so a run resumed at
step i sets exactly the rates an uninterrupted run would have set. Each registers itself with
a decorator from a file of its own in ``archs/optim/`` (every module there is imported with
the package); its name becomes a choice of ``--optimizer`` or ``--lr_schedule``.

The rate of step i is ``lr x decay(i, T) x warm(i)``, where the warmup is
``min(1, (i + 1) / W)`` over W warmup steps, then 1: linear from lr / W at the first step to lr
at step W - 1, so no step is wasted at rate 0. The warmup multiplies the decay, which still
counts from step 0.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

OptimizerBuilder = Callable[[Iterable[torch.nn.Parameter], float, float, float], torch.optim.Optimizer]
Decay = Callable[[int, int], float]

# name -> builder and name -> decay, in registration order (the built-ins first).
OPTIMIZERS: dict[str, OptimizerBuilder] = {}
SCHEDULES: dict[str, Decay] = {}

_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


def _register(registry: dict, what: str, name: str, replace: bool) -> Callable:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r}: use lower-case letters, digits and underscores "
                         "(it becomes part of the runs' file names)")
    if name in registry and not replace:
        raise ValueError(f"{what} {name!r} is already registered; choose another name or pass "
                         "replace=True to rebind it")

    def decorate(function: Callable) -> Callable:
        if not callable(function):
            raise TypeError(f"the {what} {name!r} needs a callable, got {function!r}")
        registry[name] = function
        return function

    return decorate


def register_optimizer(name: str, *, replace: bool = False) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Decorator registering ``builder(params, lr, weight_decay, momentum)`` as ``--optimizer name``.

    The builder gets checked values (lr > 0, weight_decay >= 0, 0 <= momentum < 1) and raises
    ValueError for a combination it cannot take. Returns the builder unchanged."""
    return _register(OPTIMIZERS, "optimizer", name, replace)


def register_schedule(name: str, *, replace: bool = False) -> Callable[[Decay], Decay]:
    """Decorator registering ``decay(iteration, total) -> factor`` as ``--lr_schedule name``.

    Must be a pure function of its arguments (resume depends on it). Returns it unchanged."""
    return _register(SCHEDULES, "learning-rate schedule", name, replace)


def optimizer_names() -> list[str]:
    return list(OPTIMIZERS)


def schedule_names() -> list[str]:
    return list(SCHEDULES)


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
    """The registered optimiser ``name``; ``weight_decay`` is the L2 penalty added to the gradient."""
    if lr <= 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"the weight decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ValueError(f"the momentum must be in [0, 1), got {momentum}")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, weight_decay, momentum)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class LrSchedule:
    """The learning rate of every step of a cycle: ``lr`` decayed by the registered schedule
    ``kind``, times the linear warmup (see the module's docstring)."""
    lr: float
    kind: str = "none"
    warmup: Duration | None = None

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
        decay = SCHEDULES[self.kind](iteration, total)
        warm = 1.0
        if self.warmup is not None:
            warm = min(1.0, (iteration + 1) / self.warmup.iterations(iterations_per_epoch))
        return self.lr * decay * warm
