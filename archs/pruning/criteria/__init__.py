"""The registry of pruning criteria: every module in this folder that registers one (see ``base``)."""
import importlib
import pkgutil

from archs.pruning.criteria.base import CRITERIA, Scorer, criterion_scores, register_criterion  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from archs.pruning.criteria.magnitude import magnitude_scores  # noqa: E402,F401  (re-exported)
from archs.pruning.criteria.snip import snip_scores  # noqa: E402,F401  (re-exported)
