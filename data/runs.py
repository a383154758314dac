"""What a run is: its settings, its identity, its files, and how runs are found and selected.

A *run* is one seed of one training configuration. Every setting that can change its results
is a field of :class:`RunConfig`, declared once with :func:`setting`; from that one declaration
a setting becomes

* a flag of ``lottery_ticket.py`` (:func:`add_setting_arguments`),
* part of the run's identity and of its file name (:attr:`RunConfig.stem`),
* a key of the ``--where KEY=VALUE`` filter that every script selects runs with
  (:class:`RunFilter`),
* words in figure labels when runs that differ in it are drawn together (:func:`group_labels`).

File names. A run made with every default setting keeps the original program's name,
``pp{P}x{N}_seed{S}_co2{True|False}_{dataset}``; any other run appends one ``_{token}{value}``
per setting that differs from its default, in declaration order (``_lr0.0012_bs64``). When
that list would be long, or a value holds characters unfit for a file name, the readable part
is cut and a digest of the full settings follows (``_h1a2b3c4d``), so names stay short and two
runs that differ in any setting never share a path. Names are for people: readers take a
run's settings from its results file (``args``), never from its name.

Layout under ``--save_dir`` (default ``saves/``)::

    {arch}/{dataset}/{stem}.pt                       results of a finished run
    {arch}/{dataset}/{stem}.csv                      CodeCarbon rows (CO2-tracking runs)
    {arch}/{dataset}/{stem}.checkpoint.pt            while it trains
    {arch}/{dataset}/{stem}.lock                     while a process trains it (PID and host)
    {arch}/{dataset}/tickets/{stem}/cycle{K}.pt      every cycle's masks and weights
    {arch}/{dataset}/inference/...                   the inference replay (see data.inference_tables)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from data.sources import REFERENCE, file_reference, parse_reference, reference_stem
from utils import UserError, get_logger

RESULTS_FORMAT_VERSION = 2
# Version 1 (before every cycle's ticket was kept) is still read: its settings were a subset
# of today's, and a missing setting had today's default value.
READABLE_FORMAT_VERSIONS = (1, 2)

# The original program's training logs: dicts keyed by the number of training images seen.
LOG_KEYS = ("time", "non_zeros_weights", "co2", "train_loss", "train_accuracy",
            "val_loss", "val_accuracy", "test_loss", "test_accuracy")

MAX_SEED = 2 ** 32 - 1          # numpy.random.seed's range
MAX_READABLE_SUFFIX = 48        # characters of "_lr0.0012_bs64..." before a digest replaces the rest
NAME_SAFE = re.compile(r"^[A-Za-z0-9.+-]*$")

# Roles of a setting: what it means to compare two runs that differ in it.
TRAINING = "training"        # changes what is trained: runs differing in it are other configurations
PRUNING = "pruning"          # how the ticket is found: a dense baseline has no say in it
MEASUREMENT = "measurement"  # how the run was measured (CO2 tracking): same configuration
SEED = "seed"                # the repetition: averaged over


# --------------------------------------------------------------------------- values
def format_number(value: float) -> str:
    """90.0 -> '90', 68.5 -> '68.5', 1e-5 -> '1e-05': the shortest text that reads back exactly."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, (tuple, list)):
        return "+".join(format_value(v) for v in value) or "none"
    return str(value)


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def parse_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


# --------------------------------------------------------------------------- declaring settings
def setting(default: Any, *, help: str, token: str | None, role: str = TRAINING,
            flags: Sequence[str] = (), choices: Sequence[str] | None = None,
            parse: Callable[[str], Any] | None = None, words: Callable[[Any], str] | None = None,
            metavar: str | None = None, nargs: str | None = None) -> Any:
    """Declare one field of :class:`RunConfig`.

    ``token`` prefixes the value in file names (None: the setting is in the name's fixed head);
    ``flags`` are extra spellings of the command-line flag (the first flag is ``--{field}``);
    ``parse`` turns command-line text (and ``--where`` values) into a value; ``words`` says the
    value in a figure label ("lr 0.0012").
    """
    metadata = {"help": help, "token": token, "role": role, "flags": tuple(flags),
                "choices": tuple(choices) if choices else None, "parse": parse, "words": words,
                "metavar": metavar, "nargs": nargs}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _percent(text: str) -> float:
    value = parse_number(text)
    if not 0 <= value < 100:
        raise ValueError(f"{text} is outside [0, 100): give the percent of surviving weights to "
                         "prune each cycle, e.g. 90")
    return value


def _positive_int(text: str) -> int:
    value = parse_whole(text)
    if value < 1:
        raise ValueError(f"{text} must be at least 1")
    return value


def _positive_number(text: str) -> float:
    value = parse_number(text)
    if not value > 0:
        raise ValueError(f"{text} must be greater than 0")
    return value


def _non_negative_number(text: str) -> float:
    value = parse_number(text)
    if not value >= 0:
        raise ValueError(f"{text} must be 0 or more")
    return value


def _optional_percent(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none") else _percent(text)


def _target_sparsity(text: str) -> float | None:
    if text.strip().lower() in ("", "none"):
        return None
    value = parse_number(text)
    if not 0 < value < 100:
        raise ValueError(f"{text} is outside (0, 100): give the percent of weights removed after the "
                         "last cycle, e.g. 96.4")
    return value


DURATION = re.compile(r"^(?P<count>[1-9]\d*)(?P<unit>ep|it)$")


def _rewind_point(text: str) -> str:
    text = text.strip().lower()
    if text != "init" and not DURATION.match(text):
        raise ValueError(f"{text!r} is not init, <N>ep (after N epochs of the dense cycle, e.g. 2ep) "
                         "or <N>it (after N iterations, e.g. 500it)")
    return text


def _warmup(text: str) -> str:
    text = text.strip().lower()
    if text not in ("none", "0") and not DURATION.match(text):
        raise ValueError(f"{text!r} is not none, <N>ep (N epochs, e.g. 2ep) or <N>it (N iterations)")
    return "none" if text == "0" else text


def _momentum(text: str) -> float:
    value = parse_number(text)
    if not 0 <= value < 1:
        raise ValueError(f"{text} is outside [0, 1)")
    return value


def _layer_names(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.]+$", text):
        raise ValueError(f"{text!r} is not a layer name (e.g. 5 or fc.2 or layer1.0.conv1)")
    return text.removesuffix(".weight")


def _duration_words(value: str) -> str:
    match = DURATION.match(value)
    if not match:
        return value
    count = int(match["count"])
    return f"{count} {'epoch' if match['unit'] == 'ep' else 'iteration'}{'s' if count != 1 else ''}"


def _ticket_source(text: str) -> str:
    """A source run's results file, optionally ``:CYCLE`` (default: its last cycle), as the
    reference ``stem@digest:cK`` (see data.sources); a reference is taken as it is."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return ""
    if REFERENCE.match(text):
        if parse_reference(text)[2] is None:
            raise ValueError(f"{text!r} names no cycle: append :cK (K = the source cycle)")
        return text
    path_text, cycle = text, None
    split = re.match(r"^(?P<path>.+):(?P<cycle>\d+)$", text)
    if split and not Path(text).is_file():
        path_text, cycle = split["path"], int(split["cycle"])
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"{path_text} is not a file: give the results file (.pt) of the run whose "
                         "ticket to train, optionally followed by :CYCLE")
    try:
        source = read_run_settings(path)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    last = source.prune_iterations - 1
    cycle = last if cycle is None else cycle
    if cycle > last:
        raise ValueError(f"{path.name} has cycles 0 to {last}; :{cycle} is not one of them")
    return file_reference(path, cycle)


def _init_from(text: str) -> str:
    """A pretrained state file (a state dict, or a results file: its best weights) as the
    reference ``stem@digest``."""
    text = text.strip()
    if text.lower() in ("", "none", "init"):
        return ""
    if REFERENCE.match(text):
        return text
    try:
        return file_reference(text)
    except ValueError as exc:
        raise ValueError(f"{exc}: give a state-dict file (torch.save(model.state_dict(), ...)) or "
                         "a results file of lottery_ticket.py") from None


TRANSFER_WORDS = "ticket from"   # how labels start to name a transferred ticket (data.labels reads it)


def _source_words(value: str) -> str:
    _, _, cycle = parse_reference(value)
    return f"{TRANSFER_WORDS} {reference_stem(value)} cycle {cycle}"


def _seed(text: str) -> int:
    value = parse_whole(text)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{text} is outside 0..{MAX_SEED} (NumPy's seed range)")
    return value


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (one seed). Add a setting here, and only here."""

    arch_type: str = setting("fc1", token=None,
                             help="network (lenet300_100 is another name for fc1; the README shows each "
                                  "layout); add your own with @register_model in a file under archs/models/")
    dataset: str = setting("mnist", token=None,
                           help="dataset; the official train and test sets are merged and split "
                                "70/15/15 into train/validation/test with the run's seed")
    prune_percent: float = setting(90.0, token=None, parse=_percent, role=PRUNING,
                                   help="percent of the surviving weights of each layer pruned before "
                                        "each cycle after the first, in [0, 100)")
    prune_iterations: int = setting(2, token=None, parse=_positive_int, role=PRUNING,
                                    help="number of training cycles; 1 = no pruning, N = N-1 pruning "
                                         "rounds")
    # No token: "regular" is exactly the pp0x1 head (an lt run needs 2 or more cycles).
    train_type: str = setting("lt", token=None, choices=("lt", "regular"), role=PRUNING,
                              help="lt: lottery ticket; regular: dense baseline (forces "
                                   "--prune_percent 0 --prune_iterations 1)")
    lr: float = setting(1e-4, token="lr", parse=_positive_number, words=lambda v: f"lr {format_number(v)}",
                        help="learning rate (of Adam, or SGD)")
    decay: float = setting(1e-5, token="decay", parse=_non_negative_number,
                           words=lambda v: f"weight decay {format_number(v)}",
                           help="weight decay (L2 penalty)")
    batch_size: int = setting(512, token="bs", parse=_positive_int, words=lambda v: f"batch {v}",
                              help="training mini-batch size")
    end_iter: int = setting(32, token="ep", parse=_positive_int, flags=("--end_epoch",),
                            words=lambda v: f"{v} epochs per cycle", help="epochs of training in each cycle")
    valid_freq: int = setting(1, token="vf", parse=_positive_int,
                              words=lambda v: f"evaluated every {v} epochs",
                              help="evaluate validation and test sets (or, with --co2_tracking_mode, "
                                   "record the CO2 tracker) every this many epochs, and at each "
                                   "cycle's end")
    test_split: str = setting("merged", token="split", choices=("merged", "official"),
                              words=lambda v: f"{v} test split",
                              help="merged: the official train and test sets are merged and split "
                                   "70/15/15 with the seed (the original's way); official: the "
                                   "official test set is the test split and the official training "
                                   "set is split 70:15 into train and validation (results comparable "
                                   "with papers)")
    # ---- how a ticket is found (the experiment space; a dense baseline has none of these)
    prune_type: str = setting("lt", token="pt", role=PRUNING, choices=("lt", "reinit", "random"),
                              words=lambda v: {"lt": "winning ticket", "reinit": "random reinit",
                                               "random": "random mask"}[v],
                              help="lt: magnitude masks, survivors rewound (the winning ticket); "
                                   "reinit: the same masks, survivors re-drawn from the initial "
                                   "distribution (control); random: random masks with the same "
                                   "per-layer counts, rewound (control)")
    rewind_to: str = setting("init", token="rw", role=PRUNING, parse=_rewind_point, metavar="POINT",
                             words=lambda v: "rewound to init" if v == "init"
                             else f"rewound to {_duration_words(v)}",
                             help="where survivors are rewound: init, Nep (after N epochs of the "
                                  "dense cycle) or Nit (after N iterations): late rewinding")
    prune_scope: str = setting("layer", token="scope", role=PRUNING, choices=("layer", "global"),
                               words=lambda v: f"{v} pruning",
                               help="layer: each layer loses PRUNE_PERCENT of its survivors (the "
                                    "original); global: all prunable weights ranked together")
    output_prune_percent: float | None = setting(
        None, token="opp", role=PRUNING, parse=_optional_percent, metavar="P",
        words=lambda v: f"output layer {format_number(v)}% per round",
        help="per-round rate of the output layer (default: PRUNE_PERCENT; Frankle & Carbin prune "
             "LeNet-300-100's at half the rate)")
    prune_ignore: tuple = setting((), token="ign", role=PRUNING, parse=_layer_names, nargs="+",
                                  metavar="LAYER", words=lambda v: f"{' '.join(v)} kept dense",
                                  help="layers never pruned, by module name (as in the layer table "
                                       "a run prints, without .weight)")
    target_sparsity: float | None = setting(
        None, token="ts", role=PRUNING, parse=_target_sparsity, metavar="S",
        words=lambda v: f"target {format_number(v)}% pruned",
        help="percent of weights removed after the last cycle; sets the per-round rate to "
             "1-(1-S)^(1/(N-1)) with N = PRUNE_ITERATIONS (instead of --prune_percent)")
    prune_criterion: str = setting("magnitude", token="crit", role=PRUNING, choices=("magnitude", "snip"),
                                   words=lambda v: f"{v} criterion",
                                   help="magnitude: smallest |w| pruned; snip: smallest connection "
                                        "sensitivity |g*w| on training batches at the rewind point "
                                        "(Lee et al. 2019)")
    early_bird: bool = setting(False, token="eb", role=PRUNING, parse=parse_bool,
                               words=lambda v: "early-bird" if v else "full dense cycle",
                               help="early-bird tickets (You et al. 2020): stop the dense cycle once "
                                    "the mask pruning would take stops changing (Hamming distance "
                                    "< 0.1 for 5 epochs in a row), then prune")
    ticket_source: str = setting(
        "", token="src", role=PRUNING, parse=_ticket_source, metavar="RESULTS[:CYCLE]",
        words=_source_words,
        help="train the ticket another run found (ticket transfer, Morcos et al. 2019): its masks and "
             "start weights of CYCLE (default: its last), the output layer re-initialised when the "
             "class counts differ; cycle 0 trains that ticket, later cycles prune it further. "
             "With --prune_iterations 1 the run just trains it. The source must lie under --save_dir")
    # ---- how every cycle is trained (shared with the dense baseline)
    init_from: str = setting(
        "", token="init", parse=_init_from, metavar="STATE_FILE",
        words=lambda v: f"from pretrained {reference_stem(v)}" if v else "from its initialisation",
        help="start from (and rewind to) these pretrained weights instead of the seed's "
             "initialisation: a state-dict file or a results file (its best weights); the output "
             "layer keeps its own initialisation when the class counts differ. The file must lie "
             "under --save_dir")
    optimizer: str = setting("adam", token="opt", choices=("adam", "sgd"), words=lambda v: v,
                             help="optimiser of every cycle")
    momentum: float = setting(0.0, token="mom", parse=_momentum, words=lambda v: f"momentum {format_number(v)}",
                              help="SGD momentum (with --optimizer sgd; Adam keeps its own moments)")
    lr_schedule: str = setting("none", token="sched", choices=("none", "step", "cosine"),
                               words=lambda v: f"{v} schedule",
                               help="learning rate within a cycle: constant, step (x0.1 at 50%% and "
                                    "75%% of the cycle) or cosine (to 0 at the cycle's end)")
    warmup: str = setting("none", token="wu", parse=_warmup, metavar="DURATION",
                          words=lambda v: f"warmup {_duration_words(v)}",
                          help="linear learning-rate warmup at the start of every cycle: none, Nep "
                               "or Nit (Frankle & Carbin warm VGG and ResNet up)")
    augment: bool = setting(False, token="aug", parse=parse_bool, words=lambda v: "augmented" if v else "no augmentation",
                            help="random crop (4-pixel padding) and horizontal flip of training "
                                 "images, done on the training device (CIFAR-style datasets)")
    precision: str = setting("fp32", token="prec", choices=("fp32", "tf32", "bf16"), words=lambda v: v,
                             help="arithmetic of training and evaluation: fp32 (strict, comparable "
                                  "everywhere), tf32 (TF32 matrix products on NVIDIA GPUs) or bf16 "
                                  "(autocast to bfloat16)")
    flush_denormal: bool = setting(False, token="ftz", parse=parse_bool,
                                   words=lambda v: "denormals flushed" if v else "IEEE denormals",
                                   help="on the CPU, treat denormal floats (below 1.2e-38) as zero. "
                                        "Late in a run that has fitted its data, gradients and Adam's "
                                        "moments become denormal and each operation on them costs "
                                        "many cycles: fc1 on digits trained 150 epochs in 30.7 s "
                                        "without, 7.5 s with (2-core Xeon), so time and energy then "
                                        "measure the denormals, not the network. Off by default, "
                                        "as in the original")
    co2_tracking_mode: bool = setting(False, token=None, role=MEASUREMENT, parse=parse_bool,
                                      help="track energy and CO2 with CodeCarbon; skips all evaluation "
                                           "during training so that it stays out of the energy figures")
    co2_evaluate: bool = setting(False, token="co2eval", role=MEASUREMENT, parse=parse_bool,
                                 help="with CO2 tracking (implied), also evaluate as without it: one "
                                      "run gives both accuracies and training energy; evaluation "
                                      "energy is measured as its own task and reported apart, never "
                                      "in the training figures")
    seed: int = setting(0, token=None, role=SEED, parse=_seed, help="the run's seed")

    def __post_init__(self):
        for f in fields(self):   # one canonical type per setting, so identities compare equal
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and (
                    isinstance(f.default, float) or f.name in ("output_prune_percent", "target_sparsity")):
                object.__setattr__(self, f.name, float(value))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if self.co2_evaluate:
            object.__setattr__(self, "co2_tracking_mode", True)
        if self.train_type == "regular":
            # The dense baseline: one cycle, nothing pruned, so no way of pruning applies.
            for f in fields(self):
                if f.metadata["role"] == PRUNING and f.name != "train_type":
                    object.__setattr__(self, f.name, f.default)
            object.__setattr__(self, "prune_percent", 0.0)
            object.__setattr__(self, "prune_iterations", 1)
        elif self.ticket_source and self.prune_iterations == 1:
            # Training a transferred ticket without pruning it further: no rate applies.
            object.__setattr__(self, "prune_percent", 0.0)
        elif self.target_sparsity is not None and self.prune_iterations >= 2:
            # The per-round rate that reaches the target after the last round (seeds 002, 003).
            object.__setattr__(self, "prune_percent",
                               per_round_percent(self.target_sparsity, self.prune_iterations))

    # ------------------------------------------------------------------ checks
    def validate(self) -> "RunConfig":
        """Raise UserError (one line) for a combination no run should be made with."""
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed {self.seed} is outside 0..{MAX_SEED} (NumPy's seed range); "
                            "choose seeds in that range")
        if not 0 <= self.prune_percent < 100:
            raise UserError(f"--prune_percent {self.prune_percent} is outside [0, 100)")
        if self.train_type == "lt" and self.prune_iterations == 1 and not self.ticket_source:
            raise UserError("--train_type lt with --prune_iterations 1 prunes nothing: that is the "
                            "dense baseline, train it with --train_type regular (or give 2 or more "
                            "cycles)")
        if self.momentum and self.optimizer != "sgd":
            raise UserError(f"--momentum applies to --optimizer sgd only ({self.optimizer} keeps its "
                            "own moment estimates); drop --momentum or use --optimizer sgd")
        if self.rewind_to != "init" and self.prune_type == "reinit":
            raise UserError("--prune_type reinit re-draws the survivors, so it has no rewind point; "
                            "drop --rewind_to")
        if self.early_bird and self.rewind_to != "init":
            raise UserError("--early_bird ends the dense cycle early, possibly before the rewind point; "
                            "use it with --rewind_to init")
        return self

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """Every setting, as plain values (what the results file stores under ``args``)."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in asdict(self).items()}

    as_dict = identity

    def training_settings(self) -> dict[str, Any]:
        """The identity (kept under this name: checkpoints compare it to refuse a foreign resume)."""
        return self.identity()

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """The config of saved ``args``; settings it lacks (older files) take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def differing_settings(self) -> list[tuple[str, Any]]:
        """(field, value) of the tokened settings that differ from their defaults, in order."""
        out = []
        for f in fields(self):
            if f.metadata["token"] is None:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out.append((f.name, value))
        return out

    def baseline_key(self) -> tuple:
        """The training settings a fair dense baseline shares with this run (all but how the
        ticket is pruned, the seed and the measurement)."""
        return tuple((f.name, format_value(getattr(self, f.name))) for f in fields(self)
                     if f.metadata["role"] == TRAINING)

    @property
    def config_name(self) -> str:
        return config_name(self.prune_percent, self.prune_iterations)

    @property
    def is_dense_baseline(self) -> bool:
        return self.train_type == "regular"

    @property
    def stem(self) -> str:
        """The run's file name without extension (see the module's docstring)."""
        head = f"{self.config_name}_seed{self.seed}_co2{bool(self.co2_tracking_mode)}_{self.dataset}"
        return head + self._suffix()

    @property
    def configuration_suffix(self) -> str:
        """The stem's settings part for the configuration (seed and measurement mode left out)."""
        return replace(self, seed=0, co2_tracking_mode=False)._suffix()

    @property
    def configuration_id(self) -> str:
        """The stem without seed and measurement mode: what runs averaged together share."""
        return f"{self.config_name}_{self.dataset}{self.configuration_suffix}"

    def _suffix(self) -> str:
        differing = self.differing_settings()
        if not differing:
            return ""
        tokens = {f.name: f.metadata["token"] for f in fields(self)}
        parts = [f"{tokens[name]}{format_value(value)}" for name, value in differing]
        readable = "".join(f"_{p}" for p in parts)
        if len(readable) <= MAX_READABLE_SUFFIX and all(NAME_SAFE.match(p) for p in parts):
            return readable
        kept = ""
        for part in parts:
            if not NAME_SAFE.match(part) or len(kept) + len(part) + 1 > MAX_READABLE_SUFFIX - 10:
                break
            kept += f"_{part}"
        return f"{kept}_h{self.digest()}"

    def digest(self) -> str:
        """8 hex digits of the full settings (seed included)."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def setting_fields() -> list:
    return list(fields(RunConfig))


def setting_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]


def setting_role(name: str) -> str:
    return {f.name: f.metadata["role"] for f in fields(RunConfig)}[name]


def parse_setting(name: str, text: str) -> Any:
    """A setting's value from command-line text; ValueError with the reason when it is not one."""
    for f in fields(RunConfig):
        if f.name != name:
            continue
        meta = f.metadata
        if meta["choices"] and text not in meta["choices"]:
            raise ValueError(f"{text!r} is not one of {', '.join(meta['choices'])}")
        if meta["parse"] is not None:
            return meta["parse"](text)
        if isinstance(f.default, bool):
            return parse_bool(text)
        if isinstance(f.default, int):
            return parse_whole(text)
        if isinstance(f.default, float):
            return parse_number(text)
        return text
    raise ValueError(f"{name!r} is not a setting; settings: {', '.join(setting_names())}")


def add_setting_arguments(parser: argparse.ArgumentParser, *, choices: dict[str, Sequence[str]] | None = None,
                          skip: Iterable[str] = ("seed",)) -> None:
    """One flag per setting of :class:`RunConfig` (``--seeds`` is the script's own)."""
    choices = choices or {}
    for f in fields(RunConfig):
        if f.name in skip:
            continue
        meta = f.metadata
        flags = [f"--{f.name}", *meta["flags"]]
        help_text = meta["help"]
        if isinstance(f.default, bool):
            parser.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
            continue

        def convert(text, _name=f.name):
            try:
                return parse_setting(_name, text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        convert.__name__ = f.name   # argparse names the type in its messages
        parser.add_argument(*flags, dest=f.name, default=f.default, type=convert,
                            choices=choices.get(f.name) or meta["choices"], help=help_text,
                            metavar=meta["metavar"], nargs=meta["nargs"])


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return RunConfig(**values)


# --------------------------------------------------------------------------- configuration names
def config_name(prune_percent: float, prune_iterations: int) -> str:
    return f"pp{format_number(prune_percent)}x{prune_iterations}"


CONFIG_NAME = re.compile(r"^pp(?P<prune_percent>\d+(?:\.\d+)?(?:e-?\d+)?)x(?P<prune_iterations>\d+)$")
STEM_HEAD = re.compile(
    r"^pp(?P<prune_percent>\d+(?:\.\d+)?(?:e-?\d+)?)x(?P<prune_iterations>\d+)_seed(?P<seed>\d+)"
    r"_co2(?P<co2>True|False)_(?P<dataset>[a-z0-9]+)(?P<rest>_.*)?$")


def parse_config_name(name: str) -> tuple[float, int] | None:
    """'pp68x3' -> (68.0, 3); 'pp1e-05x2' -> (1e-05, 2); None for anything else."""
    match = CONFIG_NAME.match(name.split(",")[0].strip())
    if not match:
        return None
    return float(match["prune_percent"]), int(match["prune_iterations"])


def parse_stem(stem: str) -> dict | None:
    """The fixed head of a run's file name: prune percent, cycles, seed, CO2 mode, dataset."""
    match = STEM_HEAD.match(stem)
    if not match:
        return None
    return {"prune_percent": float(match["prune_percent"]),
            "prune_iterations": int(match["prune_iterations"]), "seed": int(match["seed"]),
            "co2_tracking_mode": match["co2"] == "True", "dataset": match["dataset"]}


def per_round_percent(target_sparsity: float, prune_iterations: int) -> float:
    """The per-round rate (percent) whose ``prune_iterations`` - 1 rounds remove
    ``target_sparsity`` % of the weights: 100 (1 - (1 - S/100)^(1/(N-1))), before rounding."""
    if not 0 < target_sparsity < 100:
        raise ValueError(f"the target sparsity must be in (0, 100), got {target_sparsity}")
    if prune_iterations < 2:
        raise ValueError("a target sparsity needs at least one pruning round: "
                         f"--prune_iterations must be 2 or more, got {prune_iterations}")
    return 100.0 * (1.0 - (1.0 - target_sparsity / 100.0) ** (1.0 / (prune_iterations - 1)))


def expected_percent_remaining(prune_percent: float, cycle: int) -> float:
    """Weights left after ``cycle`` rounds of pruning, ignoring rounding: 100 (1 - p)^cycle."""
    return 100.0 * (1 - prune_percent / 100) ** cycle


# --------------------------------------------------------------------------- paths
def run_dir(save_dir: Path | str, arch: str, dataset: str) -> Path:
    return Path(save_dir) / arch / dataset


def results_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.pt"


def checkpoint_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.checkpoint.pt"


def lock_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.lock"


def emissions_csv_path(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / f"{config.stem}.csv"


def partial_csv_path(final_csv: Path) -> Path:
    """Where CodeCarbon writes while a run or replay goes on; renamed to ``final_csv`` when done."""
    return final_csv.with_name(final_csv.stem + ".partial.csv")


def tickets_dir(save_dir: Path | str, config: RunConfig) -> Path:
    return run_dir(save_dir, config.arch_type, config.dataset) / "tickets" / config.stem


def cycle_ticket_path(results_file: Path | str, cycle: int) -> Path:
    """Where the ticket of ``cycle`` (0 = the dense network) of the run in ``results_file`` lives."""
    results_file = Path(results_file)
    return results_file.parent / "tickets" / results_file.stem / f"cycle{cycle}.pt"


def inference_dir(save_dir: Path | str, arch: str, dataset: str) -> Path:
    return run_dir(save_dir, arch, dataset) / "inference"


def inference_csv_path(save_dir: Path | str, config: RunConfig, device_kind: str, mode: str,
                       state: str = "final", cycle: int | None = None) -> Path:
    """``{cpu|gpu}_inf_pp{P}x{N}_seed{S}[_SETTINGS]_{mode}[_{state}][_cycle{K}].csv``: the original's
    name plus the run's non-default settings, the kernel mode, the weights unless they are the
    final ones, and the cycle unless it is the last, so that no two replays share a file. (One
    run per configuration and seed is replayed, so the CO2 mode need not be in the name.)"""
    name = f"{device_kind}_inf_{config.config_name}_seed{config.seed}{config.configuration_suffix}_{mode}"
    if state != "final":
        name += f"_{state}"
    if cycle is not None and cycle != config.prune_iterations - 1:
        name += f"_cycle{cycle}"
    return inference_dir(save_dir, config.arch_type, config.dataset) / f"{name}.csv"


def inference_runs_csv_path(save_dir: Path | str, arch: str, dataset: str) -> Path:
    """One row per replay (run, device, kernel mode, weights, cycle, threads, batch size)."""
    return inference_dir(save_dir, arch, dataset) / "inference_runs.csv"


def inference_summary_csv_path(save_dir: Path | str, arch: str, dataset: str) -> Path:
    """Mean and standard deviation over seeds of inference_runs.csv, per configuration, mode and
    measuring conditions."""
    return inference_dir(save_dir, arch, dataset) / "inference_summary.csv"


def is_results_file(path: Path) -> bool:
    return (path.suffix == ".pt" and not path.name.startswith(".")
            and not path.name.endswith(".checkpoint.pt"))


# --------------------------------------------------------------------------- finding runs
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
    for path in sorted(p for p in folder.glob("*.pt") if is_results_file(p)):
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
        group.add_argument("--cycle", type=int, default=None, metavar="K",
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
               and f.metadata["token"] is not None
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
            labels[config.configuration_id] = ", ".join([name, *words])
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


def training_flags(config: RunConfig) -> list[str]:
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
