"""The built-in learning-rate schedules, as decay factors of step ``i`` of ``T`` in a cycle.

* ``none``: 1.
* ``step``: 0.1 ^ (number of fractions f in (0.5, 0.75) with i >= f x T): x0.1 from half of
  the cycle, x0.01 from three quarters. When f x epochs is a whole number the drop falls on an
  epoch boundary (160 epochs: at epochs 80 and 120, as Frankle & Carbin's ResNet).
* ``cosine``: (1 + cos(pi i / T)) / 2, from 1 at step 0 towards 0 at the end of the cycle.
"""
from __future__ import annotations

import math

from archs.optim.core import register_schedule

STEP_FRACTIONS = (0.5, 0.75)
STEP_FACTOR = 0.1


@register_schedule("none")
def constant(iteration: int, total: int) -> float:
    return 1.0


@register_schedule("step")
def step(iteration: int, total: int) -> float:
    drops = sum(iteration >= fraction * total for fraction in STEP_FRACTIONS)
    return STEP_FACTOR ** drops


@register_schedule("cosine")
def cosine(iteration: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * iteration / total))
