"""The inference replay's tables: ``inference_runs.csv`` (one row per replay) and its summary.

Rows name the run they replayed (``run``: its results file's stem) and its configuration
(``configuration``: the stem without seed and CO2 mode), so that every reader selects replays
exactly as it selects training runs (:mod:`data.runs`). Tables written by earlier versions lack
some columns; they are read with the defaults those versions used (final weights, last cycle,
default settings). Writers merge their rows into the table under a lock, so two replays at once
(CPU and GPU, say) lose no row.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from data.report.csv_tables import csv_text
from utils import FileLock, UserError, atomic_write_text, get_logger

STATES = {"final": "final_state_dict", "best": "best_state_dict"}
DEFAULT_STATE = "final"   # the weights the original replayed; tables older than --state hold these

# inference_runs.csv: one row per replay. Units in the names; see the README.
RUN_COLUMNS = ("arch", "dataset", "config", "configuration", "run", "cycle", "prune_percent",
               "prune_iterations", "seed", "device", "mode", "state", "threads", "batch_size", "passes",
               "images_per_pass", "percent_remaining", "test_loss", "test_accuracy", "seconds_per_pass",
               "seconds_per_pass_std", "images_per_second", "energy_kwh_per_pass", "co2_kg_per_pass",
               "emissions_csv", "energy_provenance", "sample_seconds", "cpu_seconds_per_pass",
               "others_cpu_share")
# A later replay replaces the row with the same values of these; any other difference (other
# weights, cycle, threads or batch size) is another measurement and gets its own row.
ROW_KEY = ("run", "device", "mode", "state", "cycle", "threads", "batch_size")
# What a time or an energy depends on besides the ticket and its kernels: rows are only
# averaged or compared (speed-up) under the same values.
CONDITIONS = ("device", "state", "cycle", "threads", "batch_size")
SUMMARY_METRICS = ("percent_remaining", "test_accuracy", "seconds_per_pass", "images_per_second",
                   "energy_kwh_per_pass", "co2_kg_per_pass", "speedup_vs_dense")
SUMMARY_GROUP = ("arch", "dataset", "configuration", "config", "mode") + CONDITIONS
SUMMARY_COLUMNS = SUMMARY_GROUP + ("seeds",) + tuple(f"{metric}_{stat}" for metric in SUMMARY_METRICS
                                                      for stat in ("mean", "std"))

# How the cells of inference_runs.csv are read back (any other column is a number).
TEXT_COLUMNS = ("arch", "dataset", "config", "configuration", "run", "device", "mode", "state",
                "emissions_csv", "energy_provenance")
WHOLE_NUMBER_COLUMNS = ("cycle", "prune_iterations", "seed", "threads", "batch_size", "passes",
                        "images_per_pass")
REQUIRED_COLUMNS = ("arch", "dataset", "config", "seed", "device", "mode")


def parse_run_row(row: dict) -> dict:
    """A row of inference_runs.csv; raises ValueError when it cannot be read.

    Tables written by earlier versions lack columns: a missing state is the final one, a
    missing cycle the configuration's last, a missing run or configuration is the run made
    with default settings, a missing number None (whole numbers) or NaN.
    """
    missing = [column for column in REQUIRED_COLUMNS if not (row.get(column) or "").strip()]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    parsed = {}
    for column in RUN_COLUMNS:
        text = (row.get(column) or "").strip()
        if column in TEXT_COLUMNS:
            parsed[column] = text
        elif column in WHOLE_NUMBER_COLUMNS:
            parsed[column] = int(text) if text else None
        else:
            parsed[column] = float(text) if text else math.nan
    parsed["state"] = parsed["state"] or DEFAULT_STATE
    if not parsed["configuration"]:
        parsed["configuration"] = f"{parsed['config']}_{parsed['dataset']}"
    if parsed["cycle"] is None:
        from data.names import parse_config_name

        named = parse_config_name(parsed["config"])
        parsed["cycle"] = named[1] - 1 if named else None
    return parsed


def read_rows(path: Path) -> list[dict]:
    """The rows of an existing inference_runs.csv; a row that cannot be read is left out, with a
    warning. A file that is not a readable CSV at all raises UserError naming it."""
    if not path.exists():
        return []
    log = get_logger()
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read as a CSV table ({type(exc).__name__}); move it "
                        "away and replay the tickets again to rebuild it") from exc
    if "\0" in text:
        raise UserError(f"{path} is a binary file, not a CSV table; move it away and replay the "
                        "tickets again to rebuild it")
    if not text.strip():
        return []
    rebuild = "move it away (or restore it) and replay the tickets again to rebuild it"
    if not text.endswith("\n"):   # every table written here ends its last row with a newline
        raise UserError(f"{path} does not end with a whole row: the table is damaged (cut short?); "
                        f"{rebuild}")
    reader = csv.DictReader(text.splitlines())
    try:
        header = reader.fieldnames or []
        lacking = [column for column in REQUIRED_COLUMNS if column not in header]
        if lacking:
            raise UserError(f"{path} is not an inference table (its first line lacks the columns "
                            f"{', '.join(lacking)}); {rebuild}")
        for line, row in enumerate(reader, start=2):
            if None in row or None in row.values():   # more or fewer cells than the header
                cells = len(header) + len(row.get(None) or ()) - sum(v is None for v in row.values())
                raise UserError(f"line {line} of {path} has {cells} cells where its header has "
                                f"{len(header)}: the table is damaged (cut short?); {rebuild}")
            try:
                rows.append(parse_run_row(row))
            except ValueError as exc:
                log.warning("warning: line %d of %s cannot be read (%s); it is left out of the "
                            "rewritten table", line, path, exc)
    except csv.Error as exc:
        raise UserError(f"{path} is not a readable CSV table ({exc}); move it away and replay the "
                        "tickets again to rebuild it") from exc
    return rows


def _sortable(value) -> tuple:
    """Tables of earlier versions have None where newer ones have a number: those sort first."""
    return (value is not None, value if value is not None else 0)


def row_key(row: dict) -> tuple:
    # Rows of old tables have no run: their configuration and seed stand for it.
    run = row["run"] or f"{row['configuration']}#seed{row['seed']}"
    return (run,) + tuple(row[k] for k in ROW_KEY[1:])


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Earlier rows updated by this invocation's (same :data:`ROW_KEY`)."""
    merged = {row_key(row): row for row in old}
    merged.update({row_key(row): row for row in new})
    order = ("configuration", "cycle", "device", "mode", "state", "threads", "batch_size", "seed")
    return sorted(merged.values(), key=lambda r: tuple(_sortable(r[k]) for k in order))


def merge_into_tables(runs_csv: Path, summary_csv: Path, new_rows: list[dict]) -> list[dict]:
    """Merge ``new_rows`` into ``runs_csv`` and rewrite ``summary_csv``, under one lock, so that
    concurrent replays into one folder keep every row. Returns the summary rows."""
    with FileLock(runs_csv):
        all_rows = merge_rows(read_rows(runs_csv), new_rows)
        atomic_write_text(runs_csv, csv_text(RUN_COLUMNS, all_rows))
        summary = summarise(all_rows)
        atomic_write_text(summary_csv, csv_text(SUMMARY_COLUMNS, summary))
    return summary


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per configuration, mode and :data:`CONDITIONS`.

    The speed-up of a mode is dense seconds per pass over its own, seed by seed (same ticket),
    both measured under the same conditions. An empty cell (NaN) is left out of its metric.
    """
    from data.analysis.statistics import Estimate   # numpy: not needed by the scripts' parsers

    def conditions(row: dict) -> tuple:
        return tuple(row[c] for c in CONDITIONS)

    dense_seconds = {(r["configuration"], r["seed"], conditions(r)): r["seconds_per_pass"]
                     for r in rows if r["mode"] == "dense"}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in SUMMARY_GROUP), []).append(row)
    summary = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(map(_sortable, item[0]))):
        out = dict(zip(SUMMARY_GROUP, key)) | {"seeds": len(members)}
        for metric in SUMMARY_METRICS:
            if metric == "speedup_vs_dense":
                values = [dense_seconds.get((r["configuration"], r["seed"], conditions(r)), math.nan)
                          / r["seconds_per_pass"] for r in members if r["seconds_per_pass"] > 0]
            else:
                values = [r[metric] for r in members]
            estimate = Estimate.from_samples(v for v in values if not math.isnan(v))
            out[f"{metric}_mean"], out[f"{metric}_std"] = estimate.mean, estimate.std
        summary.append(out)
    return summary


def summary_table(summary: list[dict]) -> tuple[list[str], list[tuple]]:
    def pm(row, metric, fmt):
        mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
        if math.isnan(mean):
            return "-"
        return f"{mean:{fmt}}" + ("" if math.isnan(std) else f" ± {std:{fmt}}")

    def known(value):
        return "-" if value is None else value

    headers = ["configuration", "cycle", "device", "mode", "state", "threads", "batch", "seeds",
               "% weights left",
               "test acc %", "s / pass", "images / s", "kWh / pass", "kg CO2 / pass", "speed-up vs dense"]
    rows = [(r["configuration"], known(r["cycle"]), r["device"], r["mode"], r["state"], known(r["threads"]),
             known(r["batch_size"]),
             r["seeds"], pm(r, "percent_remaining", ".2f"), pm(r, "test_accuracy", ".2f"),
             pm(r, "seconds_per_pass", ".4f"), pm(r, "images_per_second", ".0f"),
             pm(r, "energy_kwh_per_pass", ".2e"), pm(r, "co2_kg_per_pass", ".2e"),
             pm(r, "speedup_vs_dense", ".2f")) for r in summary]
    return headers, rows
