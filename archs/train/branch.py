"""Training a branch: one more cycle from each chosen level of a finished winning-ticket run,
changed as the branch says (see :mod:`archs.pruning.branches`).

:class:`BranchRun` is a :class:`LotteryRun` whose cycles are the branch's levels (times its
copies) and whose rounds between cycles set up the next level instead of pruning, so a
branch has the run's loop, checkpoints, resume, energy phases and results schema; each cycle
summary's ``cycle`` is the level. The batch order of a level replays the one the parent's
cycle of that level saw, so a branch and its ticket are paired by seed, initialisation and
data order.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from archs.pruning import full_masks, parse_structure, rewind
from archs.pruning.branches import ParentTicket, get_branch
from archs.pruning.controls import derived_generator
from archs.train.cycles import LotteryRun
from archs.train.loop import clone_state, cpu_state, evaluate
from archs.train.steps import epoch_hooks
from data.paths import cycle_ticket_path
from data.runs import RunConfig
from data.store import load_checkpoint
from utils import UserError


def parent_ticket(results: Mapping[str, Any], results_file: Path) -> ParentTicket:
    """The parent run's levels, as a branch reads them, from its results file's contents."""
    config = RunConfig.from_dict(results["args"])
    initial = results["initial_state_dict"]

    def final_state(level: int) -> dict:
        if level == len(results["masks"]) - 1:
            return results["final_state_dict"]
        path = cycle_ticket_path(results_file, level)
        ticket = load_checkpoint(path) if path.exists() else {}
        if "final_state_dict" not in ticket:
            raise UserError(f"{path} holds no final weights of level {level}: retrain the parent with "
                            "--save_cycle_weights both (or final)")
        return ticket["final_state_dict"]

    return ParentTicket(masks=[{n: m.bool() for n, m in masks.items()} for masks in results["masks"]],
                        initial_state=initial, rewind_state=results.get("rewind_state_dict") or initial,
                        seed=config.seed, bias_init=config.bias_init, final_state=final_state,
                        structure=parse_structure(config.prune_structure))


def replayed_generator(seed: int, epochs: int, train_size: int) -> torch.Generator:
    """The run's batch-order generator as it stands after ``epochs`` epochs (each draws one
    permutation of the training split)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        torch.randperm(train_size, generator=generator)
    return generator


class BranchRun(LotteryRun):
    """The branch ``config.branch`` of the run ``config.parent``, whose levels ``parent`` holds."""

    def __init__(self, config: RunConfig, splits, device: torch.device, parent: ParentTicket,
                 parent_epochs: list[int], **options):
        self.branch = get_branch(config.branch)
        self.args = self.branch.parse_args(config.branch_args)
        self.levels = list(config.branch_levels) or self.branch.default_levels(parent.levels)
        wrong = [k for k in self.levels if not 0 <= k < parent.levels]
        if wrong or not self.levels:
            raise UserError(f"--branch_levels {' '.join(map(str, wrong))}: the run has levels 0 to "
                            f"{parent.levels - 1}")
        train_config = dataclasses.replace(
            config.parent, **self.branch.training_overrides(self.args),
            prune_iterations=len(self.levels) * self.branch.copies, rewind_to="init", early_bird=False,
            ticket_source="", init_from="")
        super().__init__(train_config, splits, device, **options)
        self.identity = config
        self.parent = parent
        self.parent_epochs = parent_epochs      # epochs the parent trained before each level
        self.finals: list[dict] = []            # final weights of this level's finished copies
        self.level_results: list[dict] = []
        self._enter_cycle()

    @property
    def level(self) -> int:
        return self.levels[self.cycle // self.branch.copies]

    @property
    def copy(self) -> int:
        return self.cycle % self.branch.copies

    def _enter_cycle(self) -> None:
        start = self.branch.start(self.parent, self.level, self.args, self.copy)
        self.masks = {name: mask.to(self.device) for name, mask in start.masks.items()}
        rewind(self.model, {n: t.to(self.device) for n, t in start.state.items()}, self.masks)
        self.optimizer = self.new_optimizer()
        n = len(self.splits.train)
        if start.data_order == "ticket":
            self.generator = replayed_generator(self.config.seed, self.parent_epochs[self.level], n)
        else:
            stream = f"{self.branch.name}/copy{self.copy}"
            self.generator = derived_generator(self.config.seed, stream, self.level)

    def epoch_hooks(self) -> dict:
        hooks = epoch_hooks(self)
        if self.branch.lr == "final":
            config, ipe = self.config, self.iterations_per_epoch
            final = self.schedule.lr_at(config.end_iter * ipe - 1, ipe, config.end_iter)
            hooks["lr_at_step"] = lambda step: final
        return hooks

    def _finish_cycle(self) -> None:
        super()._finish_cycle()
        self.cycles[-1].cycle = self.level
        if self.branch.copies > 1:
            self.finals.append(cpu_state(clone_state(self.model)))
        if self.copy == self.branch.copies - 1 and self.finals:
            result = self.branch.finish_level(self.level, self.finals, cpu_state(self.masks),
                                              self._test_error, self.args)
            if result is not None:
                self.level_results.append({"level": self.level,
                                           "percent_remaining": self.cycles[-1].percent_remaining, **result})
            self.finals = []

    def _test_error(self, state: dict) -> float:
        model = self.model
        saved = clone_state(model)
        model.load_state_dict({n: t.to(self.device) for n, t in state.items()})
        runtime = self.runtime
        _, accuracy = evaluate(runtime.forward, self.splits.test, self.eval_batch_size,
                               autocast_dtype=runtime.autocast_dtype, memory_format=runtime.memory_format)
        model.load_state_dict({n: t.to(self.device) for n, t in saved.items()})
        return 100.0 - accuracy

    def _start_next_cycle(self) -> None:
        self.next_cycle()
        self._enter_cycle()

    def extra_state(self) -> dict:
        return {**self.extra_results(), "branch_finals": list(self.finals)}

    def extra_results(self) -> dict:
        return {"branch_levels": list(self.level_results)}

    def load_extra_state(self, state: dict) -> None:
        self.level_results = list(state.get("branch_levels", []))
        self.finals = list(state.get("branch_finals", []))


def parent_epochs(results: Mapping[str, Any]) -> list[int]:
    """Epochs of training the parent run did before each of its levels."""
    config = RunConfig.from_dict(results["args"])
    early = (results.get("early_bird") or {}).get("epoch")
    dense = early if early is not None else config.end_iter
    return [0] + [dense + (k - 1) * config.end_iter for k in range(1, len(results["masks"]))]
