"""The built-in optimisers: Adam and SGD with heavy-ball momentum."""
from __future__ import annotations

import torch

from archs.optim.core import register_optimizer


@register_optimizer("adam")
def adam(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Adam; a momentum is refused (Adam keeps its own moment estimates)."""
    if momentum:
        raise ValueError("--momentum applies to --optimizer sgd only; Adam keeps its own "
                         "moment estimates")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@register_optimizer("sgd")
def sgd(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
