"""The controls of a ticket, as pure functions: random masks with the ticket's per-layer counts,
survivors re-drawn from the initial distribution, and the generators that make them
reproducible (one per seed, purpose and cycle). The branches and prune types that use them are
registries of their own (archs/pruning/branches/, archs/pruning/prune_types/)."""
from __future__ import annotations

import hashlib
import math
from typing import Mapping

import torch
from torch import nn

from archs.pruning.masks import Masks
from archs.pruning.plan import _keep_best
from archs.pruning.structure import Structure, is_n_of_m, n_of_m_mask, unstructured_reason

State = dict[str, torch.Tensor]


def derived_generator(seed: int, stream: str, cycle: int = 0) -> torch.Generator:
    """A CPU generator for one purpose ("random_mask", "reinit", "snip"...) of one cycle of one
    seed, independent of the training generator and rebuilt identically on resume."""
    digest = hashlib.sha256(f"{stream}/{seed}/{cycle}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_masks(reference: Mapping[str, torch.Tensor], within: Mapping[str, torch.Tensor],
                 generator: torch.Generator, structure: Structure | None = None) -> Masks:
    """Masks keeping, in every layer, as many weights as ``reference`` keeps, drawn uniformly
    among the survivors of ``within`` (the random-pruning control: pass the magnitude masks of
    this round and the masks of the cycle before, so pruned weights stay pruned). With a
    ``structure`` (N, M), a layer whose reference is N:M gets a random N:M mask: the draws
    pick N survivors of every group first, then the count among them (the same draws, so an
    unstructured run's masks are unchanged by the option's existence)."""
    new_masks: Masks = {}
    for name, ref in reference.items():
        keep = int(ref.sum())
        base = within[name]
        if keep > int(base.sum()):
            raise ValueError(f"{name}: cannot keep {keep} weights among {int(base.sum())} survivors")
        draws = torch.rand(base.numel(), generator=generator, dtype=torch.float64)
        base = base.cpu()
        if (structure is not None and unstructured_reason(ref.shape, structure) is None
                and is_n_of_m(ref, *structure)):
            base = n_of_m_mask(draws.reshape(base.shape), base, *structure)
        new_masks[name] = _keep_best(draws, base, keep).to(within[name].device)
    return new_masks


def xavier_normal_std(shape: torch.Size | tuple[int, ...]) -> float:
    """The standard deviation of ``nn.init.xavier_normal_`` (gain 1) for a weight of ``shape``."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return math.sqrt(2.0 / (fan_in + fan_out))


def initial_bias(shape, weight_shape, bias_init: str, generator: torch.Generator) -> torch.Tensor:
    """A fresh draw of a bias as ``archs.registry.initialise`` makes it: N(0, 1) (normal), zeros,
    or PyTorch's default uniform +-1/sqrt(fan_in)."""
    if bias_init == "zeros":
        return torch.zeros(shape)
    if bias_init == "default":
        bound = 1 / math.sqrt(math.prod(weight_shape[1:]))
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).float() * bound
    return torch.randn(shape, generator=generator)


@torch.no_grad()
def reinitialise_survivors(model_or_state: nn.Module | Mapping[str, torch.Tensor],
                           masks: Mapping[str, torch.Tensor], generator: torch.Generator,
                           redraw_biases: bool = True, bias_init: str = "normal") -> dict[str, torch.Tensor]:
    """A copy of the state whose masked weights are redrawn from the original initialisation's
    distribution (Xavier-normal, see ``archs.initialise``) with ``generator`` and multiplied by
    their mask: the random-reinitialisation control. The biases of those layers are redrawn
    too (from ``bias_init``'s distribution: see :func:`initial_bias`), so no part of the
    original draw of a pruned layer survives; everything else (BatchNorm, running statistics)
    is copied. Draws are made on the CPU in ``masks``
    order (weight, then bias), so a seeded generator gives the same state on any device."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    new_state = {name: tensor.detach().clone() for name, tensor in state.items()}
    for name, mask in masks.items():
        weight = state[name]
        draw = torch.randn(weight.shape, generator=generator) * xavier_normal_std(weight.shape)
        new_state[name] = draw.to(weight.device, weight.dtype) * mask.to(weight.device)
        bias_name = name.removesuffix("weight") + "bias"
        if redraw_biases and name.endswith("weight") and bias_name in state:
            bias = state[bias_name]
            new_state[bias_name] = initial_bias(bias.shape, weight.shape, bias_init, generator).to(
                bias.device, bias.dtype)
    return new_state
