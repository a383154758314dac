"""The run settings that name a registered extension, and the names each accepts.

``RunConfig`` (in ``data/``) cannot see the registries of ``archs/``, so these settings declare
no fixed choices there: their flags take the choices from here, and :func:`check_registered`
refuses an unregistered name before any training. A registry added later joins
:data:`REGISTERED` with one line; an entry added to a registry needs nothing here.
"""
from __future__ import annotations

from typing import Callable

from archs.optim import optimizer_names, schedule_names
from archs.pruning import PRUNE_TYPES
from archs.pruning.criteria import CRITERIA
from archs.registry import architecture_names
from data.datasets import DATASETS
from data.runs import RunConfig
from utils import UserError

# setting -> the names it accepts, read when asked (so entries registered late count too)
REGISTERED: dict[str, Callable[[], list[str]]] = {
    "arch_type": lambda: architecture_names(include_aliases=True),
    "dataset": lambda: list(DATASETS),
    "optimizer": optimizer_names,
    "lr_schedule": schedule_names,
    "prune_criterion": lambda: list(CRITERIA),
    "prune_type": lambda: list(PRUNE_TYPES),
}


def registered_choices() -> dict[str, list[str]]:
    """Every registry-backed setting's accepted names, for ``add_setting_arguments(choices=...)``."""
    return {name: names() for name, names in REGISTERED.items()}


def check_registered(config: RunConfig) -> None:
    """UserError (one line) when a registry-backed setting of ``config`` names nothing registered,
    or its prune type refuses the combination (reinit has no rewind point)."""
    for name, names in REGISTERED.items():
        allowed = names()
        if getattr(config, name) not in allowed:
            raise UserError(f"unknown --{name} {getattr(config, name)!r}; choose one of {', '.join(allowed)}")
    PRUNE_TYPES[config.prune_type].check(config)
