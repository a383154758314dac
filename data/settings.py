"""How a run's settings are declared and read: value parsers, :func:`setting`, roles.

A setting of a run is declared once, as a field of :class:`data.runs.RunConfig` made by
:func:`setting`. Its metadata says how command-line text becomes a value (``parse``), how file
names spell it (``token``), how figure labels say it (``words``) and what comparing two runs that
differ in it means (``role``). Everything else (flags, ``--where``, names, labels) is derived from
that. Every other option (jobs, launchers, CodeCarbon, figures) is declared the same way with
:func:`option`, which makes its flag but no part of a run's identity.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from data.sources import REFERENCE, file_reference, parse_reference, reference_stem
from utils import UserError, parse_number, parse_whole, percent  # noqa: F401  (parse_* re-exported)

MAX_SEED = 2 ** 32 - 1          # numpy.random.seed's range

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


# --------------------------------------------------------------------------- declaring settings
def setting(default: Any, *, help: str, token: str | None, role: str | None = TRAINING,
            flags: Sequence[str] = (), choices: Sequence[str] | None = None,
            parse: Callable[[str], Any] | None = None, words: Callable[[Any], str] | None = None,
            metavar: str | None = None, nargs: str | None = None,
            file_value: Callable[[Any], str] | None = None, flag: str | None = None,
            digested_at_default: bool = True) -> Any:
    """Declare one field of :class:`RunConfig` (or, through :func:`option`, of a job).

    ``token`` prefixes the value in file names (None: the setting is in the name's fixed head);
    ``flag`` is the command-line flag's name when it is not the field's (``--{flag}``, read back
    from ``args.{flag}``); ``flags`` are extra spellings of it; ``parse`` turns command-line text
    (and ``--where`` values) into a value; ``words`` says the value in a figure label ("lr 0.0012");
    ``file_value`` spells the value in file names when :func:`format_value`'s text is unfit for
    one ("2:4" -> "2of4"). A switch (bool) whose default is True has a flag that turns it off
    (``--no_progress`` for ``show_progress``). A setting added to :class:`RunConfig` after runs
    were made declares ``digested_at_default=False``: at its default it stays out of the hash in
    long run names, so the runs already made keep their names (resume, branches' parents).
    """
    metadata = {"help": help, "token": token, "role": role, "flags": tuple(flags),
                "choices": tuple(choices) if choices else None, "parse": parse, "words": words,
                "metavar": metavar, "nargs": nargs, "file_value": file_value, "flag": flag,
                "digested_at_default": digested_at_default}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _optional_percent(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none") else percent(text)


def prune_structure_text(text: str) -> str:
    """``unstructured`` or a canonical ``N:M`` with 0 < N < M (``" 2 : 4 "`` -> ``"2:4"``)."""
    cleaned = str(text).replace(" ", "").lower()
    if cleaned in ("", "unstructured"):
        return "unstructured"
    n_text, sep, m_text = cleaned.partition(":")
    if not sep or not n_text.isdigit() or not m_text.isdigit():
        raise ValueError(f"{text!r} is not unstructured or N:M (e.g. 2:4: at most 2 weights kept in "
                         "every 4 consecutive ones of a row)")
    n, m = int(n_text), int(m_text)
    if not 0 < n < m:
        raise ValueError(f"{text!r}: an N:M pattern needs 0 < N < M, e.g. 2:4")
    return f"{n}:{m}"


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
        from data.selection import read_run_settings   # reads a results file (torch)

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


TRANSFER_WORDS = "ticket from"   # how labels start to name a transferred ticket (data.report.labels reads it)


def _source_words(value: str) -> str:
    _, _, cycle = parse_reference(value)
    return f"{TRANSFER_WORDS} {reference_stem(value)} cycle {cycle}"


BRANCH_SETTINGS = ("branch", "branch_args", "branch_levels")


def _branch_name(text: str) -> str:
    text = text.strip()
    if text.lower() in ("", "none"):
        return ""
    if not re.match(r"^[a-z][a-z0-9_]*$", text):
        raise ValueError(f"{text!r} is not a branch name (lower-case letters, digits, _)")
    return text


def _branch_args(text: str) -> str:
    """``key=value,key=value`` in a canonical order (sorted by key), so equal settings name alike."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return ""
    pairs = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.match(r"^[a-z_]+$", key) or not re.match(r"^[A-Za-z0-9.+-]+$", value):
            raise ValueError(f"{item!r} is not KEY=VALUE (e.g. lr=0.01)")
        pairs[key] = value
    return ",".join(f"{k}={pairs[k]}" for k in sorted(pairs))


def _branch_words(value: str) -> str:
    return f"{value} branch" if value else ""   # a ticket run: its other words name it


def _args_words(value: str) -> str:
    return value.replace(",", " ")


def _levels_words(value: tuple) -> str:
    return "levels " + " ".join(map(str, value)) if value else ""


def _seed(text: str) -> int:
    value = parse_whole(text)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{text} is outside 0..{MAX_SEED} (NumPy's seed range)")
    return value



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



# --------------------------------------------------------------------------- job options
# Declared here, torch-free, so that the scripts' parsers offer them without importing archs.
# Which weights each cycle's ticket file keeps besides its masks (--save_cycle_weights).
CYCLE_WEIGHTS = {"both": ("best_state_dict", "final_state_dict"), "best": ("best_state_dict",),
                 "final": ("final_state_dict",), "none": ()}
# Kernels of the inference replay (--mode; "both" runs dense then sparse).
KERNEL_MODES = ("dense", "sparse", "auto")
REPLAY_MODES = KERNEL_MODES + ("both",)


# --------------------------------------------------------------------------- flags
def option(default: Any, *, help: str, **declared) -> Any:
    """Declare one option of a job, a launcher or a script: a :func:`setting` outside a run's
    identity (no file-name token, no role). Its flag is generated by :func:`add_field_arguments`
    and read back by :func:`values_from_args`."""
    return setting(default, help=help, token=None, role=None, **declared)


def flag_name(f: Field) -> str:
    """The name of field ``f``'s flag (``--{name}``), also its attribute in the parsed arguments."""
    return f.metadata.get("flag") or f.name


def flagged(cls: type, *names: str) -> list[Field]:
    """The fields of dataclass ``cls`` that have a flag: all of them, or those of ``names`` in that order."""
    declared = {f.name: f for f in fields(cls) if f.metadata}
    return list(declared.values()) if not names else [declared[name] for name in names]


def parse_field(f: Field, text: str, *, check_choices: bool = True) -> Any:
    """The value of field ``f`` from command-line text; ValueError with the reason."""
    meta = f.metadata
    if meta["choices"] and text not in meta["choices"]:
        if not check_choices:   # argparse checks them itself, in the words of every flag with choices
            return text
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


def add_field_arguments(parser: argparse.ArgumentParser, declared: Iterable[Field], *,
                        choices: dict[str, Sequence[str]] | None = None,
                        skip: Iterable[str] = ()) -> None:
    """One flag per declared field (``--{flag_name}`` plus the field's extra spellings)."""
    choices = choices or {}
    for f in declared:
        if f.name in skip:
            continue
        meta, dest = f.metadata, flag_name(f)
        flags = [f"--{dest}", *meta["flags"]]
        if isinstance(f.default, bool):   # a switch: on when given (off, for a default of True)
            parser.add_argument(*flags, dest=dest, action="store_true", help=meta["help"])
            continue

        def convert(text, _f=f):
            try:
                return parse_field(_f, text, check_choices=False)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        convert.__name__ = f.name   # argparse names the type in its messages
        # --help shows a list default as a list: [0, 1, 2] (values_from_args gives the tuple back)
        default = list(f.default) if meta["nargs"] and f.default else f.default
        parser.add_argument(*flags, dest=dest, default=default, type=convert,
                            choices=choices.get(f.name) or meta["choices"], help=meta["help"],
                            metavar=meta["metavar"], nargs=meta["nargs"])


def values_from_args(declared: Iterable[Field], args: argparse.Namespace) -> dict[str, Any]:
    """The values of the declared fields that :func:`add_field_arguments` gave flags, by field name."""
    values = {}
    for f in declared:
        given = getattr(args, flag_name(f))
        if f.default is True:           # the flag turns it off
            given = not given
        elif isinstance(given, list):   # nargs: a tuple, as declared
            given = tuple(given)
        values[f.name] = given
    return values
