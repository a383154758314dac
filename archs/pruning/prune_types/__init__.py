"""The registry of prune types (``--prune_type``): every module in this folder that registers one
(see ``base``)."""
import importlib
import pkgutil

from archs.pruning.prune_types.base import (PRUNE_TYPES, PruneType, control_ticket,  # noqa: F401
                                            cycle_start_state, get_prune_type, register_prune_type)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
