"""Optimisers and learning-rate schedules of a training cycle: two registries (:mod:`archs.optim.core`)
and the built-ins. Every module in this folder is imported with the package, so a new optimiser
or schedule is one new file here holding ``@register_optimizer("name")`` or
``@register_schedule("name")`` (or any file imported before the run, as the tests do)."""
from __future__ import annotations

import importlib
import pkgutil

from archs.optim.core import (OPTIMIZERS, SCHEDULES, Duration, LrSchedule, build_optimizer, optimizer_names,
                              parse_duration, register_optimizer, register_schedule, schedule_names,
                              set_learning_rate)

__all__ = ["OPTIMIZERS", "SCHEDULES", "Duration", "LrSchedule", "build_optimizer", "optimizer_names",
           "parse_duration", "register_optimizer", "register_schedule", "schedule_names",
           "set_learning_rate"]

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
