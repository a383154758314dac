"""CodeCarbon trackers and the emission records the toolkit keeps.

CodeCarbon writes its own CSV, one row each time it is flushed or stopped. Each one is also
captured through a custom output handler as a plain dict of :data:`EMISSION_FIELDS`, so the
training logs can key every record by the exact number of images seen at that moment.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from utils import UserError, atomic_write_text, first_line

# Cumulative quantities since the tracker started, with CodeCarbon's units.
EMISSION_FIELDS: dict[str, str] = {
    "duration": "s",
    "emissions": "kg CO2eq",
    "emissions_rate": "kg CO2eq/s",
    "cpu_power": "W",
    "gpu_power": "W",
    "ram_power": "W",
    "cpu_energy": "kWh",
    "gpu_energy": "kWh",
    "ram_energy": "kWh",
    "energy_consumed": "kWh",
}
# Fields that add up across tasks and tracker sessions (a resumed run starts a new tracker).
CUMULATIVE_FIELDS = ("duration", "emissions", "cpu_energy", "gpu_energy", "ram_energy",
                     "energy_consumed")


# CodeCarbon samples power every measure_power_secs; a measurement spanning fewer samples
# than this is mostly sampling noise (identical inference passes differed fourfold).
MIN_POWER_SAMPLES = 5


@dataclass(frozen=True)
class TrackerSettings:
    country_iso_code: str | None = None
    measure_power_secs: float = 1.0
    tracking_mode: str = "process"

    def __post_init__(self):
        # CodeCarbon logs an unknown country and goes on with a world average; a typo would
        # then silently change every CO2 figure, so it is refused before any work starts.
        if self.country_iso_code is not None:
            known = known_country_codes()
            if self.country_iso_code.upper() not in known:
                raise UserError(f"--country_iso_code {self.country_iso_code!r} is not a country "
                                f"CodeCarbon knows; give a three-letter ISO code such as "
                                f"{', '.join(c for c in ('FRA', 'CAN', 'USA', 'DEU') if c in known)}")
        if not self.measure_power_secs > 0:
            raise UserError(f"--measure_power_secs must be greater than 0, not {self.measure_power_secs}")


    def too_short_to_measure(self, seconds: float) -> bool:
        """Whether energy measured over ``seconds`` spans too few power samples to be trusted."""
        return seconds < MIN_POWER_SAMPLES * self.measure_power_secs


def known_country_codes() -> set[str]:
    """ISO 3166 alpha-3 codes of the countries in CodeCarbon's energy-mix data."""
    from codecarbon.input import DataSource

    return set(DataSource().get_global_energy_mix_data())


def _record_from(data) -> dict[str, float]:
    return {name: float(getattr(data, name) or 0.0) for name in EMISSION_FIELDS}


# Phases of a training run, each measured as its own CodeCarbon task so that no figure mixes them.
PHASES = ("training", "evaluation", "checkpoint")

_JOULES_PER_KWH = 3.6e6
_POWER_OF = {"cpu_power": "cpu_energy", "gpu_power": "gpu_energy", "ram_power": "ram_energy"}


def zero_record() -> dict[str, float]:
    return {name: 0.0 for name in EMISSION_FIELDS}


def is_usable(record: dict[str, float] | None) -> bool:
    """Whether a measurement can be added to a total: every field present, finite and not negative."""
    if not record:
        return False
    return all(math.isfinite(record.get(name, math.nan)) and record[name] >= 0
               for name in CUMULATIVE_FIELDS)


def accumulate(total: dict[str, float] | None, task: dict[str, float]) -> dict[str, float]:
    """``total`` plus one task's measurement, as a new record.

    The cumulative fields add up. The power fields are not CodeCarbon's (its task records
    repeat an average over every sample the tracker ever took): they are recomputed as
    energy / duration of everything accumulated, so they are time-weighted means over the
    whole run, however many sessions (resumes) it took.
    """
    result = dict(total or zero_record())
    for name in CUMULATIVE_FIELDS:
        result[name] = result.get(name, 0.0) + task[name]
    seconds = result["duration"]
    for power, energy in _POWER_OF.items():
        result[power] = result[energy] * _JOULES_PER_KWH / seconds if seconds > 0 else 0.0
    result["emissions_rate"] = result["emissions"] / seconds if seconds > 0 else 0.0
    return result


# Tracker settings and hardware that a resumed run must share with the checkpoint: energy
# measured another way (other meter, other grid, other CPU) cannot be added to it.
PROVENANCE_IDENTITY = ("device", "power_source", "cpu_model", "gpu_model", "measure_power_secs",
                       "tracking_mode", "country_iso_code", "codecarbon_version")


def provenance_mismatch(saved: dict, current: dict) -> str | None:
    """One line naming what differs between two provenances in :data:`PROVENANCE_IDENTITY`, or None."""
    differences = [f"{key} {saved.get(key)!r} then, {current.get(key)!r} now"
                   for key in PROVENANCE_IDENTITY if saved.get(key) != current.get(key)]
    return "; ".join(differences) or None


def describe_provenance(provenance: dict | None) -> str:
    """One line for a figure caption: how power was obtained, on what hardware, with which settings."""
    if not provenance:
        return "energy not tracked"
    parts = [f"CPU power {provenance['cpu_power_source']}"]
    if provenance.get("gpu_model"):
        parts.append(f"GPU power {provenance['gpu_power_source']}")
    parts.append(f"RAM power {provenance['ram_power_source']}")
    hardware = provenance.get("cpu_model") or "unknown CPU"
    if provenance.get("gpu_model"):
        hardware += f" + {provenance['gpu_model']}"
    grid = provenance.get("country_iso_code") or "grid located online"
    return (f"{', '.join(parts)}; {hardware}; CodeCarbon {provenance.get('codecarbon_version')}, "
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


def describe_phases(energy_by_phase: dict[str, dict[str, float]],
                    unmeasured: dict[str, dict[str, float]] | None = None) -> str:
    """One line per measured phase: energy, CO2 and duration, and what CodeCarbon could not measure."""
    lines = []
    for phase, record in energy_by_phase.items():
        missing = (unmeasured or {}).get(phase, {})
        if record["duration"] == 0 and not missing.get("tasks"):
            continue   # a phase that never ran (evaluation in plain CO2 tracking mode)
        line = (f"  {phase:<10s} {record['energy_consumed']:.3e} kWh  {record['emissions']:.3e} kg CO2eq  "
                f"{record['duration']:8.1f} s")
        if missing.get("tasks"):
            line += f"  (+{missing['seconds']:.1f} s in {missing['tasks']} task(s) CodeCarbon did not measure)"
        lines.append(line)
    return "\n".join(lines)


def format_seconds(value) -> str:
    return "?" if value is None else f"{value:g} s"


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _cpu_power_source(cpu) -> tuple[str, float | None]:
    """How CodeCarbon gets CPU power, and the TDP it assumes when it estimates."""
    mode = getattr(cpu, "_mode", None)
    measured = {"intel_rapl": "measured (RAPL)", "windows_emi": "measured (RAPL, Windows EMI)",
                "intel_power_gadget": "measured (Intel Power Gadget)"}
    if mode in measured:
        return measured[mode], None
    tdp = getattr(cpu, "_tdp", None)
    generic = " (generic TDP: model unknown to CodeCarbon)" if getattr(cpu, "_is_generic_tdp", False) else ""
    if mode == "cpu_load":
        return f"estimated (TDP x load){generic}", tdp
    if mode == "constant":
        return f"estimated (50% of TDP, constant){generic}", tdp
    return f"unknown ({mode})", tdp


def hardware_provenance(tracker, settings: "TrackerSettings") -> dict:
    """What CodeCarbon's ``tracker`` measures with, read from its hardware objects.

    CodeCarbon has no public API for this; its 3.x hardware classes are read, and anything
    it does not expose is reported as unknown rather than guessed.
    """
    from codecarbon import __version__
    from codecarbon.external.hardware import CPU, GPU, AppleSiliconChip, Raspberry

    tracker._ensure_hardware_ready()
    hardware = list(getattr(tracker, "_hardware", []))
    conf = getattr(tracker, "_conf", {})
    cpu_source, tdp = "not tracked", None
    gpu_source = "none"
    ram_source = "estimated (CodeCarbon's RAM model)"
    for item in hardware:
        if isinstance(item, CPU):
            cpu_source, tdp = _cpu_power_source(item)
        elif isinstance(item, GPU):
            kinds = {type(device).__name__ for device in getattr(item.devices, "devices", [])}
            gpu_source = ("measured (AMD SMI)" if kinds and all(k.startswith("AMD") for k in kinds)
                          else "measured (NVML)")
        elif isinstance(item, (AppleSiliconChip, Raspberry)):
            part = getattr(item, "chip_part", "CPU")
            source = "measured (powermetrics)" if isinstance(item, AppleSiliconChip) else "measured (Raspberry Pi PMIC)"
            if part == "CPU":
                cpu_source = source
            elif part == "GPU":
                gpu_source = source
            else:
                ram_source = source
        elif getattr(item, "_force_ram_power", None) is not None:
            ram_source = f"constant ({item._force_ram_power} W, user given)"
    power_source = cpu_source if gpu_source == "none" else f"CPU {cpu_source}, GPU {gpu_source}"
    return {
        "power_source": power_source,
        "cpu_power_source": cpu_source,
        "gpu_power_source": gpu_source,
        "ram_power_source": ram_source,
        "cpu_tdp_w": _float_or_none(tdp),
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


class EmissionsRecorder:
    """A CodeCarbon tracker writing ``csv_path``.

    Two ways of measuring, chosen when it is made:

    * continuous (default): the tracker starts now; ``flush()`` and ``stop()`` return the
      cumulative record and CodeCarbon appends a row to ``csv_path`` each time.
    * ``per_task=True``: nothing is measured except between ``start_task(phase)`` and
      ``stop_task()`` (CodeCarbon's task API), which returns that task's own record; rows of
      ``csv_path`` are written by the caller through ``append_row``.
    """

    def __init__(self, csv_path: Path | str, settings: TrackerSettings, project_name: str,
                 per_task: bool = False):
        from codecarbon import EmissionsTracker, OfflineEmissionsTracker
        from codecarbon.output_methods.base_output import BaseOutput

        records = self._records = []

        class _Capture(BaseOutput):
            def out(self, total, delta):
                records.append(_record_from(total))

        self.csv_path = Path(csv_path)
        self.settings = settings
        self.project_name = project_name
        self.per_task = per_task
        self.session_id = uuid.uuid4().hex
        self._task_open = False
        self._tasks_started = False
        self._warned = False
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        common = dict(
            project_name=project_name, output_dir=str(self.csv_path.parent), output_file=self.csv_path.name,
            measure_power_secs=settings.measure_power_secs, tracking_mode=settings.tracking_mode,
            output_handlers=[] if per_task else [_Capture()], save_to_file=not per_task,
            log_level="error", allow_multiple_runs=True,
        )
        quiet_codecarbon()
        try:
            if settings.country_iso_code:
                self._tracker = OfflineEmissionsTracker(country_iso_code=settings.country_iso_code.upper(),
                                                        **common)
            else:
                self._tracker = EmissionsTracker(**common)
            if not per_task:
                self._tracker.start()
        except Exception as exc:
            raise UserError(f"CodeCarbon could not start ({first_line(exc)})") from exc

    # ---------------------------------------------------------------- continuous
    def flush(self) -> dict[str, float]:
        before = len(self._records)
        self._tracker.flush()
        return self._latest(before)

    def stop(self) -> dict[str, float]:
        if self.per_task:
            if self._tasks_started:  # stops CodeCarbon's sampling thread and any task left open
                self._tracker.stop()
            return {}
        before = len(self._records)
        self._tracker.stop()
        return self._latest(before)

    def _latest(self, before: int) -> dict[str, float]:
        if len(self._records) == before:  # CodeCarbon swallows its own errors; say so, go on
            logging.getLogger("lottery").warning("CodeCarbon returned no measurement at this point")
            return {name: float("nan") for name in EMISSION_FIELDS}
        return self._records[-1]

    # ---------------------------------------------------------------- per task
    def start_task(self, phase: str) -> None:
        self._tasks_started = True
        try:
            self._tracker.start_task(phase)
            self._task_open = True
        except Exception as exc:  # a meter failure loses this measurement, never the run
            self._task_open = False
            self._warn(f"CodeCarbon could not start measuring {phase} ({first_line(exc)})")

    def stop_task(self) -> dict[str, float] | None:
        """The record of the task started last, or None when CodeCarbon gave nothing usable."""
        if not self._task_open:
            return None
        self._task_open = False
        try:
            data = self._tracker.stop_task()
        except Exception as exc:
            self._warn(f"CodeCarbon could not measure a task ({first_line(exc)})")
            return None
        record = None if data is None else _record_from(data)
        if not is_usable(record):
            self._warn(f"CodeCarbon returned an unusable measurement ({record}); it is left out")
            return None
        return record

    def _warn(self, message: str) -> None:
        log = logging.getLogger("lottery")
        (log.warning if not self._warned else log.debug)("warning: %s", message)
        self._warned = True

    def append_row(self, values: dict[str, object]) -> None:
        """Append one row (``values`` after a timestamp, the project and this session's id)."""
        row = {"timestamp": datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
               "project_name": self.project_name, "run_id": self.session_id, **values}
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def provenance(self) -> dict:
        """How this tracker obtains power, on what hardware, with which settings (plain JSON-able dict)."""
        try:
            return hardware_provenance(self._tracker, self.settings)
        except Exception as exc:
            raise UserError(f"CodeCarbon could not identify the hardware it measures ({first_line(exc)})") from exc


class _DropNoise(logging.Filter):
    """Drops CodeCarbon warnings that are about its own configuration, not the measurement."""

    NOISE = ("Multiple instances of codecarbon are allowed",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_codecarbon() -> None:
    """CodeCarbon logs every measurement at INFO; keep its real warnings and errors only."""
    codecarbon_logger = logging.getLogger("codecarbon")
    codecarbon_logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropNoise) for f in codecarbon_logger.filters):
        codecarbon_logger.addFilter(_DropNoise())


def keep_first_rows(csv_path: Path, rows: int) -> None:
    """Cut a CodeCarbon CSV after its first ``rows`` data rows (atomically; no-op if shorter)."""
    if not csv_path.exists():
        return
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    if len(table) <= rows + 1:
        return
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table[:rows + 1])
    atomic_write_text(csv_path, buffer.getvalue())
