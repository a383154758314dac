"""What a run is: :class:`RunConfig`, its settings and its identity.

A *run* is one seed of one training configuration. Every setting that can change its results
is a field of :class:`RunConfig`, declared once with :func:`data.settings.setting`; from that
one declaration a setting becomes

* a flag of ``lottery_ticket.py`` (:func:`add_setting_arguments`),
* part of the run's identity and of its file name (:attr:`RunConfig.stem`, see data.names),
* a key of the ``--where KEY=VALUE`` filter that every script selects runs with
  (data.selection.RunFilter),
* words in figure labels when runs that differ in it are drawn together
  (data.selection.group_labels).

A run's full identity is :func:`run_key`: network, dataset and stem (the stem leaves the network
out: it is the folder's name). Paths live in data.paths, finding and selecting runs in
data.selection.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterable, Sequence

from data.conditions import prune_type_words
from data.names import branch_suffix, config_name, settings_suffix
from data.settings import (MAX_SEED, MEASUREMENT, PRUNING, SEED, TRAINING, _duration_words, _init_from,
                           _layer_names, _momentum, _optional_percent, _rewind_point, _seed, _source_words,
                           _target_sparsity, _ticket_source, _warmup, add_field_arguments, _branch_args,
                           _args_words, _branch_name, _branch_words, _levels_words, format_number,
                           format_value, parse_bool, parse_field, per_round_percent, prune_structure_text, setting)
from data.sources import reference_stem
from utils import UserError, non_negative_float, parse_whole, percent, positive_float, positive_int

RESULTS_FORMAT_VERSION = 2
# Version 1 (before every cycle's ticket was kept) is still read: its settings were a subset
# of today's, and a missing setting had today's default value.
READABLE_FORMAT_VERSIONS = (1, 2)

# The original program's training logs: dicts keyed by the number of training images seen.
LOG_KEYS = ("time", "non_zeros_weights", "co2", "train_loss", "train_accuracy",
            "val_loss", "val_accuracy", "test_loss", "test_accuracy")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run (one seed). Add a setting here, and only here."""

    arch_type: str = setting("fc1", token=None,
                             help="network (lenet300_100 is another name for fc1; the README lists each one "
                                  "in a line); add your own with @register_model in a file under archs/models/")
    dataset: str = setting("mnist", token=None,
                           help="dataset; the official train and test sets are merged and split "
                                "70/15/15 into train/validation/test with the run's seed")
    prune_percent: float = setting(90.0, token=None, parse=percent, role=PRUNING,
                                   help="percent of the surviving weights of each layer pruned before "
                                        "each cycle after the first, in [0, 100)")
    prune_iterations: int = setting(2, token=None, parse=positive_int, role=PRUNING,
                                    help="number of training cycles; 1 = no pruning, N = N-1 pruning "
                                         "rounds")
    # No token: "regular" is exactly the pp0x1 head (an lt run needs 2 or more cycles).
    train_type: str = setting("lt", token=None, choices=("lt", "regular"), role=PRUNING,
                              help="lt: lottery ticket; regular: dense baseline (forces "
                                   "--prune_percent 0 --prune_iterations 1)")
    lr: float = setting(1e-4, token="lr", parse=positive_float, words=lambda v: f"lr {format_number(v)}",
                        help="learning rate (of Adam, or SGD)")
    decay: float = setting(1e-5, token="decay", parse=non_negative_float,
                           words=lambda v: f"weight decay {format_number(v)}",
                           help="weight decay (L2 penalty)")
    batch_size: int = setting(512, token="bs", parse=positive_int, words=lambda v: f"batch {v}",
                              help="training mini-batch size")
    end_iter: int = setting(32, token="ep", parse=positive_int, flags=("--end_epoch",),
                            words=lambda v: f"{v} epochs per cycle", help="epochs of training in each cycle")
    valid_freq: int = setting(1, token="vf", parse=positive_int,
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
    prune_type: str = setting("lt", token="pt", role=PRUNING, words=prune_type_words,   # choices: archs.choices
                              help="lt: the winning ticket; the others (archs/pruning/prune_types/) are "
                                   "iterative runs of a control (seed 001's), not a ticket's controls: "
                                   "those are branches (--branch)")
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
        words=lambda v: "output layer at the same rate" if v is None
        else f"output layer {format_number(v)}% per round",
        help="per-round rate of the output layer (default: PRUNE_PERCENT; Frankle & Carbin prune "
             "LeNet-300-100's at half the rate)")
    prune_ignore: tuple = setting((), token="ign", role=PRUNING, parse=_layer_names, nargs="+",
                                  metavar="LAYER", words=lambda v: f"{' '.join(v)} kept dense",
                                  help="layers never pruned, by module name (as in the layer table "
                                       "a run prints, without .weight)")
    target_sparsity: float | None = setting(
        None, token="ts", role=PRUNING, parse=_target_sparsity, metavar="S",
        words=lambda v: "no target sparsity" if v is None else f"target {format_number(v)}% pruned",
        help="percent of weights removed after the last cycle; sets the per-round rate to "
             "1-(1-S)^(1/(N-1)) with N = PRUNE_ITERATIONS (instead of --prune_percent)")
    prune_criterion: str = setting("magnitude", token="crit", role=PRUNING,   # choices: archs.choices
                                   words=lambda v: f"{v} criterion",
                                   help="magnitude: smallest |w| pruned; snip: smallest connection "
                                        "sensitivity |g*w| on training batches at the rewind point "
                                        "(Lee et al. 2019)")
    prune_structure: str = setting(
        "unstructured", token="nm", role=PRUNING, parse=prune_structure_text, metavar="N:M",
        words=lambda v: "unstructured" if v == "unstructured" else f"{v} structured",
        file_value=lambda v: v.replace(":", "of"), digested_at_default=False,
        help="unstructured, or N:M (2:4 runs on NVIDIA's sparse tensor cores): after each round at "
             "most N of every M consecutive weights along a layer's input dimension survive (conv: "
             "in*kh*kw); the first round imposes the pattern by the criterion's scores, later "
             "rounds prune within it; layers whose input size is no multiple of M stay "
             "unstructured (README: pruning)")
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
    bias_init: str = setting("normal", token="bias", choices=("normal", "zeros", "default"),
                             words=lambda v: f"{v} biases", help="initial biases: N(0, 1) (the original's), "
                             "zeros, or PyTorch's default (the weights stay the same draw)")
    optimizer: str = setting("adam", token="opt", words=lambda v: v,   # choices: archs.choices
                             help="optimiser of every cycle")
    momentum: float = setting(0.0, token="mom", parse=_momentum, words=lambda v: f"momentum {format_number(v)}",
                              help="SGD momentum (with --optimizer sgd; Adam keeps its own moments)")
    lr_schedule: str = setting("none", token="sched",   # choices: archs.choices
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
    branch: str = setting("", token=None, role=PRUNING, parse=_branch_name, metavar="NAME", words=_branch_words,
                          help="one more cycle from levels of the finished lt run these flags name: a "
                               "branch of archs/pruning/branches/ (README: branches)")
    branch_args: str = setting("", token=None, role=PRUNING, parse=_branch_args, metavar="KEY=VALUE,...",
                               words=_args_words, help="the branch's settings (lr=0.01,...)")
    branch_levels: tuple = setting((), token=None, role=PRUNING, parse=parse_whole, nargs="+", metavar="K",
                                   words=_levels_words, help="levels the branch trains (default: all pruned)")
    seed: int = setting(0, token=None, role=SEED, parse=_seed, help="the run's seed")

    def __post_init__(self):
        settle(self)

    # ------------------------------------------------------------------ checks
    def validate(self) -> "RunConfig":
        """Raise UserError (one line) for a combination no run should be made with (see
        :func:`check_combination`); returns the config."""
        check_combination(self)
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
        return head + self._suffix() + branch_suffix(self)

    @property
    def parent(self) -> "RunConfig":
        """The run a branch grows from (itself when not a branch)."""
        return replace(self, branch="", branch_args="", branch_levels=())

    @property
    def configuration_suffix(self) -> str:
        """The stem's settings part for the configuration (seed and measurement mode left out)."""
        return replace(self, seed=0, co2_tracking_mode=False)._suffix()

    @property
    def configuration_id(self) -> str:
        """The stem without seed and measurement mode: what runs averaged together share."""
        return f"{self.config_name}_{self.dataset}{self.configuration_suffix}{branch_suffix(self)}"

    def _suffix(self) -> str:
        tokens = {f.name: f.metadata["token"] for f in fields(self)}
        spell = {f.name: f.metadata.get("file_value") or format_value for f in fields(self)}
        parts = [f"{tokens[name]}{spell[name](value)}" for name, value in self.differing_settings()]
        return settings_suffix(parts, self.digest()) if parts else ""

    def digest(self) -> str:
        """8 hex digits of the full settings (seed included); a setting declared
        ``digested_at_default=False`` counts only away from its default."""
        left_out = {f.name for f in fields(self) if not f.metadata.get("digested_at_default", True)
                    and getattr(self, f.name) == f.default}
        text = json.dumps({k: v for k, v in self.identity().items() if k not in left_out},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def settle(config: RunConfig) -> None:
    """Give every setting of ``config`` one canonical type (so identities compare equal) and the
    values other settings force (CO2 evaluation, a dense baseline, a transferred ticket, a
    target sparsity); RunConfig.__post_init__ calls it, the config is frozen after."""
    def put(name: str, value: Any) -> None:
        object.__setattr__(config, name, value)

    for f in fields(config):   # one canonical type per setting, so identities compare equal
        value = getattr(config, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and (
                isinstance(f.default, float) or f.name in ("output_prune_percent", "target_sparsity")):
            put(f.name, float(value))
        elif isinstance(value, list):
            put(f.name, tuple(value))
    if config.co2_evaluate:
        put("co2_tracking_mode", True)
    if config.train_type == "regular":
        # The dense baseline: one cycle, nothing pruned, so no way of pruning applies.
        for f in fields(config):
            if f.metadata["role"] == PRUNING and f.name != "train_type":
                put(f.name, f.default)
        put("prune_percent", 0.0)
        put("prune_iterations", 1)
    elif config.ticket_source and config.prune_iterations == 1:
        # Training a transferred ticket without pruning it further: no rate applies.
        put("prune_percent", 0.0)
    elif config.target_sparsity is not None and config.prune_iterations >= 2:
        # The per-round rate that reaches the target after the last round (seeds 002, 003).
        put("prune_percent", per_round_percent(config.target_sparsity, config.prune_iterations))


def check_combination(config: RunConfig) -> None:
    """Raise UserError (one line) for a combination no run should be made with. (A registry's
    own refusals, such as reinit's rewind point, are made by archs.choices.check_registered.)"""
    if not 0 <= config.seed <= MAX_SEED:
        raise UserError(f"seed {config.seed} is outside 0..{MAX_SEED} (NumPy's seed range); "
                        "choose seeds in that range")
    if not 0 <= config.prune_percent < 100:
        raise UserError(f"--prune_percent {config.prune_percent} is outside [0, 100)")
    if config.train_type == "lt" and config.prune_iterations == 1 and not config.ticket_source:
        raise UserError("--train_type lt with --prune_iterations 1 prunes nothing: that is the "
                        "dense baseline, train it with --train_type regular (or give 2 or more "
                        "cycles)")
    if config.momentum and config.optimizer != "sgd":
        raise UserError(f"--momentum applies to --optimizer sgd only ({config.optimizer} keeps its "
                        "own moment estimates); drop --momentum or use --optimizer sgd")
    if config.early_bird and config.rewind_to != "init":
        raise UserError("--early_bird ends the dense cycle early, possibly before the rewind point; "
                        "use it with --rewind_to init")


def setting_fields() -> list:
    return list(fields(RunConfig))


def setting_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]


def setting_role(name: str) -> str:
    return {f.name: f.metadata["role"] for f in fields(RunConfig)}[name]


def parse_setting(name: str, text: str) -> Any:
    """A setting's value from command-line text; ValueError with the reason when it is not one."""
    for f in fields(RunConfig):
        if f.name == name:
            return parse_field(f, text)
    raise ValueError(f"{name!r} is not a setting; settings: {', '.join(setting_names())}")


def add_setting_arguments(parser: argparse.ArgumentParser, *, choices: dict[str, Sequence[str]] | None = None,
                          skip: Iterable[str] = ("seed",)) -> None:
    """One flag per setting of :class:`RunConfig` (``--seeds`` is the script's own)."""
    add_field_arguments(parser, fields(RunConfig), choices=choices, skip=skip)


# A dense baseline forces these two (documented with --train_type); every other way of pruning
# given with it would be dropped without a word.
FORCED_BY_REGULAR = ("prune_percent", "prune_iterations")


def ineffective_settings(values: dict[str, Any]) -> list[str]:
    """The settings in ``values`` (a flag's value, or a study's) that would have no effect: ways of
    pruning given to a dense baseline (``--train_type regular``), which prunes nothing."""
    if values.get("train_type") != "regular":
        return []
    return [f.name for f in fields(RunConfig)
            if f.metadata["role"] == PRUNING and f.name not in ("train_type", *FORCED_BY_REGULAR)
            and f.name in values and values[f.name] != f.default]


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    """The run the command line asks for; UserError (one line) for a setting it would drop."""
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    values.update(overrides)
    dropped = ineffective_settings(values)
    if dropped:
        given = " ".join(f"--{name} {format_value(values[name])}" for name in dropped)
        raise UserError(f"{given}: no effect with --train_type regular (the dense baseline prunes "
                        "nothing, so no way of pruning applies); drop "
                        f"{'it' if len(dropped) == 1 else 'them'}, or train a ticket with --train_type lt")
    return RunConfig(**values)


def run_key(config: RunConfig) -> str:
    """The run's full identity as one key: ``{arch}/{dataset}/{stem}``. The stem leaves out the
    network (it is the folder's name); key every collection of runs that may span networks or
    datasets (a study, a job ledger, a queue) on this, never on the stem."""
    return f"{config.arch_type}/{config.dataset}/{config.stem}"
