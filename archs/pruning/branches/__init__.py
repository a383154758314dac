"""The registry of branches: every module in this folder that registers one (see ``base``)."""
import importlib
import pkgutil

from archs.pruning.branches.base import (BRANCHES, Branch, LevelStart, ParentTicket, control_branches,  # noqa: F401
                                         get_branch, register_branch, ticket_start)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
