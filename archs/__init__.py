"""Model registry: ``build_model(arch, dataset)`` builds and initialises any supported network."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from archs.fc1 import fc1
from archs.lenet5 import lenet5
from archs.resnet import resnet18
from utils import UserError

# Each builder takes (in_channels, image_size, num_classes).
ARCHITECTURES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "fc1": fc1,
    "lenet5": lenet5,
    "resnet18": resnet18,
}


def initialise(model: nn.Module) -> nn.Module:
    """The original program's initialisation.

    Convolution and linear layers: Xavier-normal weights, standard-normal biases.
    BatchNorm: weight ~ N(1, 0.02), bias 0. Uses torch's global generator, so seed first.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.normal_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.normal_(module.weight, mean=1.0, std=0.02)
            nn.init.zeros_(module.bias)
    return model


def build_model(arch: str, in_channels: int, image_size: int, num_classes: int,
                device: torch.device | str = "cpu") -> nn.Module:
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise UserError(f"unknown architecture {arch!r}; choose one of "
                        f"{', '.join(ARCHITECTURES)}") from None
    return initialise(builder(in_channels, image_size, num_classes)).to(device)
