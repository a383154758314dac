"""Reading what training and inference left on disk, and averaging it across seeds.

Every reader skips a file it cannot use with a warning naming the file and the reason, so
one interrupted or foreign file never hides the rest of an experiment.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from data.report.csv_tables import float_cell
from data.energy.emissions import EMISSION_FIELDS
from data.report.inference_tables import read_rows
from data.paths import inference_dir, inference_runs_csv_path
from data.runs import LOG_KEYS, RunConfig
from data.selection import RunFilter, RunRecord, find_runs, select_runs
from data.store import load_checkpoint
from utils import UserError, get_logger

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# What a training results file must hold for the figures (see archs.train.summary.run_results).
REQUIRED_TRAINING_KEYS = ("args", "cycles", "emissions", *LOG_KEYS)


# --------------------------------------------------------------------------- across seeds
@dataclass(frozen=True)
class SeedBand:
    """A curve averaged over ``n`` seeds: mean and sample standard deviation at each x."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int


def band_over_seeds(ys: Sequence[Mapping[K, float]],
                    xs: Sequence[Mapping[K, float]] | None = None) -> SeedBand:
    """Mean and standard deviation across seeds at every step that all seeds logged.

    Steps are the dictionaries' keys (images seen, or pass number). The x of a step is the
    key itself, or, when ``xs`` is given (one mapping per seed, e.g. elapsed seconds, which
    differ between seeds), the mean of the seeds' x at that step. The standard deviation is
    the sample one (ddof=1), NaN for a single seed.
    """
    if not ys:
        return SeedBand(np.array([]), np.array([]), np.array([]), 0)
    series = list(ys) + (list(xs) if xs is not None else [])
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[float(y[step]) for step in steps] for y in ys], dtype=float).reshape(len(ys), -1)
    if xs is None:
        x = np.array(steps, dtype=float)
    else:
        x = np.array([[float(s[step]) for step in steps] for s in xs], dtype=float).reshape(len(xs), -1)
        x = x.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(ys) > 1 else np.full(len(steps), math.nan)
    return SeedBand(x, values.mean(axis=0), std, len(ys))


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# --------------------------------------------------------------------------- training results
@dataclass(frozen=True)
class TrainingRun:
    """The parts of one training results file (one seed) that the figures use."""

    path: Path
    config: RunConfig
    logs: dict[str, dict[int, float]]
    emissions: dict[int, dict[str, float]]   # images seen -> cumulative CodeCarbon record
    cycles: list[dict]
    label: str = ""          # the configuration's name in figures (data.runs.group_labels)
    provenance: dict | None = None   # how its energy was measured (None: not tracked, or old file)
    branch_levels: tuple = ()        # what a branch computed per level (lmc: the error path)

    @property
    def config_name(self) -> str:
        """What figures group and name this run by: one label per configuration selected."""
        return self.label or self.config.config_name

    @property
    def final_emissions(self) -> dict[str, float]:
        """The cumulative record at the end of training (all cycles)."""
        return self.emissions[max(self.emissions)]


def training_run_from(path: Path, saved: dict, label: str = "") -> TrainingRun:
    missing = [key for key in REQUIRED_TRAINING_KEYS if key not in saved]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it was not written by this version "
                        "of lottery_ticket.py")
    return TrainingRun(path=path, config=RunConfig.from_dict(saved["args"]),
                       logs={key: saved[key] for key in LOG_KEYS},
                       emissions=saved["emissions"], cycles=list(saved["cycles"]), label=label,
                       provenance=saved.get("energy_provenance"),
                       branch_levels=tuple(saved.get("branch_levels") or ()))


def load_training_runs(save_dir: Path | str, arch: str, dataset: str,
                       run_filter: RunFilter = RunFilter(),
                       keep: Callable[[RunRecord], bool] = lambda run: True) -> list[TrainingRun]:
    """Every readable run of ``arch`` on ``dataset`` that passes ``run_filter`` and ``keep``,
    labelled so that runs of different configurations never share a label."""
    log = get_logger()
    runs = []
    for record in select_runs(find_runs(save_dir, arch, dataset), run_filter):
        if not keep(record):
            continue
        try:
            runs.append(training_run_from(record.path, load_checkpoint(record.path), record.label))
        except UserError as exc:
            log.warning("warning: %s; skipped", exc)
    return runs


# --------------------------------------------------------------------------- inference replay
@dataclass(frozen=True)
class InferenceRun:
    """One row of inference_runs.csv: a replayed ticket (configuration, seed, device, mode)."""

    config_name: str         # the figures' label of its configuration (see data.runs.group_labels)
    configuration: str       # RunConfig.configuration_id of the replayed run
    run: str                 # the replayed run's results file stem ("" in tables of old versions)
    cycle: int | None        # which cycle's ticket
    seed: int
    device: str
    mode: str
    state: str               # which weights were replayed (the original replayed the final ones)
    threads: int | None      # None in tables written before it was recorded
    batch_size: int | None   # likewise
    passes: int
    images_per_pass: int
    co2_kg_per_pass: float
    emissions_csv: Path
    seconds_per_pass: float = math.nan   # how long one measured pass lasted (NaN: not recorded)
    provenance: str = ""                 # how its energy was measured, in words ("": not recorded)
    sample_seconds: float = math.nan     # CodeCarbon's power sampling interval (NaN: not recorded)
    others_cpu_share: float = math.nan   # other processes' share of the machine meanwhile

    @property
    def conditions(self) -> tuple[str, int | None, int | None]:
        """What its time and energy depend on besides the ticket, its kernels and the device."""
        return self.state, self.threads, self.batch_size

    @property
    def co2_kg_per_inference(self) -> float:
        return self.co2_kg_per_pass / self.images_per_pass

    def inferences_after(self, passes: int) -> int:
        return passes * self.images_per_pass


def inference_run_from(parsed: dict, folder: Path) -> InferenceRun:
    """A row parsed by :func:`data.report.inference_tables.read_rows`; ValueError when it cannot be plotted."""
    for needed in ("passes", "images_per_pass"):
        if parsed[needed] is None or parsed[needed] <= 0:
            raise ValueError(f"no {needed}")
    if math.isnan(parsed["co2_kg_per_pass"]):
        raise ValueError("no co2_kg_per_pass")
    return InferenceRun(
        config_name=parsed["config"], configuration=parsed["configuration"], run=parsed["run"],
        cycle=parsed["cycle"], seed=parsed["seed"], device=parsed["device"], mode=parsed["mode"],
        state=parsed["state"], threads=parsed["threads"], batch_size=parsed["batch_size"],
        passes=parsed["passes"], images_per_pass=parsed["images_per_pass"],
        co2_kg_per_pass=parsed["co2_kg_per_pass"], emissions_csv=folder / parsed["emissions_csv"],
        seconds_per_pass=parsed.get("seconds_per_pass", math.nan),
        provenance=parsed.get("energy_provenance", ""),
        sample_seconds=parsed.get("sample_seconds", math.nan),
        others_cpu_share=parsed.get("others_cpu_share", math.nan))


def load_inference_runs(save_dir: Path | str, arch: str, dataset: str) -> list[InferenceRun]:
    """The rows of inference_runs.csv for ``arch`` on ``dataset`` ([] when there is no file)."""
    log = get_logger()
    path = inference_runs_csv_path(save_dir, arch, dataset)
    runs = []
    for row in read_rows(path):  # warns about, and leaves out, rows that cannot be parsed
        if row["arch"] != arch or row["dataset"] != dataset:
            continue
        try:
            runs.append(inference_run_from(row, inference_dir(save_dir, arch, dataset)))
        except ValueError as exc:
            log.warning("warning: skipping %s seed %s in %s (%s)", row["config"], row["seed"], path, exc)
    return runs


def read_codecarbon_csv(path: Path, max_rows: int | None = None) -> dict[int, dict[str, float]]:
    """CodeCarbon's rows as {row number from 1: {field: value}}, for the file's last tracker run.

    CodeCarbon appends to an existing file, so rows of earlier runs (another run_id) are
    dropped; a final row written by ``stop()`` after the last flush is cut by ``max_rows``.
    Raises ValueError when the file cannot be used.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from exc
    if not rows:
        raise ValueError("it has no rows")
    missing = [field for field in EMISSION_FIELDS if field not in rows[0]]
    if missing:
        raise ValueError(f"it lacks CodeCarbon's columns {', '.join(missing)}")
    last_run = rows[-1].get("run_id")
    rows = [row for row in rows if row.get("run_id") == last_run]
    if max_rows is not None:
        rows = rows[:max_rows]
    return {number: {field: float_cell(row[field]) for field in EMISSION_FIELDS}
            for number, row in enumerate(rows, start=1)}

