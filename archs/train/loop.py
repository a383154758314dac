"""One epoch of masked training, evaluation, augmentation and the state helpers of the loop.

After each optimiser step the pruned weights are multiplied by their mask, so they stay
exactly zero whatever the optimiser does. Nothing here knows about cycles or checkpoints:
:class:`archs.train.cycles.LotteryRun` drives these functions.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from archs.optim import set_learning_rate
from data.datasets import Split, iterate_batches


def clone_state(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def state_fingerprint(state: dict[str, torch.Tensor]) -> float:
    """A number that changes if any value of the state changes (sum of |x| in float64)."""
    return sum(float(t.detach().double().abs().sum()) for t in state.values())


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in state.items()}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The mixed-precision context of a loop (made once per loop, entered at each step): a
    no-op unless ``dtype`` (bf16) is asked for, so the fp32 loop pays nothing for it."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int,
             autocast_dtype: torch.dtype | None = None,
             memory_format: torch.memory_format | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    precision = autocast(device, autocast_dtype)
    for images, labels in iterate_batches(split, batch_size):
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        with precision:
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train(was_training)
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (after zero-padding by ``padding`` pixels) and horizontal flip of every image,
    done on the images' device with one gather (no per-image Python work). The draws come from
    the CPU ``generator``, so a run is reproducible on any device."""
    n, _, height, width = images.shape
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = torch.arange(height, device=images.device)[None, :] + shifts[0][:, None]      # n x H
    cols = torch.arange(width, device=images.device)[None, :] + shifts[1][:, None]       # n x W
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]    # n x H x W x C
    return cropped.permute(0, 3, 1, 2).contiguous()


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch_size: int,
                generator: torch.Generator, masked: list[tuple[torch.Tensor, torch.Tensor]],
                lr_at_step: Callable[[int], float] | None = None,
                after_step: Callable[[int], None] | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                autocast_dtype: torch.dtype | None = None,
                memory_format: torch.memory_format | None = None,
                forward: nn.Module | None = None) -> tuple[float, float]:
    """One pass over ``split``; returns mean loss and accuracy (percent).

    After each optimiser step the pruned weights are multiplied by their mask, so they stay
    exactly zero whatever the optimiser does (Adam's moments and weight decay included),
    while a live weight is free to pass through zero. ``lr_at_step(k)`` sets the learning rate
    before step k of the epoch (schedules, warmup); ``after_step(k)`` runs after it (late
    rewinding saves its state there); ``augment`` transforms each training batch.
    ``autocast_dtype`` (bf16) and ``memory_format`` (channels_last) are the GPU speed options;
    ``forward`` is a compiled view of ``model`` (same parameters) when torch.compile is used.
    Nothing in the loop waits for the device: loss and accuracy stay on it until the epoch ends.
    """
    model.train()
    forward = forward or model
    device = split.images.device
    weights, masks = [w for w, _ in masked], [m for _, m in masked]
    precision = autocast(device, autocast_dtype)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for step, (images, labels) in enumerate(iterate_batches(split, batch_size, generator)):
        if lr_at_step is not None:
            set_learning_rate(optimizer, lr_at_step(step))
        if augment is not None:
            images = augment(images)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with precision:
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if weights:   # every mask in one fused call
                torch._foreach_mul_(weights, masks)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
        if after_step is not None:
            after_step(step)
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n
