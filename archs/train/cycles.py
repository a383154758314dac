"""Finding winning tickets: iterative magnitude pruning with rewinding (Frankle & Carbin, 2019).

One :class:`LotteryRun` trains one seed: cycle 0 trains the dense network; each later cycle
prunes ``prune_percent`` % of the surviving weights of every convolution and linear weight
by magnitude, rewinds the survivors and every other parameter to the initial state, and
trains again with a fresh optimiser. The whole state of a run is a plain dict of tensors
(:meth:`LotteryRun.state_dict`, see :mod:`archs.train.checkpoint`), saved every
``checkpoint_every`` epochs so an interrupted run resumes to the same result. Energy phases
are measured by :class:`archs.train.energy.EnergyPhases`.
"""
from __future__ import annotations

import math
import secrets
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from archs import build_model
from archs.early_bird import EarlyBirdDetector
from archs.optim import build_optimizer
from archs.pruning import (Masks, PruningPlan, full_masks, parse_structure, percent_remaining, prunable_names,
                           rewind)
from archs.train.checkpoint import restore_run, run_state
from archs.train.energy import EnergyPhases
from archs.train.loop import clone_state, cpu_state, state_fingerprint, train_epoch
from archs.train.runtime import checked_schedule, iterations_per_epoch, prepare_runtime
from archs.train.start import starting_point
from archs.train.steps import epoch_hooks, progress_text, pruning_round, record_epoch, update_early_bird
from archs.train.summary import CycleSummary, cycle_ticket, log_layer_table, run_results
from data.datasets import DataSplits, get_spec
from data.jobs import TrainingOptions   # the job's defaults, declared once
from data.paths import SAVE_DIR
from data.runs import LOG_KEYS, RunConfig
from archs.runtime import seed_everything
from utils import TrainingDiverged, UserError, get_logger


class LotteryRun:
    """The state of one seed's run and the procedure that advances it epoch by epoch.

    ``recorder_factory`` (CO2 tracking mode only) makes a per-task recorder (see
    :class:`data.energy.emissions.EmissionsRecorder`); it is called when training starts or resumes.
    ``on_cycle_end`` receives each finished cycle's ticket (see :meth:`cycle_ticket`), so that
    every level of pruning can be replayed later.
    """

    def __init__(self, config: RunConfig, splits: DataSplits, device: torch.device,
                 recorder_factory: Callable | None = None, eval_batch_size: int | None = None,
                 on_cycle_end: Callable[[dict], None] | None = None,
                 print_freq: int = TrainingOptions.print_freq,
                 source_root: Path | str = SAVE_DIR, compile_model: bool = False,
                 deterministic: bool = False):
        self.config = config
        self.splits = splits
        self.device = device
        self.recorder_factory = recorder_factory
        self.on_cycle_end = on_cycle_end
        self.print_freq = print_freq   # display only: not a setting of the run
        self.eval_batch_size = eval_batch_size or config.batch_size
        self.log = get_logger()

        seed_everything(config.seed, deterministic)
        spec = get_spec(config.dataset)
        model = build_model(config.arch_type, spec.in_channels, spec.image_size, spec.num_classes, device,
                            config.bias_init)
        self.model, self.runtime = prepare_runtime(config, model, device, compile_model)
        # A transferred ticket or a pretrained state replaces the seed's initial values (the
        # seed's draw stays the same, so nothing else of the run changes).
        start_masks = starting_point(config, self.model, source_root)
        self.initial_state = clone_state(self.model)
        self.initial_fingerprint = state_fingerprint(self.initial_state)  # computed once, not per checkpoint
        self.prunable = prunable_names(self.model)
        self.plan = PruningPlan(config.prune_percent, config.prune_scope, config.output_prune_percent,
                                tuple(config.prune_ignore), parse_structure(config.prune_structure))
        try:
            self.plan.percent_for_layer(self.prunable)   # an unknown --prune_ignore layer fails here
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.rewind_point, self.schedule = checked_schedule(config, self.iterations_per_epoch)
        # The state survivors are rewound to: the initial one, or (late rewinding) the one reached
        # after the rewind point of cycle 0, captured when training gets there.
        self.rewind_state: dict[str, torch.Tensor] | None = (
            self.initial_state if self.rewind_point.kind == "init" else None)
        self.early_bird = EarlyBirdDetector() if config.early_bird else None
        self.early_bird_epoch: int | None = None   # epoch of cycle 0 at which the ticket was drawn
        self.masks: Masks = {name: m.to(device) for name, m in (start_masks or full_masks(self.model)).items()}
        self.mask_history: list[Masks] = []
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = self.new_optimizer()
        self.cycle = 0
        self.epoch = 0                 # next epoch to run in this cycle
        self.images_seen = 0
        self.elapsed_before = 0.0        # wall-clock seconds of earlier sessions (resume)
        self.cycle_elapsed_before = 0.0  # seconds of the current cycle in earlier sessions
        self._session_start = self._cycle_session_start = time.perf_counter()
        self.logs: dict[str, dict[int, float]] = {key: {} for key in LOG_KEYS}
        # Images seen -> cumulative training-only record; likewise for evaluation (--co2_evaluate).
        self.emissions: dict[int, dict[str, float]] = {}
        self.evaluation_emissions: dict[int, dict[str, float]] = {}
        self.meter = EnergyPhases()
        # Names this run's checkpoint side files, so that a fresh run never mistakes a stale one.
        self.lineage = secrets.token_hex(4)
        self.identity = config   # the settings the results and checkpoints are made under
        self.cycles: list[CycleSummary] = []
        self.best: dict | None = None

    # ------------------------------------------------------------------ state
    def new_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model.parameters(), self.config.optimizer, self.config.lr,
                               self.config.decay, self.config.momentum)

    @property
    def iterations_per_epoch(self) -> int:
        return iterations_per_epoch(self.config, len(self.splits.train))

    @property
    def cycle_length(self) -> int:
        """Epochs of the current cycle: the dense one ends early at an early-bird ticket."""
        if self.cycle == 0 and self.early_bird_epoch is not None:
            return self.early_bird_epoch
        return self.config.end_iter

    @property
    def evaluates(self) -> bool:
        """Whether validation and test are evaluated (always, except in plain CO2 tracking mode)."""
        return not self.config.co2_tracking_mode or self.config.co2_evaluate

    # The energy totals (see EnergyPhases), read by the results and the reports.
    energy = property(lambda self: self.meter.energy)
    unmeasured = property(lambda self: self.meter.unmeasured)
    energy_provenance = property(lambda self: self.meter.provenance)

    def state_dict(self) -> dict:
        return run_state(self)

    def load_state_dict(self, state: dict) -> None:
        restore_run(self, state)

    def late_rewind_state(self) -> dict | None:
        if self.rewind_point.kind == "init" or self.rewind_state is None:
            return None
        return cpu_state(self.rewind_state)

    @property
    def finished(self) -> bool:
        return self.cycle >= self.config.prune_iterations

    def elapsed(self) -> float:
        """Wall-clock seconds since the run began, across resumed sessions."""
        return self.elapsed_before + time.perf_counter() - self._session_start

    def cycle_elapsed(self) -> float:
        return self.cycle_elapsed_before + time.perf_counter() - self._cycle_session_start

    # ------------------------------------------------------------------ procedure
    def run(self, checkpoint: Callable[["LotteryRun"], None] | None = None,
            show_progress: bool = True,
            checkpoint_every: int = TrainingOptions.checkpoint_every) -> None:
        """Train until every cycle is done, calling ``checkpoint(self)`` every ``checkpoint_every``
        epochs of a cycle and at each cycle's end."""
        if checkpoint_every < 1:
            raise UserError(f"--checkpoint_every must be at least 1, not {checkpoint_every}")
        if self.finished:  # resumed from the checkpoint of a finished run: only saving is left
            return
        config = self.config
        recorder = self.recorder_factory() if config.co2_tracking_mode and self.recorder_factory else None
        self._session_start = self._cycle_session_start = time.perf_counter()
        try:
            if recorder is not None:
                self.meter.adopt_provenance(recorder.provenance(), str(self.device))
            self.meter.recorder = recorder
            while not self.finished:
                self._run_cycle(checkpoint, checkpoint_every, show_progress)
        finally:
            self.meter.recorder = None
            if recorder is not None:
                recorder.stop()

    def _run_cycle(self, checkpoint, checkpoint_every, show_progress) -> None:
        config, measured = self.config, self.meter.measured
        if self.epoch == 0:
            log_layer_table(self.log, self.masks, config.seed, self.cycle, config.prune_iterations, self.plan)
        masked = [(weight, self.masks[name].to(weight.dtype))
                  for name, weight in self.model.named_parameters() if name in self.masks
                  and not bool(self.masks[name].all())]
        remaining = percent_remaining(self.masks)
        bar = tqdm(total=config.end_iter, initial=self.epoch, leave=True, dynamic_ncols=True,
                   desc=f"cycle {self.cycle + 1}/{config.prune_iterations} ({remaining:.1f}% left)",
                   unit="epoch", disable=not show_progress)
        with bar:
            while self.epoch < self.cycle_length:
                with measured("training"):
                    loss, accuracy = train_epoch(self.model, self.optimizer, self.splits.train,
                                                 config.batch_size, self.generator, masked,
                                                 autocast_dtype=self.runtime.autocast_dtype,
                                                 memory_format=self.runtime.memory_format,
                                                 forward=self.runtime.forward, **self.epoch_hooks())
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss} in cycle {self.cycle + 1}, epoch "
                        f"{self.epoch + 1} of seed {config.seed}; lower --lr (now {config.lr}). "
                        "Results of the seeds finished before are saved")
                self.epoch += 1
                self.images_seen += len(self.splits.train)
                if self.early_bird is not None and self.cycle == 0 and self.early_bird_epoch is None:
                    with measured("training"):   # drawing the mask is the method's work
                        if update_early_bird(self):
                            bar.total = self.epoch
                cycle_ends = self.epoch == self.cycle_length
                if self.epoch % config.valid_freq == 0 or cycle_ends:
                    record_epoch(self, loss, accuracy, remaining)
                if self.epoch % self.print_freq == 0 or cycle_ends:
                    bar.set_postfix_str(progress_text(self, loss))
                bar.update(1)
                if cycle_ends:
                    self._finish_cycle()
                    if self.cycle + 1 < config.prune_iterations:
                        with measured("training"):  # pruning and rewinding are the method's work
                            self._start_next_cycle()
                    else:
                        self.cycle += 1  # past the last cycle: the run is finished
                # A cycle's end (epoch back at 0, or the run finished) is always saved: it is
                # where the masks change.
                if checkpoint is not None and (self.epoch % checkpoint_every == 0 or self.finished):
                    with measured("checkpoint"):
                        checkpoint(self)
                if self.epoch == 0:   # a new cycle started: leave this bar
                    break

    def _finish_cycle(self) -> None:
        if self.best is None:  # CO2 tracking mode: nothing evaluated, the ticket is the final state
            self.best = {"state": clone_state(self.model), "val_accuracy": math.nan,
                         "test_accuracy": math.nan, "epoch": self.epoch, "images_seen": self.images_seen}
        self.cycles.append(CycleSummary(
            cycle=self.cycle, percent_remaining=percent_remaining(self.masks),
            best_val_accuracy=self.best["val_accuracy"], test_accuracy_at_best=self.best["test_accuracy"],
            best_epoch=self.best["epoch"], best_images_seen=self.best["images_seen"],
            seconds=self.cycle_elapsed(),
            final_test_accuracy=self.logs["test_accuracy"].get(self.images_seen, math.nan)))
        self.mask_history.append(cpu_state(self.masks))
        if self.on_cycle_end is not None:
            with self.meter.measured("checkpoint"):   # writing files is never training energy
                self.on_cycle_end(cycle_ticket(self))

    def epoch_hooks(self) -> dict:
        return epoch_hooks(self)

    # What a subclass keeps besides the run's state (checkpointed) and adds to the results.
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def extra_results(self) -> dict:
        return {}

    def _start_next_cycle(self) -> None:
        """Prune, then set the survivors' starting values and a fresh optimiser."""
        new_masks, start = pruning_round(self)
        self.masks = {name: mask.to(self.device) for name, mask in new_masks.items()}
        rewind(self.model, start, self.masks)
        self.optimizer = self.new_optimizer()
        self.next_cycle()

    def next_cycle(self) -> None:
        self.cycle += 1
        self.epoch = 0
        self.cycle_elapsed_before = 0.0
        self._cycle_session_start = time.perf_counter()
        self.best = None

    # ------------------------------------------------------------------ results
    def results(self, versions: dict[str, str]) -> dict:
        """The saved results (see :func:`archs.train.summary.run_results`)."""
        return run_results(self, versions)
