"""Finding runs on disk and choosing among them: results files, ``--configs``, ``--seeds``,
``--where KEY=VALUE``, and the labels that tell the chosen configurations apart."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.names import config_name, parse_config_name
from data.paths import is_results_file, run_dir
from data.runs import READABLE_FORMAT_VERSIONS, RunConfig, parse_setting
from data.settings import BRANCH_SETTINGS, PRUNING, TRAINING, _seed, format_number, format_value
from utils import UserError, get_logger


@dataclass(frozen=True)
class RunRecord:
    """A finished run on disk: its results file and the settings it was made with."""

    path: Path
    config: RunConfig
    label: str = ""           # how figures name its configuration (see group_labels)

    @property
    def config_name(self) -> str:
        return self.label or self.config.config_name

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def co2(self) -> bool:
        return self.config.co2_tracking_mode


def read_run_settings(path: Path) -> RunConfig:
    """The settings a results file was made with (UserError when it is not one of ours).

    The file is memory-mapped, so only its small ``args`` entry is read from disk.
    """
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        text = str(exc).strip().splitlines()
        raise UserError(f"{path} is not a readable results file ({text[0] if text else type(exc).__name__})"
                        "; delete it and rerun the command that made it") from exc
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        raise UserError(f"{path} holds no run settings; was it written by lottery_ticket.py?")
    version = saved.get("format_version", 1)
    if version not in READABLE_FORMAT_VERSIONS:
        raise UserError(f"{path} has results format {version}, which this version cannot read "
                        "(it reads formats " + ", ".join(map(str, READABLE_FORMAT_VERSIONS))
                        + "); update the toolkit")
    return RunConfig.from_dict(saved["args"])


def find_runs(save_dir: Path | str, arch: str, dataset: str) -> list[RunRecord]:
    """Every readable finished run of ``arch`` on ``dataset`` (unreadable files: a warning each)."""
    folder = run_dir(save_dir, arch, dataset)
    if not folder.is_dir():
        return []
    log = get_logger()
    runs = []
    paths = [*folder.glob("*.pt"), *folder.glob("branches/*/*.pt")]   # runs, then branches
    for path in sorted(p for p in paths if is_results_file(p)):
        try:
            config = read_run_settings(path)
        except UserError as exc:
            log.warning("warning: %s; skipped", exc)
            continue
        if config.arch_type != arch or config.dataset != dataset:
            log.warning("warning: %s holds a %s run on %s, not %s on %s; skipped", path,
                        config.arch_type, config.dataset, arch, dataset)
            continue
        runs.append(RunRecord(path, config))
    return runs


# --------------------------------------------------------------------------- selecting runs
@dataclass(frozen=True)
class RunFilter:
    """Which runs a script uses: configuration names, seeds and ``--where KEY=VALUE`` conditions."""

    configs: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    where: tuple[tuple[str, Any], ...] = ()

    def matches(self, config: RunConfig) -> bool:
        if self.configs is not None and config.config_name not in self.configs:
            return False
        if self.seeds is not None and config.seed not in self.seeds:
            return False
        return all(_same(getattr(config, name), value) for name, value in self.where)

    def describe(self) -> str:
        parts = []
        if self.configs:
            parts.append("--configs " + " ".join(self.configs))
        if self.seeds is not None:
            parts.append("--seeds " + " ".join(map(str, self.seeds)))
        if self.where:
            parts.append("--where " + " ".join(f"{k}={format_value(v)}" for k, v in self.where))
        return " ".join(parts) or "no filter"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunFilter":
        return cls(configs=tuple(args.configs) if getattr(args, "configs", None) else None,
                   seeds=tuple(args.seeds) if getattr(args, "seeds", None) is not None else None,
                   where=tuple(getattr(args, "where", None) or ()))


def _same(actual: Any, wanted: Any) -> bool:
    if actual is None or wanted is None:
        return actual is wanted
    if isinstance(actual, float) or isinstance(wanted, float):
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=0.0)
    return actual == wanted


def where_argument(text: str) -> tuple[str, Any]:
    """argparse type of ``--where``: KEY=VALUE with KEY a setting and VALUE one of its values."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. lr=0.0012)")
    if key == "end_epoch":
        key = "end_iter"
    try:
        field_default = next((f.default for f in fields(RunConfig) if f.name == key), None)
        if isinstance(field_default, tuple):   # a list setting: VALUE is its items joined by +
            items = [item for item in value.strip().split("+") if item and item.lower() != "none"]
            return key, tuple(parse_setting(key, item) for item in items)
        return key, parse_setting(key, value.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--where {text}: {exc}") from None


def config_name_argument(text: str) -> str:
    """argparse type: a configuration name such as pp90x2, written as file names write it."""
    parsed = parse_config_name(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a configuration name; write "
                                         "ppPxN, e.g. pp90x2, pp68x3 or pp0x1")
    return config_name(*parsed)


def seed_argument(text: str) -> int:
    try:
        return _seed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cycle_argument(text: str) -> int:
    """argparse type of ``--cycle``: 0 (the dense network) or a later cycle."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0: cycles count from 0 (the dense network)")
    return value


def add_selection_arguments(parser: argparse.ArgumentParser, *, cycle: bool = True) -> None:
    """The flags every reading script selects runs with (documented once, in the README)."""
    group = parser.add_argument_group("selecting runs (the same in every script)")
    group.add_argument("--configs", nargs="+", type=config_name_argument, metavar="ppPxN",
                       help="only these configurations, e.g. pp90x2 pp0x1 (default: all found)")
    group.add_argument("--seeds", nargs="+", type=seed_argument, metavar="SEED",
                       help="only these seeds (default: all found)")
    group.add_argument("--where", nargs="+", type=where_argument, metavar="KEY=VALUE", default=(),
                       help="only runs whose setting KEY (any flag of lottery_ticket.py without "
                            "its dashes, e.g. lr, batch_size, end_iter) equals VALUE; several "
                            "conditions must all hold")
    if cycle:
        group.add_argument("--cycle", type=cycle_argument, default=None, metavar="K",
                           help="which cycle's ticket: 0 is the dense network, 1 the first pruned "
                                "one... (default: each run's last cycle)")


def select_runs(runs: Iterable[RunRecord], run_filter: RunFilter) -> list[RunRecord]:
    """The runs that pass the filter, each labelled by :func:`group_labels`."""
    chosen = [run for run in runs if run_filter.matches(run.config)]
    labels = group_labels([run.config for run in chosen])
    return [replace(run, label=labels[run.config.configuration_id]) for run in chosen]


def group_labels(configs: Sequence[RunConfig]) -> dict[str, str]:
    """A label per configuration (``configuration_id``) that tells apart every configuration given.

    The label is the configuration name (pp90x2); where two configurations share it, the
    settings in which any configurations differ are added in words ("pp90x2, lr 0.0012").
    Runs with one label are thus one configuration, and may be averaged over seeds.
    """
    by_id = {config.configuration_id: config for config in configs}
    by_name: dict[str, list[RunConfig]] = {}
    for config in by_id.values():
        by_name.setdefault(config.config_name, []).append(config)
    varying = [f for f in fields(RunConfig) if f.metadata["role"] in (TRAINING, PRUNING)
               and (f.metadata["token"] is not None or f.name in BRANCH_SETTINGS)
               and len({format_value(getattr(c, f.name)) for c in by_id.values()}) > 1]
    labels = {}
    for name, members in by_name.items():
        for config in members:
            shown = [f for f in varying if f.name != "ticket_source"] if len(members) > 1 else []
            if config.ticket_source:   # a transferred ticket is named as one, even alone in a figure
                shown += [f for f in fields(RunConfig) if f.name == "ticket_source"]
            if not shown:
                labels[config.configuration_id] = name
                continue
            words = [(f.metadata["words"] or (lambda v, _n=f.name: f"{_n} {format_value(v)}"))(
                getattr(config, f.name)) for f in shown]
            labels[config.configuration_id] = ", ".join([name, *filter(None, words)])
    return labels


def describe_groups(runs: Sequence[RunRecord]) -> str:
    """'pp0x1 seeds 0 1; pp90x2, lr 0.0012 seed 0' for messages about filters."""
    groups: dict[str, set[int]] = {}
    for run in runs:
        groups.setdefault(run.config_name, set()).add(run.seed)
    parts = []
    for name in sorted(groups):
        seeds = sorted(groups[name])
        parts.append(f"{name} seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}")
    return "; ".join(parts)


def flags_for_config(config: RunConfig) -> list[str]:
    """lottery_ticket.py's flags that make ``config``'s runs (defaults left out)."""
    if config.is_dense_baseline:
        words = ["--train_type", "regular"]
    else:
        words = ["--prune_percent", format_number(config.prune_percent),
                 "--prune_iterations", str(config.prune_iterations)]
    # Every setting, not only those in the name's suffix: the network, the dataset and the CO2
    # mode make other runs too. The seed is given with --seeds by the caller.
    for f in fields(config):
        name, value = f.name, getattr(config, f.name)
        if name in ("train_type", "prune_percent", "prune_iterations", "seed") or value == f.default:
            continue
        if isinstance(value, bool):   # a store_true flag
            words += [f"--{name}"] if value else []
            continue
        words += [f"--{name}", *([format_value(v) for v in value] if isinstance(value, tuple)
                                 else [format_value(value)])]
    return words
