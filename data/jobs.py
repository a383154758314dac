"""Job options declared once, torch-free: the scripts' parsers take their defaults from here
without importing archs (so --help stays fast), and the jobs of archs use the same values.

:class:`InferenceJob` is the whole replay job (``post_training_inference.py``);
:class:`TrainingDefaults` holds the defaults of ``archs.experiment.TrainingJob``, whose
checks need the registries (torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.energy.emissions import TrackerSettings
from data.report.inference_tables import DEFAULT_STATE
from data.paths import SAVE_DIR
from data.runs import RunConfig
from data.selection import RunFilter

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class TrainingDefaults:
    """Defaults of a ``lottery_ticket.py`` invocation besides the run's settings."""

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    data_dir: Path = Path("data")
    save_dir: Path = SAVE_DIR
    device: str = "auto"
    cycle_weights: str = "both"     # see data.settings.CYCLE_WEIGHTS
    print_freq: int = 1
    checkpoint_every: int = 1


@dataclass
class InferenceJob:
    """A ``post_training_inference.py`` invocation: which tickets to replay, and how."""

    arch: str = RunConfig.arch_type
    dataset: str = RunConfig.dataset
    save_dir: Path = SAVE_DIR
    data_dir: Path | None = None          # None: the folder each run was trained with
    run_filter: RunFilter = field(default_factory=RunFilter)
    cycle: int | None = None              # which cycle's ticket; None: each run's last
    state: str = DEFAULT_STATE
    passes: int = 10
    sweeps_per_pass: int = 1              # times each pass classifies the whole test split
    device: str = "cpu"
    batch_size: int = 512
    threads: int | None = None
    mode: str = "auto"
    kernel_cache: Path | None = None      # auto's timings (None: the user's cache folder)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    show_progress: bool = True
    wait: bool = False                    # wait for another replay of the same folder to end
