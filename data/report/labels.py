"""The words, units and colours the figures use, so every figure names things the same way.

A configuration keeps one colour in every figure (:func:`config_colour`), whichever other
configurations happen to be drawn beside it; kernel modes of the inference replay are told
apart by line style instead, so a configuration's colour still says which one it is.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import re

from data.conditions import fixed_styles
from data.energy.emissions import EMISSION_FIELDS
from data.names import parse_config_name
from data.settings import TRANSFER_WORDS, expected_percent_remaining, format_number

BASELINE_CONFIG = "pp0x1"
FORMATS = ("png", "pdf", "svg")                   # --format of the figure scripts
MODE_PREFERENCE = ("auto", "sparse", "dense")    # the kernel mode read when none is asked for

# The study's three configurations get fixed colours (seaborn's colour-blind palette);
# the dense baseline is near-black so that it reads as the reference line.
FIXED_COLOURS = {
    "pp0x1": "#333333",
    "pp90x2": "#0173b2",
    "pp68x3": "#de8f05",
}
# The rest of that palette, less its grey (too close to the baseline), yellow (unreadable on
# white) and its two palest (sky blue, pale pink), which made a winning ticket the faintest line.
OTHER_COLOURS = ("#029e73", "#d55e00", "#cc78bc", "#ca9161")

MODE_LINESTYLES = {"dense": "-", "sparse": "--", "auto": ":"}
MODE_WORDS = {"dense": "dense kernels", "sparse": "sparse kernels", "auto": "auto kernels"}


def times_in_words(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


CYCLE_PART = re.compile(r"^cycle (\d+)$")


def split_label(label: str) -> tuple[str, int | None, list[str]]:
    """A configuration label (data.runs.group_labels, plus ', cycle K' for an earlier cycle's
    replay) as (configuration name, cycle or None, the other settings in words)."""
    head, *parts = [part.strip() for part in label.split(",")]
    cycle, others = None, []
    for part in parts:
        match = CYCLE_PART.match(part)
        if match:
            cycle = int(match[1])
        else:
            others.append(part)
    return head, cycle, others


def is_transferred(label: str) -> bool:
    """Whether the label names a ticket trained from another run's (``--ticket_source``)."""
    return any(part.startswith(f"{TRANSFER_WORDS} ") for part in split_label(label)[2])


def is_baseline(label: str) -> bool:
    return split_label(label)[0] == BASELINE_CONFIG and not is_transferred(label)


# The words of --prune_structure N:M in a label (data.runs: "2:4 structured").
STRUCTURE_PART = re.compile(r"^(\d+):(\d+) structured$")


def forced_structure(others: list[str], prune_percent: float) -> str | None:
    """"N:M" when the label's N:M pattern prunes more than its rate in the first round (a rate
    below 1 - N/M; archs.pruning.structure): its weights left are then fewer than the schedule's
    and depend on the layers' shapes. None otherwise."""
    for part in others:
        match = STRUCTURE_PART.match(part)
        if match and prune_percent < 100 * (1 - int(match[1]) / int(match[2])):
            return f"{match[1]}:{match[2]}"
    return None


def label_percent_left(label: str) -> float | None:
    """Weights a labelled configuration ends with (at its cycle, when the label names one);
    None where the label does not say (a transferred ticket, an N:M pattern forcing more)."""
    head, cycle, others = split_label(label)
    parsed = parse_config_name(head)
    if parsed is None or is_transferred(label):   # a transferred ticket starts at its source's level
        return None
    prune_percent, prune_iterations = parsed
    if forced_structure(others, prune_percent) and (cycle is None or cycle > 0) and prune_iterations > 1:
        return None
    return expected_percent_remaining(prune_percent, prune_iterations - 1 if cycle is None else cycle)


def describe_config(name: str) -> str:
    """'pp90x2' -> '90% pruned once, 10% of weights left'; 'pp0x1' -> 'dense baseline';
    'pp68x3, cycle 1' -> '68% pruned once, 32% of weights left (cycle 1 of pp68x3)';
    'pp90x2, lr 0.0012' -> '90% pruned once, 10% of weights left, lr 0.0012'.

    Labels that do not start with a configuration name are returned unchanged.
    """
    head, cycle, others = split_label(name)
    parsed = parse_config_name(head)
    if parsed is None:
        return name
    prune_percent, prune_iterations = parsed
    rounds = prune_iterations - 1 if cycle is None else cycle
    if is_transferred(name):   # "ticket from SOURCE cycle K" says what it is
        more = [f"{format_number(prune_percent)}% pruned {times_in_words(rounds)} more"] if rounds else []
        return ", ".join([*others, *more])
    if prune_iterations == 1:
        text = "dense baseline"
    elif prune_percent == 0:
        text = f"dense ({prune_iterations} cycles, nothing pruned)"
    elif rounds == 0:
        text = "dense network (first cycle)"
    elif forced_structure(others, prune_percent):
        text = (f"{format_number(prune_percent)}% pruned {times_in_words(rounds)}, the first time to "
                f"{forced_structure(others, prune_percent)} (more than the rate)")
    else:
        left = expected_percent_remaining(prune_percent, rounds)
        text = (f"{format_number(prune_percent)}% pruned {times_in_words(rounds)}, "
                f"{left:.3g}% of weights left")
    if cycle is not None and cycle != prune_iterations - 1:
        text += f" (cycle {cycle} of {head})"
    return ", ".join([text, *others])


def describe_schedule(name: str) -> str:
    """A line across a configuration's cycles (the Lottery-Ticket figures): its rate and cycles,
    not one level of weights left. 'pp50x3' -> '50% pruned per round, 3 cycles'."""
    head, cycle, others = split_label(name)
    parsed = parse_config_name(head)
    if parsed is None or is_baseline(name) or is_transferred(name) or cycle is not None:
        return describe_config(name)
    prune_percent, prune_iterations = parsed
    return ", ".join([f"{format_number(prune_percent)}% pruned per round, {prune_iterations} cycles",
                      *others])


def describe_hyperparameters(lr: float, decay: float) -> str:
    return f"lr {format_number(lr)}, weight decay {format_number(decay)}"


def describe_mode(mode: str | None) -> str:
    return MODE_WORDS.get(mode or "", mode or "")


def config_sort_key(name: str) -> tuple:
    """Densest first (the baseline leads legends and tables), then by name."""
    left = label_percent_left(name)
    if left is None:
        return (1, 0.0, name)
    return (0, -left, not is_baseline(name), name)


def control_style(name: str) -> tuple[str, str] | None:
    """The colour and line style a branch or an iterative run declares for itself (see
    data.conditions; its files choose colours outside OTHER_COLOURS, so that no ticket's hashed
    colour is a control's): the conditions of one configuration are never drawn alike."""
    _, _, others = split_label(name)
    if not others:   # a plain configuration: no branch, no prune type named
        return None
    styles = fixed_styles()
    return next((styles[word] for word in others if word in styles), None)


def config_colour(name: str) -> str:
    """A colour that depends only on the configuration's name, never on which others are drawn
    (crc32, unlike hash(), gives the same number in every process)."""
    if name in FIXED_COLOURS:
        return FIXED_COLOURS[name]
    control = control_style(name)
    if control is not None:
        return control[0]
    return OTHER_COLOURS[zlib.crc32(name.encode()) % len(OTHER_COLOURS)]


def config_linestyle(name: str) -> str:
    """Dashed for the dense baseline: in training curves a ticket's first cycle is the dense
    network, so the two lines coincide there and the dashes keep both visible."""
    control = control_style(name)
    if control is not None:
        return control[1]
    return "--" if is_baseline(name) else "-"


def mode_linestyle(mode: str | None) -> str:
    return MODE_LINESTYLES.get(mode or "", "-.")


MODE_SHADES = {"dense": 0.0, "sparse": 0.45, "auto": -0.35}   # toward white (+) or black (-)


def mode_colour(colour: str, mode: str | None) -> str:
    """A configuration's colour shaded by kernel mode, so that one ticket's dense and sparse
    lines differ in colour as well as in dashes: dense as it is, sparse lighter, auto darker."""
    shade = MODE_SHADES.get(mode or "", 0.0)
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if shade > 0 else 0
    mixed = [round(c + (target - c) * abs(shade)) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in mixed)


@dataclass(frozen=True)
class Metric:
    """A logged quantity: its key in the results, the slug used in file names, its axis label."""

    key: str
    slug: str
    label: str


TRAINING_METRICS = (
    Metric("non_zeros_weights", "weights_left", "Weights left (% of prunable weights)"),
    Metric("train_loss", "train_loss", "Training loss (cross-entropy)"),
    Metric("train_accuracy", "train_accuracy", "Training accuracy (%)"),
    Metric("val_loss", "val_loss", "Validation loss (cross-entropy)"),
    Metric("val_accuracy", "val_accuracy", "Validation accuracy (%)"),
    Metric("test_loss", "test_loss", "Test loss (cross-entropy)"),
    Metric("test_accuracy", "test_accuracy", "Test accuracy (%)"),
)

# Titles of CodeCarbon's fields; the units come from data.energy.emissions so they cannot drift apart.
EMISSION_TITLES = {
    "duration": ("duration", "Tracked duration"),
    "emissions": ("co2_emissions", "CO2-equivalent emissions"),
    "emissions_rate": ("co2_emission_rate", "CO2-equivalent emission rate"),
    "cpu_power": ("cpu_power", "CPU power"),
    "gpu_power": ("gpu_power", "GPU power"),
    "ram_power": ("ram_power", "RAM power"),
    "cpu_energy": ("cpu_energy", "CPU energy"),
    "gpu_energy": ("gpu_energy", "GPU energy"),
    "ram_energy": ("ram_energy", "RAM energy"),
    "energy_consumed": ("total_energy", "Total energy consumed"),
}
EMISSION_METRICS = tuple(
    Metric(field, EMISSION_TITLES[field][0], f"{EMISSION_TITLES[field][1]} ({unit})")
    for field, unit in EMISSION_FIELDS.items())

# Horizontal axes: the slug ends file names ("..._vs_images"), the label names the unit.
X_IMAGES = Metric("images_seen", "images", "Training images seen (cumulative over cycles)")
X_TRAINING_TIME = Metric("time", "time", "Wall-clock time since the run started (s)")
X_TRACKED_TIME = Metric("duration", "time", "Time tracked by CodeCarbon (s)")
X_INFERENCES = Metric("inferences", "inferences", "Inferences (test images classified)")
