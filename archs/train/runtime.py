"""The runtime flags of a run: settings of the arithmetic (denormals, TF32, bf16), memory
layout, torch.compile, and the checks of the run's schedule settings before training starts."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from archs.optim import LrSchedule, parse_duration
from archs.pruning import RewindPoint, parse_rewind_point
from archs.runtime import flush_denormals, matmul_precision
from data.runs import RunConfig
from utils import UserError


@dataclass
class Runtime:
    """How the loop runs the model: ``forward`` is the model or its compiled view (same
    parameters), ``autocast_dtype`` bf16 or None, ``memory_format`` channels_last or None."""
    forward: nn.Module
    autocast_dtype: torch.dtype | None
    memory_format: torch.memory_format | None


def prepare_runtime(config: RunConfig, model: nn.Module, device: torch.device,
                    compile_model: bool = False) -> tuple[nn.Module, Runtime]:
    """Set the process's arithmetic for ``config`` and lay ``model`` out for ``device``; returns
    the (possibly re-laid) model and how to run it."""
    # Settings of the arithmetic belong to the process, and a previous run in it may have
    # changed them, so each is set explicitly either way.
    flush_denormals(config.flush_denormal)
    # Speed on GPUs: TF32 (a setting of the run), and channels_last only where
    # convolutions meet a GPU.
    matmul_precision(device, config.precision)
    autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
    has_convolutions = any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())
    memory_format = torch.channels_last if device.type == "cuda" and has_convolutions else None
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    # A compiled view shares the model's parameters: state dicts and masks stay the model's.
    forward = torch.compile(model) if compile_model else model
    return model, Runtime(forward, autocast_dtype, memory_format)


def iterations_per_epoch(config: RunConfig, train_size: int) -> int:
    return math.ceil(train_size / config.batch_size)


def checked_schedule(config: RunConfig, ipe: int) -> tuple[RewindPoint, LrSchedule]:
    """The rewind point and learning-rate schedule of ``config``, checked against the dense
    cycle (``ipe`` iterations per epoch); any inconsistency is a UserError."""
    try:
        rewind_point = parse_rewind_point(config.rewind_to)
        warmup = None if config.warmup == "none" else parse_duration(config.warmup)
        schedule = LrSchedule(config.lr, config.lr_schedule, warmup)
        schedule.check(ipe, config.end_iter)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if rewind_point.kind != "init" and rewind_point.iteration(ipe) > config.end_iter * ipe:
        raise UserError(f"--rewind_to {config.rewind_to} is past the end of the dense cycle "
                        f"({config.end_iter} epochs of {ipe} iterations)")
    return rewind_point, schedule
