"""A run's configuration and every file name the toolkit reads or writes.

Layout under ``--save_dir`` (default ``saves/``)::

    {arch}/{dataset}/pp{P}x{N}_seed{S}_co2{True|False}_{dataset}.pt          training results
    {arch}/{dataset}/pp{P}x{N}_seed{S}_co2{True|False}_{dataset}.csv         CodeCarbon rows
    {arch}/{dataset}/pp{P}x{N}_seed{S}_co2{True|False}_{dataset}.checkpoint.pt  (while running)
    {arch}/{dataset}/inference/{cpu|gpu}_inf_pp{P}x{N}_seed{S}_{mode}[_{state}].csv  inference replay

Runs with a learning rate or weight decay other than the defaults (the hyperparameter grid)
get ``_lr{lr}_decay{decay}`` appended to the stem so they never overwrite each other.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

DEFAULT_LR = 1e-4
DEFAULT_DECAY = 1e-5
RESULTS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (one seed)."""

    arch_type: str = "fc1"
    dataset: str = "mnist"
    prune_percent: float = 90.0
    prune_iterations: int = 2
    lr: float = DEFAULT_LR
    decay: float = DEFAULT_DECAY
    batch_size: int = 512
    end_iter: int = 32
    print_freq: int = 1
    valid_freq: int = 1
    train_type: str = "lt"
    co2_tracking_mode: bool = False
    seed: int = 0
    co2_evaluate: bool = False   # CO2 mode that also evaluates, measured apart from training

    def __post_init__(self):
        if self.train_type == "regular":
            # The dense baseline: one cycle, nothing pruned.
            object.__setattr__(self, "prune_percent", 0.0)
            object.__setattr__(self, "prune_iterations", 1)

    @property
    def config_name(self) -> str:
        return config_name(self.prune_percent, self.prune_iterations)

    @property
    def stem(self) -> str:
        return run_stem(self.prune_percent, self.prune_iterations, self.seed,
                        self.co2_tracking_mode, self.dataset, self.lr, self.decay)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def training_settings(self) -> dict:
        """The settings that change results (used to refuse resuming a different run)."""
        values = self.as_dict()
        for cosmetic in ("print_freq",):
            values.pop(cosmetic)
        return values


def format_number(value: float) -> str:
    """90.0 -> '90', 68.5 -> '68.5', 1e-4 -> '0.0001'."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def config_name(prune_percent: float, prune_iterations: int) -> str:
    return f"pp{format_number(prune_percent)}x{prune_iterations}"


CONFIG_NAME = re.compile(r"^pp(?P<prune_percent>\d+(?:\.\d+)?)x(?P<prune_iterations>\d+)$")


def parse_config_name(name: str) -> tuple[float, int] | None:
    """'pp68x3' -> (68.0, 3); None for anything that is not a configuration name."""
    match = CONFIG_NAME.match(name)
    if not match:
        return None
    return float(match["prune_percent"]), int(match["prune_iterations"])


def run_stem(prune_percent: float, prune_iterations: int, seed: int, co2: bool, dataset: str,
             lr: float = DEFAULT_LR, decay: float = DEFAULT_DECAY) -> str:
    stem = f"{config_name(prune_percent, prune_iterations)}_seed{seed}_co2{bool(co2)}_{dataset}"
    if float(lr) != DEFAULT_LR or float(decay) != DEFAULT_DECAY:
        stem += f"_lr{format_number(lr)}_decay{format_number(decay)}"
    return stem


RUN_FILE = re.compile(
    r"^pp(?P<prune_percent>\d+(?:\.\d+)?)x(?P<prune_iterations>\d+)_seed(?P<seed>\d+)"
    r"_co2(?P<co2>True|False)_(?P<dataset>[a-z0-9]+)"
    r"(?:_lr(?P<lr>[^_]+)_decay(?P<decay>[^_]+))?\.pt$")


@dataclass(frozen=True)
class RunFileInfo:
    path: Path
    prune_percent: float
    prune_iterations: int
    seed: int
    co2: bool
    dataset: str
    lr: float
    decay: float

    @property
    def config_name(self) -> str:
        return config_name(self.prune_percent, self.prune_iterations)


def parse_run_file(path: Path | str) -> RunFileInfo | None:
    """What a results file's name says about it, or None for any other file."""
    path = Path(path)
    match = RUN_FILE.match(path.name)
    if not match:
        return None
    return RunFileInfo(path=path, prune_percent=float(match["prune_percent"]),
                       prune_iterations=int(match["prune_iterations"]), seed=int(match["seed"]),
                       co2=match["co2"] == "True", dataset=match["dataset"],
                       lr=float(match["lr"]) if match["lr"] else DEFAULT_LR,
                       decay=float(match["decay"]) if match["decay"] else DEFAULT_DECAY)


def run_dir(save_dir: Path | str, arch: str, dataset: str) -> Path:
    return Path(save_dir) / arch / dataset


def results_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.pt"


def checkpoint_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.checkpoint.pt"


def emissions_csv_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.csv"


def partial_csv_path(final_csv: Path) -> Path:
    """Where CodeCarbon writes while a run or replay goes on; renamed to ``final_csv`` when done."""
    return final_csv.with_name(final_csv.stem + ".partial.csv")


def find_run_files(save_dir: Path | str, arch: str, dataset: str) -> list[RunFileInfo]:
    """Every training results file for ``arch`` on ``dataset``, sorted by name."""
    folder = run_dir(save_dir, arch, dataset)
    if not folder.is_dir():
        return []
    found = (parse_run_file(p) for p in sorted(folder.glob("*.pt")))
    return [info for info in found if info is not None and info.dataset == dataset]


def inference_dir(save_dir: Path | str, arch: str, dataset: str) -> Path:
    return run_dir(save_dir, arch, dataset) / "inference"


def inference_csv_path(save_dir: Path | str, arch: str, dataset: str, device_kind: str,
                       prune_percent: float, prune_iterations: int, seed: int, mode: str,
                       state: str = "final") -> Path:
    """``{cpu|gpu}_inf_pp{P}x{N}_seed{S}_{mode}[_{state}].csv``: the original's name plus the kernel
    mode, and the weight state unless it is the final one (the only one the original replayed),
    so that no two replays of one ticket overwrite each other."""
    name = f"{device_kind}_inf_{config_name(prune_percent, prune_iterations)}_seed{seed}_{mode}"
    if state != "final":
        name += f"_{state}"
    return inference_dir(save_dir, arch, dataset) / f"{name}.csv"


def inference_runs_csv_path(save_dir: Path | str, arch: str, dataset: str) -> Path:
    """One row per replayed run (configuration, seed, device, kernel mode, weights, threads, batch
    size): see the README's schema."""
    return inference_dir(save_dir, arch, dataset) / "inference_runs.csv"


def inference_summary_csv_path(save_dir: Path | str, arch: str, dataset: str) -> Path:
    """Mean and standard deviation over seeds of inference_runs.csv, per configuration, mode and
    measuring conditions."""
    return inference_dir(save_dir, arch, dataset) / "inference_summary.csv"
