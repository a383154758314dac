"""Where each component's power came from, in numbers and words, read from CodeCarbon's
hardware objects (it has no public API for this; its 3.x classes are read, and anything it
does not expose is reported as unknown rather than guessed).

Every component (CPU, GPU, RAM) is either measured by a counter (RAPL, NVML, ...) or given by
a model: a figure in watts and where that figure comes from (CodeCarbon's CPU table, its
fallback for a CPU it does not know, its RAM model, or the user's own). Modelled energy
follows the process's CPU-seconds (:mod:`data.energy.process`).
"""
from __future__ import annotations

import os

# Tracker settings and hardware that a resumed run must share with the checkpoint: energy
# measured another way (other meter, other grid, other CPU) cannot be added to it.
PROVENANCE_IDENTITY = ("device", "power_source", "cpu_model", "gpu_model", "measure_power_secs",
                       "tracking_mode", "country_iso_code", "codecarbon_version")
COUNTER_MODES = {"intel_rapl": "counter (RAPL)", "windows_emi": "counter (RAPL, Windows EMI)",
                 "intel_power_gadget": "counter (Intel Power Gadget)"}
FALLBACK = "FALLBACK"


def provenance_mismatch(saved: dict, current: dict) -> str | None:
    """One line naming what differs between two provenances in :data:`PROVENANCE_IDENTITY`, or None."""
    differences = [f"{key} {saved.get(key)!r} then, {current.get(key)!r} now"
                   for key in PROVENANCE_IDENTITY if saved.get(key) != current.get(key)]
    return "; ".join(differences) or None


def format_seconds(value) -> str:
    return "?" if value is None else f"{value:g} s"


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def cpu_in_codecarbon_table(model: str) -> bool:
    """Whether CodeCarbon's CPU power table has ``model`` (otherwise it falls back on 4 W per
    thread)."""
    from codecarbon.core.cpu import TDP
    from codecarbon.input import DataSource

    try:
        table = DataSource().get_cpu_power_data()
        return bool(model) and bool(TDP._get_matching_cpu(TDP.__new__(TDP), model, table))
    except Exception:
        return False


def cpu_power(cpu, user_watts: float | None) -> tuple[float | None, str]:
    """(watts of the model, or None for a counter; where the figure comes from, in words)."""
    if cpu is None:
        return None, "not tracked"
    mode = getattr(cpu, "_mode", None)
    if mode in COUNTER_MODES:
        return None, COUNTER_MODES[mode]
    if user_watts is not None:
        return float(user_watts), f"model: {user_watts:g} W, the user's own figure (--cpu_power_watts)"
    tdp = float(getattr(cpu, "_tdp", 0) or 0)
    model = getattr(cpu, "_model", "") or ""
    if cpu_in_codecarbon_table(model) and not getattr(cpu, "_is_generic_tdp", False):
        return tdp, f"model: {tdp:g} W, CodeCarbon's CPU table (TDP of {model})"
    threads = int(getattr(cpu, "_cpu_count", 0) or os.cpu_count() or 1)
    how = ("its generic TDP" if getattr(cpu, "_is_generic_tdp", False) else
           f"its default of 4 W x {threads} threads" if tdp == 4 * threads else "a figure it fell back on")
    return tdp, (f"model: {tdp:g} W, {FALLBACK}: {model or 'CPU'} unknown to CodeCarbon, {how}; "
                 f"give --cpu_power_watts")


def ram_power(ram, user_watts: float | None) -> tuple[float | None, str]:
    if user_watts is not None:
        return float(user_watts), f"model: {user_watts:g} W, the user's own figure (--ram_power_watts)"
    if ram is None:
        return None, "not tracked"
    try:
        watts = float(ram.total_power().W)
    except Exception:
        return 0.0, "unknown (CodeCarbon's RAM model failed): counted as 0"
    return watts, f"model: {watts:.3g} W, CodeCarbon's RAM model"


def hardware_provenance(tracker, settings) -> dict:
    """What CodeCarbon's ``tracker`` measures with, and the power model of each component."""
    from codecarbon import __version__
    from codecarbon.external.hardware import CPU, GPU, AppleSiliconChip, Raspberry
    from codecarbon.external.ram import RAM

    tracker._ensure_hardware_ready()
    hardware = list(getattr(tracker, "_hardware", []))
    conf = getattr(tracker, "_conf", {})
    cpu = next((item for item in hardware if isinstance(item, CPU)), None)
    ram = next((item for item in hardware if isinstance(item, RAM)), None)
    cpu_watts, cpu_source = cpu_power(cpu, settings.cpu_power_watts)
    ram_watts, ram_source = ram_power(ram, settings.ram_power_watts)
    gpu_source = "none"
    for item in hardware:
        if isinstance(item, GPU):
            kinds = {type(device).__name__ for device in getattr(item.devices, "devices", [])}
            gpu_source = ("counter (AMD SMI)" if kinds and all(k.startswith("AMD") for k in kinds)
                          else "counter (NVML)")
        elif isinstance(item, (AppleSiliconChip, Raspberry)):
            part = getattr(item, "chip_part", "CPU")
            source = "counter (powermetrics)" if isinstance(item, AppleSiliconChip) else "counter (Raspberry Pi PMIC)"
            if part == "CPU":
                cpu_watts, cpu_source = None, source
            elif part == "GPU":
                gpu_source = source
            else:
                ram_watts, ram_source = None, source
    power_source = cpu_source if gpu_source == "none" else f"CPU {cpu_source}, GPU {gpu_source}"
    return {
        "power_source": power_source,
        "cpu_power_source": cpu_source,
        "gpu_power_source": gpu_source,
        "ram_power_source": ram_source,
        "cpu_power_w": cpu_watts,
        "ram_power_w": ram_watts,
        "cpu_power_fallback": FALLBACK in cpu_source,
        "energy_basis": "process CPU-seconds x modelled watts / logical CPUs, counters as read",
        "ram_energy": settings.ram_energy,
        "cpus": int(getattr(cpu, "_cpu_count", 0) or os.cpu_count() or 1),
        "cpu_tdp_w": _float_or_none(getattr(cpu, "_tdp", None)),
        "cpu_model": str(conf.get("cpu_model") or ""),
        "gpu_model": str(conf.get("gpu_model") or ""),
        "measure_power_secs": float(settings.measure_power_secs),
        # Inside a task CodeCarbon pauses its measure_power_secs scheduler: load-based power is
        # sampled by its monitor thread (every second in 3.x) and energy counters are read at
        # the task's end.
        "sample_seconds": _float_or_none(getattr(getattr(tracker, "_scheduler_monitor_power", None),
                                                 "interval", None)),
        "tracking_mode": settings.tracking_mode,
        "country_iso_code": settings.country_iso_code.upper() if settings.country_iso_code else None,
        "codecarbon_version": str(conf.get("codecarbon_version") or __version__),
    }


def describe_provenance(provenance: dict | None) -> str:
    """One line for a figure caption: each component's power source with its watts, how the
    energy follows the work, on what hardware, with which settings."""
    if not provenance:
        return "energy not tracked"
    parts = [f"CPU {provenance['cpu_power_source']}"]
    if provenance.get("gpu_model"):
        parts.append(f"GPU {provenance['gpu_power_source']}")
    ram = f"RAM {provenance['ram_power_source']}"
    if provenance.get("ram_energy") == "exclude":
        ram += " (reported apart, not in totals)"
    parts.append(ram)
    hardware = provenance.get("cpu_model") or "unknown CPU"
    if provenance.get("gpu_model"):
        hardware += f" + {provenance['gpu_model']}"
    grid = provenance.get("country_iso_code") or "grid located online"
    basis = ("models x the process's CPU-seconds; " if "energy_basis" in provenance else "")
    return (f"{'; '.join(parts)}; {basis}{hardware}; CodeCarbon {provenance.get('codecarbon_version')}, "
            f"{provenance.get('tracking_mode')} tracking, power sampled every "
            f"{format_seconds(provenance.get('sample_seconds'))} (measure_power_secs "
            f"{provenance.get('measure_power_secs'):g}), {grid}")


def summarise_provenance(provenances: list[dict | None]) -> str:
    """The caption of a figure drawn from several measurements: their one provenance, or, when
    they were measured differently, each way (a figure should not silently mix them)."""
    described = sorted({describe_provenance(p) for p in provenances if p})
    if not described:
        return "Energy: how it was measured was not recorded (files of an earlier version)"
    if len(described) == 1:
        return f"Energy: {described[0]}"
    return "Energy measured in several ways: " + " | ".join(described)
