"""CodeCarbon trackers and the emission records the toolkit keeps.

CodeCarbon writes its own CSV, one row each time it is flushed or stopped. Each one is also
captured through a custom output handler as a plain dict of :data:`EMISSION_FIELDS`, so the
training logs can key every record by the exact number of images seen at that moment.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
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
# Fields that add up across tracker sessions (a resumed run starts a new tracker).
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


def add_offset(record: dict[str, float], offset: dict[str, float] | None) -> dict[str, float]:
    """Continue cumulative fields from an earlier tracker session (used after --resume)."""
    if not offset:
        return dict(record)
    total = dict(record)
    for name in CUMULATIVE_FIELDS:
        total[name] = record.get(name, 0.0) + offset.get(name, 0.0)
    total["emissions_rate"] = total["emissions"] / total["duration"] if total["duration"] > 0 else 0.0
    return total


class EmissionsRecorder:
    """A started CodeCarbon tracker writing ``csv_path``; ``flush()`` returns the cumulative record."""

    def __init__(self, csv_path: Path | str, settings: TrackerSettings, project_name: str):
        from codecarbon import EmissionsTracker, OfflineEmissionsTracker
        from codecarbon.output_methods.base_output import BaseOutput

        records = self._records = []

        class _Capture(BaseOutput):
            def out(self, total, delta):
                records.append(_record_from(total))

        csv_path = Path(csv_path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        common = dict(
            project_name=project_name, output_dir=str(csv_path.parent), output_file=csv_path.name,
            measure_power_secs=settings.measure_power_secs, tracking_mode=settings.tracking_mode,
            output_handlers=[_Capture()], log_level="error", allow_multiple_runs=True,
        )
        quiet_codecarbon()
        try:
            if settings.country_iso_code:
                self._tracker = OfflineEmissionsTracker(country_iso_code=settings.country_iso_code.upper(),
                                                        **common)
            else:
                self._tracker = EmissionsTracker(**common)
            self._tracker.start()
        except Exception as exc:
            raise UserError(f"CodeCarbon could not start ({first_line(exc)})") from exc

    def flush(self) -> dict[str, float]:
        before = len(self._records)
        self._tracker.flush()
        return self._latest(before)

    def stop(self) -> dict[str, float]:
        before = len(self._records)
        self._tracker.stop()
        return self._latest(before)

    def _latest(self, before: int) -> dict[str, float]:
        if len(self._records) == before:  # CodeCarbon swallows its own errors; say so, go on
            logging.getLogger("lottery").warning("CodeCarbon returned no measurement at this point")
            return {name: float("nan") for name in EMISSION_FIELDS}
        return self._records[-1]


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
    import csv
    import io

    from utils import atomic_write_text

    if not csv_path.exists():
        return
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    if len(table) <= rows + 1:
        return
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table[:rows + 1])
    atomic_write_text(csv_path, buffer.getvalue())
