"""A stand-in for post_training_inference.py's outputs, until that script exists.

:func:`write_inference_replay` writes, for each requested replay, a REAL CodeCarbon CSV (an
offline tracker flushed once per "pass" of some tiny torch work) and the matching row of
``inference_runs.csv``, in the fixed schema the plotting scripts read. When the real script
lands, replace the body of this one function with a call to it; the tests use nothing else.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

INFERENCE_RUNS_COLUMNS = (
    "arch", "dataset", "config", "prune_percent", "prune_iterations", "seed", "device", "mode",
    "state", "threads", "passes", "images_per_pass", "percent_remaining", "test_loss",
    "test_accuracy", "seconds_per_pass", "images_per_second", "energy_kwh_per_pass",
    "co2_kg_per_pass", "emissions_csv",
)


@dataclass(frozen=True)
class Replay:
    prune_percent: float
    prune_iterations: int
    seed: int
    mode: str = "dense"
    device: str = "cpu"
    work: int = 20          # matrix products per pass: fewer stands for a cheaper kernel


def busy_pass(work: int) -> None:
    import torch

    a = torch.randn(192, 192)
    for _ in range(work):
        a = a @ a
        a = a / a.norm()


def write_inference_replay(save_dir: Path, arch: str, dataset: str, replays: Sequence[Replay],
                           passes: int = 3, images_per_pass: int = 100) -> Path:
    """Run each replay under CodeCarbon and write inference_runs.csv; returns its path."""
    from codecarbon import OfflineEmissionsTracker

    from data.emissions import quiet_codecarbon
    from data.labels import weights_left_percent
    from data.runs import config_name, inference_csv_path, inference_runs_csv_path
    from data.results import read_codecarbon_csv

    quiet_codecarbon()
    several_modes = len({r.mode for r in replays}) > 1
    rows = []
    for replay in replays:
        csv_path = inference_csv_path(save_dir, arch, dataset, replay.device, replay.prune_percent,
                                      replay.prune_iterations, replay.seed,
                                      replay.mode if several_modes else None)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.unlink(missing_ok=True)
        tracker = OfflineEmissionsTracker(
            country_iso_code="FRA", output_dir=str(csv_path.parent), output_file=csv_path.name,
            measure_power_secs=1, log_level="error", allow_multiple_runs=True,
            project_name=csv_path.stem)
        tracker.start()
        for _ in range(passes):
            busy_pass(replay.work)
            tracker.flush()
        tracker.stop()  # the real script stops its tracker too: one more row after the passes
        last = read_codecarbon_csv(csv_path, max_rows=passes)[passes]
        seconds = last["duration"] / passes
        rows.append({
            "arch": arch, "dataset": dataset,
            "config": config_name(replay.prune_percent, replay.prune_iterations),
            "prune_percent": replay.prune_percent, "prune_iterations": replay.prune_iterations,
            "seed": replay.seed, "device": replay.device, "mode": replay.mode, "state": "final",
            "threads": 1, "passes": passes, "images_per_pass": images_per_pass,
            "percent_remaining": weights_left_percent(replay.prune_percent, replay.prune_iterations),
            "test_loss": 0.5, "test_accuracy": 90.0,   # placeholders: no model is evaluated here
            "seconds_per_pass": seconds, "images_per_second": images_per_pass / seconds,
            "energy_kwh_per_pass": last["energy_consumed"] / passes,
            "co2_kg_per_pass": last["emissions"] / passes,
            "emissions_csv": csv_path.name,
        })
    out = inference_runs_csv_path(save_dir, arch, dataset)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INFERENCE_RUNS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out
