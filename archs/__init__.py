"""Networks: ``build_model(arch, in_channels, image_size, num_classes)`` builds and initialises any
registered network. The registry lives in :mod:`archs.registry`; the networks in
``archs/models/``, each module of which is imported here so that its ``@register_model``
lines run. A new network is one new file in that folder.
"""
from __future__ import annotations

import importlib
import pkgutil

from archs import models as _models
from archs.registry import (ALIASES, ARCHITECTURES, architecture_names, build_model, canonical_arch,
                            initialise, output_layer_name, register_model)

__all__ = ["ALIASES", "ARCHITECTURES", "architecture_names", "build_model", "canonical_arch",
           "initialise", "output_layer_name", "register_model"]

for _module in sorted(info.name for info in pkgutil.iter_modules(_models.__path__)):
    importlib.import_module(f"{_models.__name__}.{_module}")
