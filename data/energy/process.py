"""Energy from the work the process did, not from the time that passed.

Without hardware counters, CodeCarbon multiplies a power figure by elapsed time, so a busy
neighbour that slows a run down makes it "cost" more. Here every measured interval also
records the process's own CPU-seconds (each of its threads', from /proc/self/task, to the
nanosecond where the scheduler's counts can be read, and its children's once reaped;
CodeCarbon's own sampling threads left out, since their cost grows with elapsed time) and the CPU-seconds the rest of the machine used meanwhile (``/proc/stat``'s busy time minus
the process's own). Where power comes from a model rather than a counter, the energy is::

    component watts x own CPU-seconds / logical CPUs

the process's share of the machine's CPU time, applied to the whole machine's power figure
(CodeCarbon's own process model for the CPU does the same with sampled loads). RAM's figure
(a near-constant draw whatever the network does) is attributed the same way, reported apart,
and counted in the totals only with ``--ram_energy include``.

A measurement during which other processes used more than :data:`CONTAMINATION_SHARE` of the
machine is "contaminated": counters (RAPL, NVML) then include the neighbours' energy, and even
CPU-seconds grow a little under contention (shared caches), so verdicts built on it are
flagged like measurements too short to trust.
"""
from __future__ import annotations

import math
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

JOULES_PER_KWH = 3.6e6
# Others' CPU time, as a share of the machine's capacity over the measurement, above which a
# measurement is flagged.
CONTAMINATION_SHARE = 0.25
RAM_ENERGY_CHOICES = ("include", "exclude")
# Fields every record carries besides CodeCarbon's (cumulative, seconds).
PROCESS_FIELDS = ("cpu_seconds", "others_cpu_seconds")


def meter_threads() -> set[int]:
    """Native ids of CodeCarbon's live sampling threads (threading.Timer of its scheduler)."""
    ids = set()
    for thread in threading.enumerate():
        owner = getattr(getattr(thread, "function", None), "__self__", None)
        if owner is not None and type(owner).__module__.startswith("codecarbon"):
            ids.add(thread.native_id)
    return ids


def own_cpu_seconds(ticks_per_second: float | None = None) -> dict[int, float]:
    """User + system CPU-seconds by thread id (-1: reaped children), CodeCarbon's sampling
    threads left out. Where /proc/self/task cannot be read: the whole process, under id 0."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {-1: children.ru_utime + children.ru_stime}
    ticks = ticks_per_second or float(os.sysconf("SC_CLK_TCK"))
    skip = meter_threads()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        mine = resource.getrusage(resource.RUSAGE_SELF)
        return {**result, 0: mine.ru_utime + mine.ru_stime}
    for tid in tasks:
        if int(tid) in skip:
            continue
        seconds = thread_cpu_seconds(tid, ticks)
        if seconds is not None:   # None: the thread ended meanwhile
            result[int(tid)] = seconds
    return result


def thread_cpu_seconds(tid: str, ticks_per_second: float) -> float | None:
    """CPU-seconds of one of this process's threads: the scheduler's nanosecond count
    (``schedstat``), else user + system time in clock ticks (``stat``, 10 ms steps: a
    millisecond pass could read as nothing)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks_per_second   # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def read_proc_stat() -> str | None:
    try:
        with open("/proc/stat") as f:
            return f.read()
    except OSError:
        return None


def machine_busy_seconds(stat_text: str | None, ticks_per_second: float) -> float:
    """CPU-seconds every process on the machine used since boot, from /proc/stat's "cpu" line
    (user, nice, system, irq, softirq; idle, iowait and steal are not work done here); NaN
    when it cannot be read."""
    if not stat_text:
        return math.nan
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            values = [int(value) for value in line.split()[1:8]]
            user, nice, system, _idle, _iowait, irq, softirq = values + [0] * (7 - len(values))
            return (user + nice + system + irq + softirq) / ticks_per_second
    return math.nan


@dataclass(frozen=True)
class Snapshot:
    wall: float
    own_cpu: dict[int, float]   # CPU-seconds by thread (or any key the clock uses)
    machine_busy: float


@dataclass
class ProcessClock:
    """Reads the three clocks; each reader can be replaced (tests use fakes)."""

    wall: Callable[[], float] = time.perf_counter
    own_cpu: Callable[[], dict[int, float]] = own_cpu_seconds
    proc_stat: Callable[[], str | None] = read_proc_stat
    ticks_per_second: float = field(default_factory=lambda: float(os.sysconf("SC_CLK_TCK")))

    def snapshot(self) -> Snapshot:
        return Snapshot(self.wall(), self.own_cpu(),
                        machine_busy_seconds(self.proc_stat(), self.ticks_per_second))


@dataclass(frozen=True)
class Usage:
    """What happened between two snapshots."""

    wall_seconds: float
    cpu_seconds: float          # this process's own
    others_cpu_seconds: float   # every other process's on the machine (NaN: unknown)

    @classmethod
    def between(cls, start: Snapshot, end: Snapshot) -> "Usage":
        # threads alive at the end, from their value at the start (0 if started meanwhile)
        own = max(sum(seconds - start.own_cpu.get(key, 0.0) for key, seconds in end.own_cpu.items()), 0.0)
        # /proc/stat counts in clock ticks (10 ms): a difference below zero is rounding
        others = max(end.machine_busy - start.machine_busy - own, 0.0)
        return cls(max(end.wall - start.wall, 0.0), own, others)

    def others_share(self, cpus: int) -> float:
        """Others' CPU time as a share of the machine's capacity over the interval."""
        capacity = self.wall_seconds * cpus
        return self.others_cpu_seconds / capacity if capacity > 0 else math.nan


def others_share(record: dict[str, float], cpus: int) -> float:
    """Others' CPU-seconds in a record as a share of the machine's capacity over its duration
    (NaN when not recorded)."""
    capacity = record.get("duration", 0.0) * cpus
    others = record.get("others_cpu_seconds", math.nan)
    return others / capacity if capacity > 0 else math.nan


def contaminated(cpu_seconds_of_others: float, wall_seconds: float, cpus: int) -> bool:
    """Whether other processes took more than CONTAMINATION_SHARE of the machine meanwhile."""
    capacity = wall_seconds * cpus
    return capacity > 0 and cpu_seconds_of_others / capacity > CONTAMINATION_SHARE


@dataclass(frozen=True)
class PowerModel:
    """Watts of the whole machine's components where they come from a model (None: a counter
    measures that component, CodeCarbon's figure is kept), and whether RAM counts in totals."""

    cpu_watts: float | None
    ram_watts: float | None
    cpus: int
    include_ram: bool = True

    def share_kwh(self, watts: float, usage: Usage) -> float:
        return watts * usage.cpu_seconds / self.cpus / JOULES_PER_KWH


def process_record(codecarbon: dict[str, float], usage: Usage, model: PowerModel,
                   intensity: float) -> dict[str, float]:
    """CodeCarbon's record of an interval with its modelled components recomputed from the
    process's CPU-seconds, totals and CO2 (``intensity`` kg CO2eq per kWh) redone to match, and
    the interval's CPU-seconds (own and others') added."""
    record = dict(codecarbon)
    if model.cpu_watts is not None:
        record["cpu_energy"] = model.share_kwh(model.cpu_watts, usage)
    if model.ram_watts is not None:
        record["ram_energy"] = model.share_kwh(model.ram_watts, usage)
    seconds = record["duration"]
    for power, energy in (("cpu_power", "cpu_energy"), ("gpu_power", "gpu_energy"), ("ram_power", "ram_energy")):
        record[power] = record[energy] * JOULES_PER_KWH / seconds if seconds > 0 else 0.0
    record["energy_consumed"] = (record["cpu_energy"] + record["gpu_energy"]
                                 + (record["ram_energy"] if model.include_ram else 0.0))
    record["emissions"] = record["energy_consumed"] * intensity if record["energy_consumed"] > 0 else 0.0
    record["emissions_rate"] = record["emissions"] / seconds if seconds > 0 else 0.0
    record["cpu_seconds"] = usage.cpu_seconds
    record["others_cpu_seconds"] = usage.others_cpu_seconds
    return record


def describe_shares(record: dict[str, float]) -> str:
    """'CPU 45%, RAM 55%' of the energy components measured (GPU only when it drew any); RAM
    counted whether or not the totals include it (they do when energy_consumed has it)."""
    parts = {"CPU": record.get("cpu_energy", 0.0), "GPU": record.get("gpu_energy", 0.0),
             "RAM": record.get("ram_energy", 0.0)}
    total = sum(parts.values())
    if not total > 0:
        return ""
    ram_out = record.get("energy_consumed", total) < total * (1 - 1e-9) and parts["RAM"] > 0
    words = [f"{name} {value / total:.0%}" for name, value in parts.items() if value > 0 or name != "GPU"]
    return ", ".join(words) + (" (RAM not in totals)" if ram_out else "")


def shares(record: dict[str, float], include_ram: bool = True) -> dict[str, float]:
    """Each component's share of the energy (RAM's only when it counts)."""
    parts = {"cpu": record.get("cpu_energy", 0.0), "gpu": record.get("gpu_energy", 0.0),
             "ram": record.get("ram_energy", 0.0) if include_ram else 0.0}
    total = sum(parts.values())
    return {name: value / total if total > 0 else math.nan for name, value in parts.items()}
