"""The Python API: lottery tickets for any ``nn.Module``, your data and your training loop.

:class:`LotteryTicketFinder` runs iterative magnitude pruning with rewinding around three
functions of yours: ``model_fn()`` builds the network, ``train_fn(model, masks, cycle)``
trains it in place (calling :func:`keep_pruned` after every optimiser step), ``eval_fn(model)``
scores it (higher is better). ``find()`` returns a :class:`TicketSearch`: the masks of every
cycle, the ticket of any cycle as a ready model (:meth:`TicketSearch.ticket`) and the
history. :func:`compare_controls` trains, at every pruning level, the two controls of
Frankle & Carbin (2019) beside the winning ticket and reports ticket minus control.

One implementation of a pruning round serves both this API and ``lottery_ticket.py``:
:func:`next_ticket` (scores -> masks -> control -> start state) is what
:class:`archs.training.LotteryRun` calls between cycles. Ticket transfer (a ticket found on
one dataset trained on another, Morcos et al. 2019) likewise goes through :func:`transfer`.

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
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archs.masks import (Masks, PruningPlan, apply_masks, derived_generator, full_masks,
                         magnitude_scores, per_round_percent, percent_remaining, random_masks,
                         reinitialise_survivors, rewind, snip_scores)
from archs.registry import output_layer_name
from utils import UserError, format_table, get_logger

PRUNE_TYPES = ("lt", "reinit", "random")
CRITERIA = ("magnitude", "snip")

State = dict[str, torch.Tensor]
TrainFn = Callable[[nn.Module, Masks, int], Any]
EvalFn = Callable[[nn.Module], float]


# --------------------------------------------------------------------------- one pruning round
@torch.no_grad()
def keep_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` again. Call it after every ``optimizer.step()`` of
    your training loop: momentum, Adam's moments and weight decay would otherwise revive them."""
    apply_masks(model, masks)


def cycle_start_state(prune_type: str, masks: Mapping[str, torch.Tensor], rewind_state: Mapping[str, torch.Tensor],
                      seed: int, cycle: int) -> State:
    """The values a cycle starts from before its masks apply: the rewind state, or for the
    ``reinit`` control the survivors re-drawn from the initial distribution (reproducibly: the
    draw depends only on ``seed`` and ``cycle``)."""
    if prune_type == "reinit" and cycle > 0:
        return reinitialise_survivors(rewind_state, masks, derived_generator(seed, "reinit", cycle))
    return dict(rewind_state)


def control_ticket(prune_type: str, masks: Mapping[str, torch.Tensor], previous_masks: Mapping[str, torch.Tensor],
                   rewind_state: Mapping[str, torch.Tensor], *, seed: int, cycle: int) -> tuple[Masks, State]:
    """(masks, start state) of ``cycle`` given the magnitude (or SNIP) masks of this round:
    ``lt`` keeps them and rewinds; ``random`` keeps as many weights per layer, drawn at random
    among the survivors of ``previous_masks``, and rewinds; ``reinit`` keeps the masks and
    re-draws the survivors."""
    if prune_type not in PRUNE_TYPES:
        raise ValueError(f"prune_type must be one of {', '.join(PRUNE_TYPES)}, got {prune_type!r}")
    masks = dict(masks)
    if prune_type == "random":
        masks = random_masks(masks, previous_masks, derived_generator(seed, "random_mask", cycle))
    return masks, cycle_start_state(prune_type, masks, rewind_state, seed, cycle)


def next_ticket(model: nn.Module, masks: Mapping[str, torch.Tensor], rewind_state: Mapping[str, torch.Tensor],
                plan: PruningPlan, *, prune_type: str = "lt", criterion: str = "magnitude", seed: int = 0,
                cycle: int, snip_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                loss_fn: Callable = F.cross_entropy) -> tuple[Masks, State]:
    """One pruning round: the masks of ``cycle`` (1 for the first pruned cycle) and the state it
    starts from (apply with ``archs.masks.rewind(model, state, masks)``).

    ``model`` holds the trained weights of the cycle before and ``masks`` its masks. The
    magnitude criterion ranks survivors by |w|; ``snip`` rewinds ``model`` to ``rewind_state``
    and ranks them by |g*w| over ``snip_batches`` (inputs, targets) with ``loss_fn``. ``plan``
    sets the rate, scope, output-layer rate and ignored layers; the control (``prune_type``)
    is then applied by :func:`control_ticket`.
    """
    if criterion == "snip":
        if snip_batches is None:
            raise ValueError("the snip criterion needs snip_batches: a list of (inputs, targets)")
        rewind(model, rewind_state, masks)
        scores = snip_scores(model, snip_batches, loss_fn, list(masks))
    elif criterion == "magnitude":
        scores = magnitude_scores(dict(model.named_parameters()), masks)
    else:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    new_masks = plan.prune(scores, masks, cycle)
    return control_ticket(prune_type, new_masks, masks, rewind_state, seed=seed, cycle=cycle)


# --------------------------------------------------------------------------- transfer
def fit_state(start_state: Mapping[str, torch.Tensor], target: nn.Module) -> tuple[State, list[str]]:
    """``start_state`` fitted to ``target``, a network of the same layout for another dataset,
    and the names of the tensors that could not be taken: every tensor comes from
    ``start_state`` except the output layer's weight and bias when the class count differs,
    which keep ``target``'s own initial values. Any other difference is a UserError."""
    target_state = target.state_dict()
    output = output_layer_name(target)
    output_bias = output.removesuffix("weight") + "bias"
    state: State = {}
    replaced = []
    for name, value in target_state.items():
        source = start_state.get(name)
        if source is None:
            raise UserError(f"the saved state has no tensor {name}: it was made with another network")
        if source.shape != value.shape:
            if name in (output, output_bias):
                state[name] = value.detach().clone()
                replaced.append(name)
                continue
            raise UserError(f"the saved {name} has shape {tuple(source.shape)} but this network needs "
                            f"{tuple(value.shape)}: only the output layer may differ (the datasets "
                            "must share image size and channels)")
        state[name] = source.detach().to(value.device, value.dtype).clone()
    return state, replaced


def transfer(masks: Mapping[str, torch.Tensor], start_state: Mapping[str, torch.Tensor],
             target: nn.Module) -> tuple[Masks, State]:
    """A ticket (masks and start state) fitted to ``target`` (see :func:`fit_state`); a
    re-initialised output layer is dense. The state returned has the masks applied."""
    state, replaced = fit_state(start_state, target)
    new_masks: Masks = {}
    for name in full_masks(target):
        if name in replaced:
            new_masks[name] = torch.ones_like(state[name], dtype=torch.bool)
        elif name in masks:
            new_masks[name] = masks[name].to(state[name].device, torch.bool).clone()
        else:
            raise UserError(f"the ticket has no mask for {name}: it was found on another network")
    for name, mask in new_masks.items():
        state[name] = state[name] * mask.to(state[name].dtype)
    return new_masks, state


def source_ticket(results: Mapping[str, Any], cycle: int) -> tuple[Masks, State]:
    """Masks and start state of ``cycle`` of a saved run (its results file's contents): the
    state its survivors were rewound (or, for a reinit run, re-drawn) to before that cycle."""
    history = results["masks"]
    if not 0 <= cycle < len(history):
        raise UserError(f"the source run has cycles 0 to {len(history) - 1}, not {cycle}")
    masks = {name: mask.bool() for name, mask in history[cycle].items()}
    rewind_state = results.get("rewind_state_dict") or results["initial_state_dict"]
    if cycle == 0:
        rewind_state = results["initial_state_dict"]
    args = results.get("args", {})
    start = cycle_start_state(args.get("prune_type", "lt"), masks, rewind_state, int(args.get("seed", 0)), cycle)
    return masks, start


def pretrained_state(saved: Mapping[str, Any], target: nn.Module) -> State:
    """A pretrained state fitted to ``target``: ``saved`` is a state dict, or a results file of
    this toolkit (its best weights). The output layer keeps ``target``'s values when the class
    count differs."""
    state = saved.get("best_state_dict", saved)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("the pretrained file holds no state dict (save it with torch.save(model.state_dict(), path))")
    return fit_state(state, target)[0]


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
    ``snip_batches``, a list of (inputs, targets), and ``loss_fn``). ``seed`` seeds
    ``model_fn`` (torch's global generator), the controls and each cycle's training.
    """

    def __init__(self, model_fn: Callable[[], nn.Module], train_fn: TrainFn, eval_fn: EvalFn | None = None, *,
                 prune_percent: float = 20.0, prune_iterations: int = 5, target_sparsity: float | None = None,
                 prune_type: str = "lt", rewind_to: str | Mapping[str, torch.Tensor] = "init",
                 scope: str = "layer", output_prune_percent: float | None = None,
                 prune_ignore: Sequence[str] = (), criterion: str = "magnitude",
                 snip_batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 loss_fn: Callable = F.cross_entropy, seed: int = 0):
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
        self.plan = PruningPlan(prune_percent, scope, output_prune_percent, tuple(prune_ignore))
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
                            model_fn=self._build, prune_type=self.prune_type, seed=self.seed)

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


# --------------------------------------------------------------------------- the three conditions
CONDITIONS = ("winning_ticket", "random_reinit", "random_mask")


@dataclass
class ControlComparison:
    """One row per pruning level: the three scores and the differences ticket minus control.

    Each condition is trained once: a difference is one paired sample (same data order), not a
    significance test; repeat over seeds for a spread."""

    rows: list[dict]

    def table(self) -> str:
        headers = ["cycle", "% weights left", *CONDITIONS, "ticket - reinit", "ticket - random mask"]
        return format_table(headers, [(r["cycle"], f"{r['percent_left']:.2f}",
                                       *(f"{r[c]:.4f}" for c in CONDITIONS),
                                       f"{r['ticket_minus_reinit']:+.4f}", f"{r['ticket_minus_random_mask']:+.4f}")
                                      for r in self.rows])


def compare_controls(search: TicketSearch, train_fn: TrainFn, eval_fn: EvalFn,
                     cycles: Sequence[int] | None = None) -> ControlComparison:
    """The winning ticket against its two controls at every pruning level (Frankle & Carbin 2019):

    * winning ticket: the masks of the level, survivors at their initial (rewind) values; its
      score is the search's (that cycle trained exactly this ticket);
    * random reinit: the same masks, survivors re-drawn from the initial distribution;
    * random mask: as many weights per layer as the ticket, at random places, at their initial
      values.

    Both controls are trained with ``train_fn`` and scored with ``eval_fn``; ``cycles``
    (default: every pruned one) picks the levels."""
    if search.prune_type != "lt":
        raise ValueError("compare_controls needs a search of winning tickets (prune_type 'lt')")
    cycles = list(range(1, len(search.masks))) if cycles is None else list(cycles)
    dense = {n: torch.ones_like(m) for n, m in search.masks[0].items()}
    rows = []
    for cycle in cycles:
        record = search.history[cycle]
        ticket_score = record.score
        if ticket_score is None:
            ticket_score = float(eval_fn(_trained(search, search.masks[cycle], search.start_state(cycle),
                                                  cycle, train_fn)))
        scores = {"winning_ticket": ticket_score}
        for condition, prune_type in (("random_reinit", "reinit"), ("random_mask", "random")):
            masks, start = control_ticket(prune_type, search.masks[cycle], dense, search.rewind_state,
                                          seed=search.seed, cycle=cycle)
            model = _trained(search, masks, start, cycle, train_fn)
            scores[condition] = float(eval_fn(model))
        rows.append({"cycle": cycle, "percent_left": record.percent_left, **scores,
                     "ticket_minus_reinit": scores["winning_ticket"] - scores["random_reinit"],
                     "ticket_minus_random_mask": scores["winning_ticket"] - scores["random_mask"]})
    return ControlComparison(rows)


def _trained(search: TicketSearch, masks: Masks, start: State, cycle: int, train_fn: TrainFn) -> nn.Module:
    model = search.model_fn()
    device = next(model.parameters()).device
    masks = {n: m.to(device) for n, m in masks.items()}
    rewind(model, {n: t.to(device) for n, t in start.items()}, masks)
    train_and_score(model, masks, cycle, train_fn, None, search.seed)
    return model
