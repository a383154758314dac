"""The jobs' options, each declared once with :func:`data.settings.option`, torch-free.

The scripts generate their flags from these declarations (:func:`data.settings.add_field_arguments`)
without importing archs, so --help stays fast, and read them back with
:func:`data.settings.values_from_args`; the jobs of archs are these classes (the training job
derives from :class:`TrainingOptions`, the replay job is :class:`InferenceJob`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.energy.emissions import TrackerSettings
from data.report.inference_tables import DEFAULT_STATE, STATES
from data.paths import SAVE_DIR
from data.runs import RunConfig
from data.selection import RunFilter
from data.settings import CYCLE_WEIGHTS, REPLAY_MODES, _seed, option
from utils import positive_int

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainingOptions:
    """A ``lottery_ticket.py`` invocation's options besides the run's settings; the training
    job (``archs.experiment.TrainingJob``) adds the run's settings and its checks."""

    seeds: list[int] = option(DEFAULT_SEEDS, parse=_seed, nargs="+", metavar="SEED",
                              help="one full run per seed (initialisation, data split and batch order)")
    data_dir: Path = option(Path("data"), parse=Path, help="where torchvision downloads or finds the datasets")
    save_dir: Path = option(SAVE_DIR, parse=Path,
                            help="where results, checkpoints and CodeCarbon CSVs are written")
    device: str = option("auto", choices=DEVICES, help="auto uses CUDA when available")
    threads: int | None = option(None, parse=positive_int,
                                 help="CPU threads torch may use (pin it: energy per epoch depends on it; "
                                      "recorded in the results, not part of a run's identity)")
    resume: bool = option(False, help="skip seeds already finished and continue an interrupted seed "
                                      "from its last epoch checkpoint")
    cycle_weights: str = option(
        "both", flag="save_cycle_weights", choices=list(CYCLE_WEIGHTS),
        help="weights kept for every cycle's ticket beside its masks (tickets/STEM/cycleK.pt): both "
             "best and final, one of them, or none (the last cycle's are always in the results file)")
    print_freq: int = option(1, parse=positive_int,
                             help="update the progress bar's metrics every this many epochs")
    checkpoint_every: int = option(
        1, parse=positive_int, metavar="N",
        help="write the resume checkpoint every N epochs of a cycle (and at each cycle's end); larger "
             "N writes less but redoes up to N-1 epochs after an interruption. Results do not depend on it")
    compile_model: bool = option(
        False, flag="compile",
        help="torch.compile the forward pass (faster on GPUs after a warm-up; results equal up to "
             "rounding, so not part of a run's identity)")
    deterministic: bool = option(
        False, help="cuDNN's deterministic kernels and no autotuning: bit-reproducible GPU runs, at a "
                    "cost in speed (the CPU path is deterministic anyway)")
    show_progress: bool = option(True, flag="no_progress", help="hide the progress bars")
    tracker: TrackerSettings = field(default_factory=TrackerSettings)   # flags: add_tracker_arguments

    def __post_init__(self):
        self.seeds = list(self.seeds)


@dataclass(frozen=True)
class TrainingCommand:
    """What ``lottery_ticket.py`` does besides one training job."""

    study: Path | None = option(
        None, parse=Path, metavar="FILE",
        help='several configurations in one command: a JSON file such as {"configurations": '
             '[{"prune_percent": 90, "prune_iterations": 2}, {"train_type": "regular"}], '
             '"co2_tracking_mode": [false, true]}; its settings override the command line\'s (see '
             "the README)")


@dataclass
class InferenceJob:
    """A ``post_training_inference.py`` invocation: which tickets to replay, and how."""

    arch: str = option(RunConfig.arch_type, flag="arch_type", help="network of the runs")
    dataset: str = option(RunConfig.dataset, help="dataset of the runs (mnist, digits, cifar10...)")
    save_dir: Path = option(SAVE_DIR, parse=Path, help="where lottery_ticket.py saved them")
    data_dir: Path | None = option(None, parse=Path,
                                   help="dataset folder (default: the one each run was trained with)")
    run_filter: RunFilter = field(default_factory=RunFilter)   # flags: add_selection_arguments
    cycle: int | None = None              # which cycle's ticket; None: each run's last (flag: the same)
    state: str = option(DEFAULT_STATE, choices=list(STATES),
                        help="weights to replay: the end of the cycle, or its best validation state")
    mode: str = option(
        "auto", choices=REPLAY_MODES,
        help="kernels: dense (ordinary forward), sparse (the project's CSR kernel for the linear layers "
             "from the first pruned one on, its sparse convolution for pruned convolutions), auto "
             "(dense or sparse, whichever was timed faster on this machine; never kept unless 1.2x "
             "faster than dense), both (dense then sparse, for the speed-up). Denormal floats are "
             "always flushed to zero (see the README)")
    kernel_cache: Path | None = option(
        None, parse=Path, metavar="FILE",
        help="where auto keeps the kernel timings it measured on this machine (default: "
             "~/.cache/lottery_ticket/kernel_timings.json, or under $XDG_CACHE_HOME); delete it to "
             "time afresh")
    passes: int = option(10, parse=positive_int, help="passes over the test split")
    sweeps_per_pass: int = option(
        1, parse=positive_int,
        help="times each pass classifies the whole test split; raise it until a pass lasts several "
             "of CodeCarbon's power samples (the script says when)")
    batch_size: int = option(512, parse=positive_int, help="images per forward call")
    device: str = option("cpu", choices=DEVICES, help="where to run")
    threads: int | None = option(None, parse=positive_int,
                                 help="CPU threads torch may use (pin it: energy per image depends on it)")
    wait: bool = option(False, help="when another replay of these runs' folder is measuring on this "
                                    "device, wait for it to end (default: refuse, in one line)")
    show_progress: bool = option(True, flag="no_progress", help="hide the progress bar")
    tracker: TrackerSettings = field(default_factory=TrackerSettings)   # flags: add_tracker_arguments


@dataclass(frozen=True)
class ReplayCommand:
    """What ``post_training_inference.py`` does besides one replay job."""

    evaluate_only: bool = option(
        False, help="only print each selected ticket's fraction of pruned weights (per layer and "
                    "overall) and its test accuracy on the run's own test split; no timing, no "
                    "CodeCarbon, no tables written")
