"""Timing candidate kernels on the machine at hand, and remembering the result.

Which kernel is fastest for a layer depends on the processor, the torch version, the
thread count, the layer's shape and stored weights, and the batch size: a threshold
measured on one CPU was 0.70x dense on another. So "auto" times the candidates where it
runs (:class:`InterleavedTimer`) and keeps the figures in a :class:`KernelTimingCache`, a
JSON file keyed by all of the above, so that the next replay of the same ticket on the
same machine does not time again.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping

import torch

from archs.runtime import synchronise
from utils import UserError, atomic_write_text, first_line

# A timer takes named runs (each computes one batch) and returns seconds per run by name.
Timer = Callable[[Mapping[str, Callable[[], object]]], dict[str, float]]

CACHE_FORMAT = 1


def default_timing_cache_path() -> Path:
    """``$XDG_CACHE_HOME/lottery_ticket/kernel_timings.json`` (``~/.cache`` without it)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lottery_ticket" / "kernel_timings.json"


def _cpuinfo_field(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (Linux), None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def device_description(device: torch.device) -> str:
    """The processor's model name (a GPU's for CUDA): part of every cached timing's key."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def timing_key(device: torch.device, **what: object) -> dict[str, object]:
    """``what`` (shapes, stored weights, batch...) plus the machine and software it was timed on.

    Virtual machines often report a generic model name ("Intel Xeon Processor"), so the
    CPU's instruction-set flags (hashed) are part of the key as well. On the CPU so is
    numba's version: it compiles the project's own kernels, and a new LLVM may vectorise
    them differently.
    """
    key: dict[str, object] = {"device": device_description(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads()}
    if device.type == "cpu":
        flags = _cpuinfo_field("flags") or ""
        key["cpu_flags"] = hashlib.sha256(flags.encode()).hexdigest()[:16]
        key["cpus"] = os.cpu_count()
        key["numba"] = _installed_version("numba")
    return {**key, **what}


def _installed_version(package: str) -> str | None:
    """``package``'s installed version, without importing it (None when not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class KernelTimingCache:
    """Seconds per candidate kernel, by :func:`timing_key`, kept in one JSON file.

    Every :meth:`put` rewrites the file atomically (merged with what other processes wrote
    meanwhile), so a reader never sees half a file. A file that cannot be read or parsed is
    ignored with a warning and replaced on the next :meth:`put`: the cache only saves time.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.is_dir():
            # refused now, not when the first timing is written (after minutes of timing)
            raise UserError(f"the kernel timing cache {self.path} is a directory; give a file "
                            f"name, e.g. {self.path / 'kernel_timings.json'}")
        self._entries = self._read()

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warnings.warn(f"ignoring the kernel timing cache {self.path}: {first_line(exc)}",
                          stacklevel=3)
            return {}
        try:
            content = json.loads(text)
            if content.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {content.get('format')!r}, expected {CACHE_FORMAT}")
            return {str(key): {str(kernel): float(seconds) for kernel, seconds in timings.items()}
                    for key, timings in content["timings"].items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            warnings.warn(f"ignoring the corrupt kernel timing cache {self.path} ({first_line(exc)}); "
                          "the kernels are timed again and the file rewritten", stacklevel=3)
            return {}

    @staticmethod
    def _key_text(key: Mapping[str, object]) -> str:
        return json.dumps(key, sort_keys=True, separators=(",", ":"))

    def get(self, key: Mapping[str, object]) -> dict[str, float] | None:
        timings = self._entries.get(self._key_text(key))
        return None if timings is None else dict(timings)

    def put(self, key: Mapping[str, object], timings: Mapping[str, float]) -> None:
        with warnings.catch_warnings():
            # already warned about when this cache was opened
            warnings.simplefilter("ignore")
            entries = self._read()
        entries.update(self._entries)
        entries[self._key_text(key)] = {kernel: float(s) for kernel, s in timings.items()}
        self._entries = entries
        atomic_write_text(self.path, json.dumps({"format": CACHE_FORMAT, "timings": entries},
                                                indent=1, sort_keys=True))

    def __len__(self) -> int:
        return len(self._entries)


class InterleavedTimer:
    """Median seconds per call of each run, the runs interleaved in random order.

    On a shared machine load comes in bursts; running every candidate in turn, in a fresh
    random order each round, lets a burst slow them alike, and the median over rounds
    ignores the odd descheduled call. Each sample repeats its run enough times to last
    ``sample_seconds`` (timer resolution and call overhead then do not matter). The
    first ``warmup`` calls of each run (numba and torch initialisation, caches) are not
    timed.
    """

    def __init__(self, device: torch.device, rounds: int = 15, warmup: int = 3,
                 sample_seconds: float = 2e-4, seed: int = 0):
        self.device = device
        self.rounds = rounds
        self.warmup = warmup
        self.sample_seconds = sample_seconds
        self.seed = seed

    def _seconds(self, run: Callable[[], object], calls: int) -> float:
        synchronise(self.device)
        start = time.perf_counter()
        for _ in range(calls):
            run()
        synchronise(self.device)
        return (time.perf_counter() - start) / calls

    def __call__(self, runs: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        calls = {}
        for name, run in runs.items():
            for _ in range(self.warmup):
                run()
            calls[name] = max(1, math.ceil(self.sample_seconds / max(self._seconds(run, 1), 1e-9)))
        samples: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        shuffle = random.Random(self.seed).shuffle
        for _ in range(self.rounds):
            shuffle(order)
            for name in order:
                samples[name].append(self._seconds(runs[name], calls[name]))
        return {name: statistics.median(times) for name, times in samples.items()}
