"""Runtime of a process that trains or measures: the device, GPU synchronisation, seeding, and
every process-wide setting of torch (threads, denormals, TF32, cuDNN): library code sets that
state only through this module."""
from __future__ import annotations

import random

import numpy as np
import torch

from utils import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; "
                        "use --device cpu or --device auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def synchronise(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pin_threads(threads: int | None) -> int:
    """Pin torch's CPU threads to ``threads`` (None: leave torch's choice) and return the count in
    force: energy per epoch or per image depends on it, so jobs record it beside their energy."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def flush_denormals(enabled: bool) -> None:
    """Read denormal floats as zero (or not) in this process. Call it before anything runs in
    parallel: torch's worker threads copy the mode of the thread that creates them, and setting
    it later reaches only the calling thread."""
    torch.set_flush_denormal(enabled)


def matmul_precision(device: torch.device, precision: str) -> None:
    """TF32 matrix products and convolutions on a GPU exactly when ``precision`` is "tf32" (set
    either way: an earlier run in the same process may have changed it)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


def replay_runtime(device: torch.device) -> None:
    """Settings of an inference replay: on a GPU, cuDNN autotunes its convolution algorithms
    (``cudnn.benchmark``; the replay measures speed, not bit-reproducibility). The warm-up pass
    the replay makes before timing absorbs the autotuning."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every generator. cuDNN's deterministic kernels (and no autotuning) only when asked:
    they make GPU runs bit-reproducible at a cost in speed; the CPU path is deterministic anyway."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
