"""The Python API: lottery tickets for any ``nn.Module``, your data and your training loop.

:class:`LotteryTicketFinder` runs iterative magnitude pruning with rewinding around three
functions of yours: ``model_fn()`` builds the network, ``train_fn(model, masks, cycle)``
trains it in place (calling :func:`keep_pruned` after every optimiser step), ``eval_fn(model)``
scores it (higher is better). ``find()`` returns a :class:`TicketSearch`: the masks of every
cycle, the ticket of any cycle as a ready model (:meth:`TicketSearch.ticket`) and the
history. :func:`compare_controls` trains, at every pruning level, the controls (the two of
Frankle & Carbin 2019, and any other branch that declares itself one) beside the winning ticket
and reports ticket minus control.

One implementation of a pruning round serves both this API and ``lottery_ticket.py``:
:func:`next_ticket` (scores -> masks -> control -> start state, in ``archs/pruning/round.py``)
is what :class:`archs.train.LotteryRun` calls between cycles. Ticket transfer (a ticket found
on one dataset trained on another, Morcos et al. 2019) likewise goes through :func:`transfer`.
This module is the facade: it re-exports those and nothing inside ``archs`` imports it.

Example (runnable; more in the README)::

    finder = LotteryTicketFinder(lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                                 train_fn, eval_fn, prune_percent=50, prune_iterations=3)
    search = finder.find()
    print(search.table())
    ticket = search.ticket(2)          # 25% of the weights, rewound to their initial values
    print(compare_controls(search, train_fn, eval_fn).table())
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archs.pruning import (CRITERIA, PRUNE_TYPES, Masks, PruningPlan, State, control_ticket,  # noqa: F401
                           cycle_start_state, derived_generator, fit_state, full_masks, keep_pruned,
                           next_ticket, parse_structure, per_round_percent, percent_remaining, pretrained_state,
                           rewind, source_ticket, transfer)
from archs.pruning.branches import BRANCHES, Branch, LevelStart, ParentTicket, control_branches
from utils import format_table, get_logger

TrainFn = Callable[[nn.Module, Masks, int], Any]
EvalFn = Callable[[nn.Module], float]


# --------------------------------------------------------------------------- the finder
@dataclass
class CycleRecord:
    cycle: int
    percent_left: float        # of the prunable weights
    score: float | None        # eval_fn after the cycle's training (None without eval_fn)


@dataclass
class TicketSearch:
    """What :meth:`LotteryTicketFinder.find` found."""

    masks: list[Masks]                 # per cycle (0 = dense), on the CPU
    rewind_state: State                # what survivors are rewound to (CPU)
    history: list[CycleRecord]
    model: nn.Module                   # the network after the last cycle's training
    model_fn: Callable[[], nn.Module] = field(repr=False)
    prune_type: str = "lt"
    seed: int = 0
    structure: tuple[int, int] | None = None   # the search's N:M (None: unstructured)

    def as_parent(self) -> ParentTicket:
        """This search as the parent of branches (biases re-drawn as N(0, 1), the toolkit's
        default initialisation)."""
        return ParentTicket(masks=self.masks, initial_state=self.rewind_state, rewind_state=self.rewind_state,
                            seed=self.seed, bias_init="normal", final_state=lambda level: {},
                            structure=self.structure)

    def start_state(self, cycle: int) -> State:
        """The values ``cycle`` started from, before its masks (reinit: re-drawn)."""
        return cycle_start_state(self.prune_type, self.masks[cycle], self.rewind_state, self.seed, cycle)

    def ticket(self, cycle: int | None = None) -> nn.Module:
        """A new model holding the ticket of ``cycle`` (default: the last): its start values
        with its masks applied, ready to train with ``train_fn``."""
        cycle = len(self.masks) - 1 if cycle is None else cycle
        model = self.model_fn()
        device = next(model.parameters()).device
        masks = {n: m.to(device) for n, m in self.masks[cycle].items()}
        rewind(model, {n: t.to(device) for n, t in self.start_state(cycle).items()}, masks)
        return model

    def table(self) -> str:
        return format_table(["cycle", "% weights left", "score"],
                            [(r.cycle, f"{r.percent_left:.2f}", "-" if r.score is None else f"{r.score:.4f}")
                             for r in self.history])


class LotteryTicketFinder:
    """Iterative magnitude pruning with rewinding around your model and training loop.

    ``prune_percent``: percent of each layer's survivors removed per round (or
    ``target_sparsity``: percent of weights removed after the last round, which sets the rate);
    ``prune_iterations``: cycles (cycle 0 trains the dense network); ``prune_type``: ``lt``
    (winning ticket), ``reinit`` or ``random`` (the controls, as lottery_ticket.py runs them);
    ``rewind_to``: ``"init"`` or a state dict to start from and rewind to (a pretrained state;
    for late rewinding, train a few steps yourself and pass that state); ``scope``: ``layer``
    or ``global``; ``output_prune_percent``: the output layer's own rate; ``prune_ignore``:
    layers never pruned (module names); ``criterion``: ``magnitude`` or ``snip`` (needs
    ``snip_batches``, a list of (inputs, targets), and ``loss_fn``); ``prune_structure``:
    ``"2:4"`` (N:M) keeps every pruned layer N:M (archs.pruning.structure). ``seed`` seeds
    ``model_fn`` (torch's global generator), the controls and each cycle's training.
    """

    def __init__(self, model_fn: Callable[[], nn.Module], train_fn: TrainFn, eval_fn: EvalFn | None = None, *,
                 prune_percent: float = 20.0, prune_iterations: int = 5, target_sparsity: float | None = None,
                 prune_type: str = "lt", rewind_to: str | Mapping[str, torch.Tensor] = "init",
                 scope: str = "layer", output_prune_percent: float | None = None,
                 prune_ignore: Sequence[str] = (), criterion: str = "magnitude",
                 snip_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 loss_fn: Callable = F.cross_entropy, seed: int = 0, prune_structure: str = "unstructured"):
        if prune_type not in PRUNE_TYPES:
            raise ValueError(f"prune_type must be one of {', '.join(PRUNE_TYPES)}, got {prune_type!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if prune_iterations < 1:
            raise ValueError(f"prune_iterations must be at least 1, got {prune_iterations}")
        if isinstance(rewind_to, str) and rewind_to != "init":
            raise ValueError("rewind_to is 'init' or a state dict (for late rewinding, train a few steps "
                             "and pass model.state_dict())")
        if target_sparsity is not None:
            prune_percent = per_round_percent(target_sparsity, prune_iterations)
        self.model_fn, self.train_fn, self.eval_fn = model_fn, train_fn, eval_fn
        self.plan = PruningPlan(prune_percent, scope, output_prune_percent, tuple(prune_ignore),
                                parse_structure(prune_structure))
        self.prune_iterations, self.prune_type, self.criterion = prune_iterations, prune_type, criterion
        self.rewind_to, self.snip_batches, self.loss_fn, self.seed = rewind_to, snip_batches, loss_fn, seed

    def _build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        model = self.model_fn()
        if not isinstance(self.rewind_to, str):
            model.load_state_dict(self.rewind_to)
        return model

    def find(self) -> TicketSearch:
        model = self._build()
        rewind_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        masks = full_masks(model)
        self.plan.percent_for_layer(list(masks))      # unknown ignored layers fail before training
        history, mask_history = [], []
        for cycle in range(self.prune_iterations):
            if cycle > 0:
                masks, start = next_ticket(model, masks, rewind_state, self.plan, prune_type=self.prune_type,
                                           criterion=self.criterion, seed=self.seed, cycle=cycle,
                                           snip_batches=self.snip_batches, loss_fn=self.loss_fn)
                rewind(model, start, masks)
            score = train_and_score(model, masks, cycle, self.train_fn, self.eval_fn, self.seed)
            mask_history.append({n: m.detach().cpu().clone() for n, m in masks.items()})
            history.append(CycleRecord(cycle, percent_remaining(masks), score))
            get_logger().info("cycle %d: %.2f%% of weights left, score %s", cycle, history[-1].percent_left,
                              "-" if score is None else f"{score:.4f}")
        return TicketSearch(mask_history, {n: t.cpu() for n, t in rewind_state.items()}, history, model,
                            model_fn=self._build, prune_type=self.prune_type, seed=self.seed,
                            structure=self.plan.structure)

    def compare_controls(self, search: TicketSearch | None = None, cycles: Sequence[int] | None = None
                         ) -> "ControlComparison":
        """:func:`compare_controls` with this finder's functions (finding the ticket first if needed)."""
        if self.eval_fn is None:
            raise ValueError("comparing with the controls needs an eval_fn")
        return compare_controls(search or self.find(), self.train_fn, self.eval_fn, cycles=cycles)


def train_and_score(model: nn.Module, masks: Masks, cycle: int, train_fn: TrainFn, eval_fn: EvalFn | None,
                    seed: int) -> float | None:
    """Train (with torch's generator seeded by ``seed`` and ``cycle``, so a ticket and its controls
    see the same batches when train_fn draws from it), re-zero the pruned weights, score."""
    torch.manual_seed(derived_generator(seed, "train", cycle).initial_seed())
    train_fn(model, masks, cycle)
    params = dict(model.named_parameters())
    revived = sum(int((params[n].detach() != 0)[~m.to(params[n].device)].sum()) for n, m in masks.items())
    if revived:
        get_logger().warning("warning: train_fn left %d pruned weights non-zero in cycle %d; call "
                             "keep_pruned(model, masks) after every optimizer step", revived, cycle)
    keep_pruned(model, masks)
    if eval_fn is None:
        return None
    return float(eval_fn(model))


# --------------------------------------------------------------------------- the ticket and its controls
def condition_key(control: Branch) -> str:
    """A control's column: its table name in snake case ("random reinit" -> random_reinit)."""
    return control.control.replace(" ", "_")


@dataclass
class ControlComparison:
    """One row per pruning level: the ticket's and each control's score and the differences
    ticket minus control (``ticket_minus_BRANCH``), the controls in ``controls`` (branch names).

    Each condition is trained once: a difference is one paired sample (same data order), not a
    significance test; repeat over seeds for a spread."""

    rows: list[dict]
    controls: list[str] = field(default_factory=lambda: [b.name for b in control_branches()])

    @property
    def conditions(self) -> list[str]:
        return ["winning_ticket", *(condition_key(BRANCHES[name]) for name in self.controls)]

    def table(self) -> str:
        headers = ["cycle", "% weights left", *self.conditions,
                   *(f"ticket - {name.replace('_', ' ')}" for name in self.controls)]
        return format_table(headers, [(r["cycle"], f"{r['percent_left']:.2f}",
                                       *(f"{r[c]:.4f}" for c in self.conditions),
                                       *(f"{r[f'ticket_minus_{name}']:+.4f}" for name in self.controls))
                                      for r in self.rows])


def compare_controls(search: TicketSearch, train_fn: TrainFn, eval_fn: EvalFn,
                     cycles: Sequence[int] | None = None) -> ControlComparison:
    """The winning ticket against its controls at every pruning level (Frankle & Carbin 2019):

    * winning ticket: the masks of the level, survivors at their initial (rewind) values; its
      score is the search's (that cycle trained exactly this ticket);
    * random reinit: the same masks, survivors re-drawn from the initial distribution;
    * random mask: as many weights per layer as the ticket, at random places, at their initial
      values;
    * any other branch that declares itself a control (``Branch.control``).

    Each control is trained with ``train_fn`` and scored with ``eval_fn``; ``cycles``
    (default: every pruned one) picks the levels. The controls are built by the branches of
    the same names (``lottery_ticket.py --branch reinit|random_mask``): one implementation,
    the same masks and values for the same seed and level."""
    if search.prune_type != "lt":
        raise ValueError("compare_controls needs a search of winning tickets (prune_type 'lt')")
    cycles = list(range(1, len(search.masks))) if cycles is None else list(cycles)
    parent, controls = search.as_parent(), control_branches()
    rows = []
    for cycle in cycles:
        record = search.history[cycle]
        ticket_score = record.score
        if ticket_score is None:
            ticket_score = float(eval_fn(_trained(search, search.masks[cycle], search.start_state(cycle),
                                                  cycle, train_fn)))
        scores = {"winning_ticket": ticket_score}
        for control in controls:
            start = control_start(parent, control.name, cycle)
            model = _trained(search, start.masks, start.state, cycle, train_fn)
            scores[condition_key(control)] = float(eval_fn(model))
        rows.append({"cycle": cycle, "percent_left": record.percent_left, **scores,
                     **{f"ticket_minus_{control.name}": ticket_score - scores[condition_key(control)]
                        for control in controls}})
    return ControlComparison(rows, [control.name for control in controls])


def control_start(parent: ParentTicket, branch: str, level: int) -> LevelStart:
    """The start (masks, values) of the control ``branch`` (reinit, random_mask...) at ``level``."""
    return BRANCHES[branch].start(parent, level, {}, 0)


def _trained(search: TicketSearch, masks: Masks, start: State, cycle: int, train_fn: TrainFn) -> nn.Module:
    model = search.model_fn()
    device = next(model.parameters()).device
    masks = {n: m.to(device) for n, m in masks.items()}
    rewind(model, {n: t.to(device) for n, t in start.items()}, masks)
    train_and_score(model, masks, cycle, train_fn, None, search.seed)
    return model
