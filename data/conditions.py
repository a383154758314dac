"""How tables and figures name the registered ways of making and comparing a ticket.

A branch (``--branch``, archs/pruning/branches/) and an iterative prune type (``--prune_type``,
archs/pruning/prune_types/) each declare in their own file how they are shown: the words of
figure labels, whether they are a control of the winning ticket and how the control table
names them, and a fixed colour and line style. Their registration puts that here, torch-free,
because data/ (labels, the control table) cannot import archs/: whoever draws or tabulates runs
imports ``archs.pruning`` first, which registers every built-in one (the figure scripts do).
Asking before anything registered is an error, never a table without its controls.
"""
from __future__ import annotations

from dataclasses import dataclass

from data.settings import _branch_words


@dataclass(frozen=True)
class Condition:
    words: str                            # in figure labels ("reinit branch", "iterative reinit")
    control: str = ""                     # the control table's name for it; "" = not a control
    control_rank: int = 0                 # controls' order in tables (lower first)
    style: tuple[str, str] | None = None  # fixed (colour, line style) in every figure


# setting of RunConfig -> its value -> how that value is shown
CONDITIONS: dict[str, dict[str, Condition]] = {"branch": {}, "prune_type": {}}


def register_condition(setting: str, value: str, *, words: str = "", control: str = "", control_rank: int = 0,
                       style: tuple[str, str] | None = None) -> Condition:
    """Called by the registries of archs/pruning (a branch's words are always "NAME branch")."""
    words = _branch_words(value) if setting == "branch" else words or f"{setting} {value}"
    condition = Condition(words, control, control_rank, tuple(style) if style else None)
    CONDITIONS[setting][value] = condition
    return condition


def registered(setting: str) -> dict[str, Condition]:
    table = CONDITIONS[setting]
    if not table:
        raise RuntimeError(f"no {setting} is registered: import archs.pruning (it registers every "
                           "branch and prune type) before naming runs in tables or figures")
    return table


def prune_type_words(value: str) -> str:
    condition = registered("prune_type").get(value)
    return condition.words if condition else f"prune type {value}"


def control_names() -> dict[str, str]:
    """Branch -> how the control table names it, for every branch that is a control, in table order."""
    branches = sorted(registered("branch").items(), key=lambda item: item[1].control_rank)
    return {name: condition.control for name, condition in branches if condition.control}


def fixed_styles() -> dict[str, tuple[str, str]]:
    """Label words -> (colour, line style) of every branch and prune type that fixes its own."""
    return {condition.words: condition.style for setting in CONDITIONS
            for condition in registered(setting).values() if condition.style}
