"""The network registry: names -> builders, aliases, and what the rest of the toolkit asks of a model.

A builder is any callable ``(in_channels, image_size, num_classes) -> nn.Module``. Register one
with the decorator, in a file of its own under ``archs/models/`` (every module there is imported
by ``archs``, so nothing else needs editing)::

    from archs.registry import register_model

    @register_model("mynet")
    def mynet(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
        ...

Names become folder names of the saved runs, so they are restricted to lower-case letters,
digits and underscores. An alias is another accepted spelling of a name; only the canonical
name is ever stored (:func:`canonical_arch`).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import torch
from torch import nn

from utils import UserError

Builder = Callable[[int, int, int], nn.Module]

# name -> builder. Filled by the modules of archs/models when archs is imported.
ARCHITECTURES: dict[str, Builder] = {}
# alias -> canonical name
ALIASES: dict[str, str] = {}

_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_]*")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise UserError(f"invalid network name {name!r}: use lower-case letters, digits and "
                        "underscores (it becomes a folder name of the saved runs)")


def register_model(name: str, *, aliases: Iterable[str] = (), replace: bool = False
                   ) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(in_channels, image_size, num_classes)`` under ``name``.

    A name (or alias) already taken is an error unless ``replace=True``, which rebinds it.
    Returns the builder unchanged, so the function stays usable on its own.
    """
    aliases = tuple(aliases)
    for taken in (name, *aliases):
        _check_name(taken)
    if name in aliases:
        raise UserError(f"network {name!r} lists itself as an alias")

    def decorate(builder: Builder) -> Builder:
        if not callable(builder):
            raise TypeError(f"register_model({name!r}) needs a callable builder, got {builder!r}")
        if not replace:
            for taken in (name, *aliases):
                if taken in ARCHITECTURES or taken in ALIASES:
                    what = f"an alias of {ALIASES[taken]}" if taken in ALIASES else "registered"
                    raise UserError(f"network name {taken!r} is already {what}; choose another "
                                    "name or pass replace=True to rebind it")
        for taken in (name, *aliases):
            ALIASES.pop(taken, None)
        for alias in aliases:
            ARCHITECTURES.pop(alias, None)
            ALIASES[alias] = name
        ARCHITECTURES[name] = builder
        return builder

    return decorate


def architecture_names(include_aliases: bool = False) -> list[str]:
    """The canonical names, sorted, then (optionally) the aliases, sorted."""
    return sorted(ARCHITECTURES) + (sorted(ALIASES) if include_aliases else [])


def canonical_arch(name: str) -> str:
    """The registered name ``name`` stands for (itself, or the name an alias points to)."""
    if name in ARCHITECTURES:
        return name
    if name in ALIASES:
        return ALIASES[name]
    aliases = ", ".join(f"{alias} = {target}" for alias, target in sorted(ALIASES.items()))
    raise UserError(f"unknown architecture {name!r}; choose one of {', '.join(architecture_names())}"
                    + (f" (aliases: {aliases})" if aliases else ""))


BIAS_INITS = ("normal", "zeros", "default")


def initialise(model: nn.Module, bias_init: str = "normal") -> nn.Module:
    """The original program's initialisation, for every network.

    Convolution and linear layers: Xavier-normal weights, standard-normal biases.
    BatchNorm: weight ~ N(1, 0.02), bias 0. Nothing is zero-initialised (torchvision's
    ResNets do not zero the last BatchNorm of each block by default either).
    ``bias_init`` "zeros" zeroes the biases and "default" keeps PyTorch's (uniform
    +-1/sqrt(fan_in), drawn when the layer was built); the normal draws are made either way,
    so the weights are the same whichever is chosen. Uses torch's global generator, so seed first.
    """
    if bias_init not in BIAS_INITS:
        raise ValueError(f"bias_init must be one of {', '.join(BIAS_INITS)}, got {bias_init!r}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            built = None if module.bias is None else module.bias.detach().clone()
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.normal_(module.bias)
                with torch.no_grad():
                    if bias_init == "zeros":
                        module.bias.zero_()
                    elif bias_init == "default":
                        module.bias.copy_(built)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.normal_(module.weight, mean=1.0, std=0.02)
            nn.init.zeros_(module.bias)
    return model


def build_model(arch: str, in_channels: int, image_size: int, num_classes: int,
                device: torch.device | str = "cpu", bias_init: str = "normal") -> nn.Module:
    """Build the network ``arch`` (a name or an alias) with the original's initialisation
    (``bias_init``: see :func:`initialise`)."""
    name = canonical_arch(arch)
    model = ARCHITECTURES[name](in_channels, image_size, num_classes)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the builder of {name!r} returned {type(model).__name__}, not an nn.Module")
    return initialise(model, bias_init).to(device)


def output_layer_name(model: nn.Module) -> str:
    """State-dict name of the output layer's weight: the last ``nn.Linear`` in module order.

    Every registered network ends in a linear classifier defined last; a user model whose
    output layer is defined earlier than another linear layer would be misread.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no nn.Linear layer, so it has no output layer "
                        "to name; end the network with a linear classifier")
    return f"{names[-1]}.weight" if names[-1] else "weight"


def _register_builtin_networks() -> None:
    """Import every module of archs/models, so that its ``@register_model`` lines run."""
    import importlib
    import pkgutil

    from archs import models

    for module in sorted(info.name for info in pkgutil.iter_modules(models.__path__)):
        importlib.import_module(f"{models.__name__}.{module}")


_register_builtin_networks()
