"""CodeCarbon trackers and the emission records the toolkit keeps.

CodeCarbon writes its own CSV, one row each time it is flushed or stopped. Each one is also
captured through a custom output handler as a plain dict of :data:`EMISSION_FIELDS`, so the
training logs can key every record by the exact number of images seen at that moment.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from data.energy.process import (PROCESS_FIELDS, RAM_ENERGY_CHOICES, PowerModel, ProcessClock, Usage,
                                 describe_shares, process_record)
from data.energy.provenance import (PROVENANCE_IDENTITY, describe_provenance, format_seconds,  # noqa: F401
                                    hardware_provenance, provenance_mismatch, summarise_provenance)
from data.settings import add_field_arguments, flagged, option, values_from_args
from utils import UserError, atomic_write_text, first_line, positive_float

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
    """How CodeCarbon measures a job. Each option with a flag is declared once here;
    :func:`add_tracker_arguments` generates the flags of every script that measures."""

    country_iso_code: str | None = option(
        None, metavar="ISO3",
        help="three-letter country code (e.g. FRA, CAN, USA) for the grid's carbon intensity; when "
             "given, CodeCarbon's offline tracker is used and no network call is made. Default: the "
             "online tracker, which looks up the location and falls back to a world average when offline")
    measure_power_secs: float = option(
        1.0, parse=positive_float, metavar="S",
        help="seconds between CodeCarbon power measurements (default: 1, as in the study)")
    tracking_mode: str = "process"
    ram_energy: str = option(      # whether RAM's energy counts in totals
        "include", choices=RAM_ENERGY_CHOICES,
        help="whether RAM's energy (a modelled, near-constant draw) counts in energy, CO2 and "
             "break-even figures; it is reported apart either way (default: include, as in the study)")
    cpu_power_watts: float | None = option(   # the user's own figures (wall meter, datasheet)
        None, parse=positive_float, metavar="W",
        help="the whole CPU's power under full load, from a wall meter or datasheet, instead of "
             "CodeCarbon's table or its fallback (recorded in provenance)")
    ram_power_watts: float | None = option(
        None, parse=positive_float, metavar="W",
        help="RAM's power instead of CodeCarbon's RAM model (recorded in provenance)")

    def __post_init__(self):
        if self.ram_energy not in RAM_ENERGY_CHOICES:
            raise UserError(f"--ram_energy must be one of {', '.join(RAM_ENERGY_CHOICES)}, not {self.ram_energy!r}")
        for name in ("cpu_power_watts", "ram_power_watts"):
            watts = getattr(self, name)
            if watts is not None and not (math.isfinite(watts) and watts > 0):
                raise UserError(f"--{name} must be a positive number of watts, not {watts}")
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


def add_tracker_arguments(parser: argparse.ArgumentParser) -> None:
    """The CodeCarbon flags of every script that measures, generated from :class:`TrackerSettings`."""
    add_field_arguments(parser.add_argument_group("CodeCarbon"), flagged(TrackerSettings))


def tracker_settings_from_args(args: argparse.Namespace) -> TrackerSettings:
    """The settings of :func:`add_tracker_arguments`' flags."""
    return TrackerSettings(**values_from_args(flagged(TrackerSettings), args))


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
    return {name: 0.0 for name in (*EMISSION_FIELDS, *PROCESS_FIELDS)}


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
    for name in PROCESS_FIELDS:   # absent from records of earlier versions
        result[name] = result.get(name, 0.0) + task.get(name, 0.0)
    seconds = result["duration"]
    for power, energy in _POWER_OF.items():
        result[power] = result[energy] * _JOULES_PER_KWH / seconds if seconds > 0 else 0.0
    result["emissions_rate"] = result["emissions"] / seconds if seconds > 0 else 0.0
    return result


def describe_phases(energy_by_phase: dict[str, dict[str, float]],
                    unmeasured: dict[str, dict[str, float]] | None = None) -> str:
    """One line per measured phase: energy, CO2 and duration, and what CodeCarbon could not measure."""
    lines = []
    for phase, record in energy_by_phase.items():
        missing = (unmeasured or {}).get(phase, {})
        if record["duration"] == 0 and not missing.get("tasks"):
            continue   # a phase that never ran (evaluation in plain CO2 tracking mode)
        line = (f"  {phase:<10s} {record['energy_consumed']:.3e} kWh  {record['emissions']:.3e} kg CO2eq  "
                f"{record['duration']:8.1f} s  {describe_shares(record)}")
        if missing.get("tasks"):
            line += f"  (+{missing['seconds']:.1f} s in {missing['tasks']} task(s) CodeCarbon did not measure)"
        lines.append(line)
    return "\n".join(lines)


class EmissionsRecorder:
    """A CodeCarbon tracker writing ``csv_path``.

    Two ways of measuring, chosen when it is made:

    * continuous (default): the tracker starts now; ``flush()`` and ``stop()`` return the
      cumulative record and append it as a row to ``csv_path``.
    * ``per_task=True``: nothing is measured except between ``start_task(phase)`` and
      ``stop_task()`` (CodeCarbon's task API), which returns that task's own record; rows of
      ``csv_path`` are written by the caller through ``append_row``.

    Every record is CodeCarbon's with its modelled components (no counter) recomputed from the
    process's own CPU-seconds over the same interval, and the CPU-seconds of the process and of
    the rest of the machine added (:mod:`data.energy.process`); ``clock`` reads them.
    """

    def __init__(self, csv_path: Path | str, settings: TrackerSettings, project_name: str,
                 per_task: bool = False, clock: ProcessClock | None = None):
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
        self._clock = clock or ProcessClock()
        self._intensity = math.nan   # kg CO2eq per kWh, from CodeCarbon's records
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        common = dict(
            project_name=project_name, output_dir=str(self.csv_path.parent), output_file=self.csv_path.name,
            measure_power_secs=settings.measure_power_secs, tracking_mode=settings.tracking_mode,
            output_handlers=[] if per_task else [_Capture()], save_to_file=False,
            log_level="error", allow_multiple_runs=True,
        )
        if settings.cpu_power_watts is not None:
            common["force_cpu_power"] = settings.cpu_power_watts
        if settings.ram_power_watts is not None:
            common["force_ram_power"] = settings.ram_power_watts
        quiet_codecarbon()
        try:
            if settings.country_iso_code:
                self._tracker = OfflineEmissionsTracker(country_iso_code=settings.country_iso_code.upper(),
                                                        **common)
            else:
                self._tracker = EmissionsTracker(**common)
            self._provenance = hardware_provenance(self._tracker, settings)
            if not per_task:
                self._start = self._clock.snapshot()
                self._tracker.start()
        except Exception as exc:
            raise UserError(f"CodeCarbon could not start ({first_line(exc)})") from exc
        self._model = PowerModel(self._provenance["cpu_power_w"], self._provenance["ram_power_w"],
                                 self._provenance["cpus"], settings.ram_energy == "include")

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
            return {name: float("nan") for name in (*EMISSION_FIELDS, *PROCESS_FIELDS)}
        record = self._of_process(self._records[-1], Usage.between(self._start, self._clock.snapshot()))
        self.append_row(record)
        return record

    def _of_process(self, codecarbon: dict[str, float], usage: Usage) -> dict[str, float]:
        if codecarbon.get("energy_consumed", 0) > 0:
            self._intensity = codecarbon["emissions"] / codecarbon["energy_consumed"]
        return process_record(codecarbon, usage, self._model, self._intensity)

    # ---------------------------------------------------------------- per task
    def start_task(self, phase: str) -> None:
        self._tasks_started = True
        try:
            self._task_start = self._clock.snapshot()
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
        if is_usable(record):
            record = self._of_process(record, Usage.between(self._task_start, self._clock.snapshot()))
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
        return dict(self._provenance)


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
