"""What the break-even analysis reads off the measurements besides their CO2: durations,
the power-sampling interval the runs recorded, the share of the machine others took."""
from __future__ import annotations

import math


def shortest_of(seconds: list[float]) -> float:
    """The shortest of some durations, those not recorded (NaN) left out; NaN when none is."""
    known = [value for value in seconds if not math.isnan(value)]
    return min(known) if known else math.nan


def largest_of(values: list[float]) -> float:
    known = [value for value in values if not math.isnan(value)]
    return max(known) if known else math.nan


def recorded_sample_seconds(training_provenance: dict[str, dict | None], inference_runs: list,
                            fallback: float) -> float:
    """The longest power-sampling interval the runs recorded (``fallback`` for files of earlier
    versions, which did not record it)."""
    recorded = [p.get("sample_seconds") or p.get("measure_power_secs") for p in training_provenance.values() if p]
    recorded += [run.sample_seconds for run in inference_runs]
    longest = largest_of([float(x) for x in recorded if x is not None and float(x) > 0])
    return fallback if math.isnan(longest) else longest


def summed_components(provenance_by_run: dict[str, dict | None]) -> dict[str, float]:
    """The CPU, GPU and RAM energy of the training runs together, and their total."""
    names = ("cpu_energy", "gpu_energy", "ram_energy", "energy_consumed")
    records = [p["energy"] for p in provenance_by_run.values() if p and "energy" in p]
    return {name: sum(record.get(name, 0.0) for record in records) for name in names}


def training_others_share(run) -> float:
    final, cpus = run.final_emissions, (run.provenance or {}).get("cpus")
    if not cpus or "others_cpu_seconds" not in final or not final["duration"] > 0:
        return math.nan
    return final["others_cpu_seconds"] / (final["duration"] * cpus)
