"""Networks: ``build_model(arch, in_channels, image_size, num_classes)`` builds and initialises any
registered network. The registry lives in :mod:`archs.registry`; the networks in
``archs/models/``, each module of which the registry imports so that its ``@register_model``
lines run. A new network is one new file in that folder.

Importing ``archs`` (or a torch-free submodule such as ``archs.launch.settings``) imports no
torch: the registry is loaded on first use of one of the names below, so that the scripts'
``--help`` stays fast.
"""
from __future__ import annotations

__all__ = ["ALIASES", "ARCHITECTURES", "architecture_names", "build_model", "canonical_arch",
           "initialise", "output_layer_name", "register_model"]


def __getattr__(name: str):
    if name in __all__:
        from archs import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
