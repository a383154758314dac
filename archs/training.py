"""Finding winning tickets: iterative magnitude pruning with rewinding (Frankle & Carbin, 2019).

One :class:`LotteryRun` trains one seed: cycle 0 trains the dense network; each later cycle
prunes ``prune_percent`` % of the surviving weights of every convolution and linear weight
by magnitude, rewinds the survivors and every other parameter to the initial state, and
trains again with a fresh Adam. The whole state of a run is a plain dict of tensors
(:meth:`LotteryRun.state_dict`), saved every ``checkpoint_every`` epochs (by a
:class:`Checkpointer`) so an interrupted run resumes to the same result.

Energy (CO2 tracking mode): training epochs (and pruning), evaluation and checkpoint writing
are each measured as their own CodeCarbon task, so no training figure ever contains
evaluation or file writing. The run keeps the sum of each phase's tasks in its state, so a
resumed run continues from exactly what was measured up to its checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from archs import build_model
from archs.api import next_ticket, pretrained_state, source_ticket, transfer
from archs.early_bird import EarlyBirdDetector
from archs.masks import (Masks, PruningPlan, count_alive, derived_generator, full_masks, layer_table_rows,
                         magnitude_scores, parse_rewind_point, percent_remaining, prunable_names, rewind)
from archs.optim import LrSchedule, build_optimizer, parse_duration, set_learning_rate
from data.datasets import DataSplits, Split, get_spec, iterate_batches
from data.emissions import PHASES, accumulate, provenance_mismatch, zero_record
from data.runs import LOG_KEYS, RESULTS_FORMAT_VERSION, RunConfig
from data.sources import find_referenced_file, parse_reference
from archs.runtime import seed_everything
from data.store import atomic_torch_save, load_checkpoint
from utils import TrainingDiverged, UserError, format_table, get_logger


@dataclass
class CycleSummary:
    cycle: int
    percent_remaining: float
    best_val_accuracy: float      # NaN when nothing was evaluated (CO2 tracking mode)
    test_accuracy_at_best: float
    best_epoch: int               # 1-based epoch of the cycle; the last one when not evaluated
    best_images_seen: int
    seconds: float


def clone_state(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def state_fingerprint(state: dict[str, torch.Tensor]) -> float:
    """A number that changes if any value of the state changes (sum of |x| in float64)."""
    return sum(float(t.detach().double().abs().sum()) for t in state.values())


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in state.items()}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The mixed-precision context of a loop (made once per loop, entered at each step): a
    no-op unless ``dtype`` (bf16) is asked for, so the fp32 loop pays nothing for it."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int,
             autocast_dtype: torch.dtype | None = None,
             memory_format: torch.memory_format | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    precision = autocast(device, autocast_dtype)
    for images, labels in iterate_batches(split, batch_size):
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        with precision:
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train(was_training)
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (after zero-padding by ``padding`` pixels) and horizontal flip of every image,
    done on the images' device with one gather (no per-image Python work). The draws come from
    the CPU ``generator``, so a run is reproducible on any device."""
    n, _, height, width = images.shape
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = torch.arange(height, device=images.device)[None, :] + shifts[0][:, None]      # n x H
    cols = torch.arange(width, device=images.device)[None, :] + shifts[1][:, None]       # n x W
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]    # n x H x W x C
    return cropped.permute(0, 3, 1, 2).contiguous()


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch_size: int,
                generator: torch.Generator, masked: list[tuple[torch.Tensor, torch.Tensor]],
                lr_at_step: Callable[[int], float] | None = None,
                after_step: Callable[[int], None] | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                autocast_dtype: torch.dtype | None = None,
                memory_format: torch.memory_format | None = None,
                forward: nn.Module | None = None) -> tuple[float, float]:
    """One pass over ``split``; returns mean loss and accuracy (percent).

    After each optimiser step the pruned weights are multiplied by their mask, so they stay
    exactly zero whatever the optimiser does (Adam's moments and weight decay included),
    while a live weight is free to pass through zero. ``lr_at_step(k)`` sets the learning rate
    before step k of the epoch (schedules, warmup); ``after_step(k)`` runs after it (late
    rewinding saves its state there); ``augment`` transforms each training batch.
    ``autocast_dtype`` (bf16) and ``memory_format`` (channels_last) are the GPU speed options;
    ``forward`` is a compiled view of ``model`` (same parameters) when torch.compile is used.
    Nothing in the loop waits for the device: loss and accuracy stay on it until the epoch ends.
    """
    model.train()
    forward = forward or model
    device = split.images.device
    weights, masks = [w for w, _ in masked], [m for _, m in masked]
    precision = autocast(device, autocast_dtype)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for step, (images, labels) in enumerate(iterate_batches(split, batch_size, generator)):
        if lr_at_step is not None:
            set_learning_rate(optimizer, lr_at_step(step))
        if augment is not None:
            images = augment(images)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with precision:
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if weights:   # every mask in one fused call
                torch._foreach_mul_(weights, masks)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
        if after_step is not None:
            after_step(step)
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n


class LotteryRun:
    """The state of one seed's run and the procedure that advances it epoch by epoch.

    ``recorder_factory`` (CO2 tracking mode only) makes a per-task recorder (see
    :class:`data.emissions.EmissionsRecorder`); it is called when training starts or resumes. ``on_cycle_end`` receives each
    finished cycle's ticket (see :meth:`cycle_ticket`), so that every level of pruning can be
    replayed later.
    """

    def __init__(self, config: RunConfig, splits: DataSplits, device: torch.device,
                 recorder_factory: Callable | None = None, eval_batch_size: int | None = None,
                 on_cycle_end: Callable[[dict], None] | None = None, print_freq: int = 1,
                 source_root: Path | str = "saves", compile_model: bool = False,
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
        self.model = build_model(config.arch_type, spec.in_channels, spec.image_size,
                                 spec.num_classes, device)
        # Settings of the arithmetic belong to the process, and a previous run in it may have
        # changed them, so each is set explicitly either way.
        torch.set_flush_denormal(config.flush_denormal)
        # Speed on GPUs: TF32 (a setting of the run), and channels_last only where
        # convolutions meet a GPU.
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = config.precision == "tf32"
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
        has_convolutions = any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in self.model.modules())
        self.memory_format = (torch.channels_last if device.type == "cuda" and has_convolutions
                              else None)
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        # A compiled view shares the model's parameters: state dicts and masks stay the model's.
        self.forward_model = torch.compile(self.model) if compile_model else self.model
        # A transferred ticket or a pretrained state replaces the seed's initial values (the
        # seed's draw stays the same, so nothing else of the run changes).
        start_masks = starting_point(config, self.model, source_root)
        self.initial_state = clone_state(self.model)
        self.initial_fingerprint = state_fingerprint(self.initial_state)  # computed once, not per checkpoint
        self.prunable = prunable_names(self.model)
        self.plan = PruningPlan(config.prune_percent, config.prune_scope, config.output_prune_percent,
                                tuple(config.prune_ignore))
        try:
            self.plan.percent_for_layer(self.prunable)   # an unknown --prune_ignore layer fails here
            self.rewind_point = parse_rewind_point(config.rewind_to)
            warmup = None if config.warmup == "none" else parse_duration(config.warmup)
            self.schedule = LrSchedule(config.lr, config.lr_schedule, warmup)
            self.schedule.check(self.iterations_per_epoch, config.end_iter)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if (self.rewind_point.kind != "init"
                and self.rewind_point.iteration(self.iterations_per_epoch) > config.end_iter * self.iterations_per_epoch):
            raise UserError(f"--rewind_to {config.rewind_to} is past the end of the dense cycle "
                            f"({config.end_iter} epochs of {self.iterations_per_epoch} iterations)")
        # The state survivors are rewound to: the initial one, or (late rewinding) the one reached
        # after the rewind point of cycle 0, captured when training gets there.
        self.rewind_state: dict[str, torch.Tensor] | None = (
            self.initial_state if self.rewind_point.kind == "init" else None)
        self.early_bird = EarlyBirdDetector() if config.early_bird else None
        self.early_bird_epoch: int | None = None   # epoch of cycle 0 at which the ticket was drawn
        self.masks: Masks = {name: m.to(device) for name, m in (start_masks or full_masks(self.model)).items()}
        self.mask_history: list[Masks] = []
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = self._new_optimizer()
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
        # Sum of every measured task of each phase, across sessions; tasks CodeCarbon could not
        # measure are counted apart, never added as NaN.
        self.energy: dict[str, dict[str, float]] = {phase: zero_record() for phase in PHASES}
        self.unmeasured: dict[str, dict[str, float]] = {phase: {"tasks": 0, "seconds": 0.0}
                                                        for phase in PHASES}
        self.energy_provenance: dict | None = None
        self._recorder = None
        # Names this run's checkpoint side files, so that a fresh run never mistakes a stale one.
        self.lineage = secrets.token_hex(4)
        self.cycles: list[CycleSummary] = []
        self.best: dict | None = None

    # ------------------------------------------------------------------ state
    def _new_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model.parameters(), self.config.optimizer, self.config.lr,
                               self.config.decay, self.config.momentum)

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(len(self.splits.train) / self.config.batch_size)

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

    def state_dict(self) -> dict:
        """The whole state, self-contained. ``parts`` holds what changes only at a cycle's end
        or a new best (masks, best weights), each under a tag that changes with its content, so
        that a :class:`Checkpointer` rewrites it only when it changed."""
        best = None if self.best is None else {**self.best, "state": cpu_state(self.best["state"])}
        best_tag = "none" if self.best is None else str(self.best["images_seen"])
        return {
            "format_version": RESULTS_FORMAT_VERSION,
            "settings": self.config.training_settings(),
            "cycle": self.cycle, "epoch": self.epoch, "images_seen": self.images_seen,
            "elapsed": self.elapsed(), "cycle_elapsed": self.cycle_elapsed(),
            "model": cpu_state(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            # The initial state is rebuilt from the seed on resume, not stored every epoch
            # (45 MB for ResNet18); its fingerprint proves the rebuild is the same.
            "initial_fingerprint": self.initial_fingerprint,
            "generator": self.generator.get_state(),
            "logs": self.logs, "emissions": self.emissions,
            "evaluation_emissions": self.evaluation_emissions,
            "energy": self.energy, "unmeasured": self.unmeasured,
            "energy_provenance": self.energy_provenance,
            "lineage": self.lineage,
            "cycles": [asdict(c) for c in self.cycles],
            "parts": {
                "masks": {"tag": f"{self.lineage}-c{self.cycle}-h{len(self.mask_history)}",
                          "value": {"masks": cpu_state(self.masks),
                                    "mask_history": [cpu_state(m) for m in self.mask_history]}},
                "best": {"tag": f"{self.lineage}-{best_tag}", "value": best},
                # Late rewinding: captured once in cycle 0, so written once.
                "rewind": {"tag": f"{self.lineage}-{'late' if self._late_rewind_state() else 'init'}",
                           "value": self._late_rewind_state()},
            },
            "early_bird": None if self.early_bird is None else {
                "detector": self.early_bird.state_dict(), "epoch": self.early_bird_epoch},
        }

    def _late_rewind_state(self) -> dict | None:
        if self.rewind_point.kind == "init" or self.rewind_state is None:
            return None
        return cpu_state(self.rewind_state)

    def load_state_dict(self, state: dict) -> None:
        if state.get("settings") != self.config.training_settings():
            raise UserError("the checkpoint was made with other settings "
                            f"({state.get('settings')}); rerun without --resume to start over")
        if "parts" not in state or "energy" not in state:
            raise UserError("the checkpoint was written by an older version of this toolkit; "
                            "rerun without --resume to start over")
        self.cycle, self.epoch = state["cycle"], state["epoch"]
        self.images_seen = state["images_seen"]
        self.elapsed_before, self.cycle_elapsed_before = state["elapsed"], state["cycle_elapsed"]
        if state["initial_fingerprint"] != self.initial_fingerprint:
            raise UserError("this machine does not rebuild the checkpoint's initial weights from the "
                            "seed (another torch version?); rerun without --resume to start over")
        self.model.load_state_dict(state["model"])
        masks = state["parts"]["masks"]["value"]
        self.masks = {k: v.to(self.device) for k, v in masks["masks"].items()}
        self.mask_history = masks["mask_history"]
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.logs, self.emissions = state["logs"], state["emissions"]
        self.evaluation_emissions = state["evaluation_emissions"]
        # What was measured up to the checkpoint, and how: a resumed CO2 run continues these
        # totals, and refuses to start if this session would measure differently.
        self.energy, self.unmeasured = state["energy"], state["unmeasured"]
        self.energy_provenance = state["energy_provenance"]
        self.lineage = state["lineage"]
        self.cycles = [CycleSummary(**c) for c in state["cycles"]]
        best = state["parts"]["best"]["value"]
        self.best = None if best is None else {
            **best, "state": {k: v.to(self.device) for k, v in best["state"].items()}}
        late = state["parts"].get("rewind", {}).get("value")
        if late is not None:
            self.rewind_state = {k: v.to(self.device) for k, v in late.items()}
        if self.early_bird is not None and state.get("early_bird"):
            self.early_bird.load_state_dict(state["early_bird"]["detector"])
            self.early_bird_epoch = state["early_bird"]["epoch"]

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
            show_progress: bool = True, checkpoint_every: int = 1) -> None:
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
                self._adopt_provenance(recorder.provenance())
            self._recorder = recorder
            while not self.finished:
                self._run_cycle(checkpoint, checkpoint_every, show_progress)
        finally:
            self._recorder = None
            if recorder is not None:
                recorder.stop()

    def _adopt_provenance(self, provenance: dict) -> None:
        current = {**provenance, "device": str(self.device)}
        if self.energy_provenance is not None:
            difference = provenance_mismatch(self.energy_provenance, current)
            if difference:
                raise UserError(f"cannot resume: this session would measure energy differently from "
                                f"the checkpoint ({difference}); resume on the same machine with the "
                                f"same CodeCarbon settings, or rerun without --resume to start over")
        self.energy_provenance = current

    @contextlib.contextmanager
    def _measured(self, phase: str):
        """Measure the enclosed work as one CodeCarbon task of ``phase`` (when tracking).

        Work interrupted by an exception is redone after a resume, so its energy is dropped.
        """
        recorder = self._recorder
        if recorder is None:
            yield
            return
        start = time.perf_counter()
        recorder.start_task(phase)
        completed = False
        try:
            yield
            completed = True
        finally:
            record = recorder.stop_task()
            if completed:
                if record is None:
                    self.unmeasured[phase]["tasks"] += 1
                    self.unmeasured[phase]["seconds"] += time.perf_counter() - start
                else:
                    self.energy[phase] = accumulate(self.energy[phase], record)

    def _run_cycle(self, checkpoint, checkpoint_every, show_progress) -> None:
        config = self.config
        if self.epoch == 0:
            self._log_layer_table()
        masked = [(weight, self.masks[name].to(weight.dtype))
                  for name, weight in self.model.named_parameters() if name in self.masks
                  and not bool(self.masks[name].all())]
        remaining = percent_remaining(self.masks)
        bar = tqdm(total=config.end_iter, initial=self.epoch, leave=True, dynamic_ncols=True,
                   desc=f"cycle {self.cycle + 1}/{config.prune_iterations} ({remaining:.1f}% left)",
                   unit="epoch", disable=not show_progress)
        with bar:
            while self.epoch < self.cycle_length:
                with self._measured("training"):
                    loss, accuracy = train_epoch(self.model, self.optimizer, self.splits.train,
                                                 config.batch_size, self.generator, masked,
                                                 autocast_dtype=self.autocast_dtype,
                                                 memory_format=self.memory_format,
                                                 forward=self.forward_model, **self._epoch_hooks())
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss} in cycle {self.cycle + 1}, epoch "
                        f"{self.epoch + 1} of seed {config.seed}; lower --lr (now {config.lr}). "
                        "Results of the seeds finished before are saved")
                self.epoch += 1
                self.images_seen += len(self.splits.train)
                if self.early_bird is not None and self.cycle == 0 and self.early_bird_epoch is None:
                    with self._measured("training"):   # drawing the mask is the method's work
                        if self.early_bird.update(self._next_masks_by_magnitude()):
                            self.early_bird_epoch = self.epoch
                            self.log.info("Early-bird ticket drawn at epoch %d of %d (masks stable for %d "
                                          "epochs); %d dense epoch(s) saved", self.epoch, config.end_iter,
                                          self.early_bird.window, config.end_iter - self.epoch)
                            bar.total = self.epoch
                cycle_ends = self.epoch == self.cycle_length
                if self.epoch % config.valid_freq == 0 or cycle_ends:
                    self._record(loss, accuracy, remaining)
                if self.epoch % self.print_freq == 0 or cycle_ends:
                    bar.set_postfix_str(self._progress_text(loss))
                bar.update(1)
                if cycle_ends:
                    self._finish_cycle()
                    if self.cycle + 1 < config.prune_iterations:
                        with self._measured("training"):  # pruning and rewinding are the method's work
                            self._start_next_cycle()
                    else:
                        self.cycle += 1  # past the last cycle: the run is finished
                # A cycle's end (epoch back at 0, or the run finished) is always saved: it is
                # where the masks change.
                if checkpoint is not None and (self.epoch % checkpoint_every == 0 or self.finished):
                    with self._measured("checkpoint"):
                        checkpoint(self)
                if self.epoch == 0:   # a new cycle started: leave this bar
                    break

    def _record(self, loss, accuracy, remaining) -> None:
        key = self.images_seen
        self.logs["time"][key] = self.elapsed()
        self.logs["non_zeros_weights"][key] = remaining
        self.logs["train_loss"][key] = loss
        self.logs["train_accuracy"][key] = accuracy
        if self.evaluates:
            with self._measured("evaluation"):
                options = dict(autocast_dtype=self.autocast_dtype, memory_format=self.memory_format)
                val_loss, val_accuracy = evaluate(self.forward_model, self.splits.val, self.eval_batch_size,
                                                  **options)
                test_loss, test_accuracy = evaluate(self.forward_model, self.splits.test,
                                                    self.eval_batch_size, **options)
            self.logs["val_loss"][key], self.logs["val_accuracy"][key] = val_loss, val_accuracy
            self.logs["test_loss"][key], self.logs["test_accuracy"][key] = test_loss, test_accuracy
            if self.best is None or val_accuracy > self.best["val_accuracy"]:
                self.best = {"state": clone_state(self.model), "val_accuracy": val_accuracy,
                             "test_accuracy": test_accuracy, "epoch": self.epoch, "images_seen": key}
        if self._recorder is not None:
            training = self.energy["training"]
            self.emissions[key] = dict(training)
            self.logs["co2"][key] = training["emissions"]
            if self.evaluates:
                self.evaluation_emissions[key] = dict(self.energy["evaluation"])
            self._recorder.append_row(self._csv_row(key))

    def _csv_row(self, key: int) -> dict:
        """One row of the run's CSV: the cumulative training record, then the other phases' totals."""
        row = {"images_seen": key, "cycle": self.cycle + 1, "epoch": self.epoch, **self.energy["training"]}
        for phase in PHASES[1:]:
            for name in ("duration", "energy_consumed", "emissions"):
                row[f"{phase}_{name}"] = self.energy[phase][name]
        row["unmeasured_tasks"] = sum(int(u["tasks"]) for u in self.unmeasured.values())
        return row

    def _progress_text(self, loss: float) -> str:
        if self.config.co2_tracking_mode:
            co2 = self.logs["co2"]
            return f"loss {loss:.4f}" + (f"  CO2 {co2[max(co2)]:.2e} kg" if co2 else "")
        val = self.logs["val_accuracy"]
        last = val[max(val)] if val else float("nan")
        best = self.best["val_accuracy"] if self.best else float("nan")
        return f"loss {loss:.4f}  val acc {last:.2f}%  best {best:.2f}%"

    def _finish_cycle(self) -> None:
        if self.best is None:  # CO2 tracking mode: nothing evaluated, the ticket is the final state
            self.best = {"state": clone_state(self.model), "val_accuracy": math.nan,
                         "test_accuracy": math.nan, "epoch": self.epoch, "images_seen": self.images_seen}
        self.cycles.append(CycleSummary(
            cycle=self.cycle, percent_remaining=percent_remaining(self.masks),
            best_val_accuracy=self.best["val_accuracy"], test_accuracy_at_best=self.best["test_accuracy"],
            best_epoch=self.best["epoch"], best_images_seen=self.best["images_seen"],
            seconds=self.cycle_elapsed()))
        self.mask_history.append(cpu_state(self.masks))
        if self.on_cycle_end is not None:
            with self._measured("checkpoint"):   # writing files is never training energy
                self.on_cycle_end(self.cycle_ticket())

    def cycle_ticket(self) -> dict:
        """The current cycle's ticket: its masks, its best and final weights, its summary."""
        return {"cycle": self.cycle, "masks": cpu_state(self.masks),
                "best_state_dict": cpu_state(self.best["state"]),
                "final_state_dict": cpu_state(self.model.state_dict()),
                "summary": asdict(self.cycles[-1])}

    def _epoch_hooks(self) -> dict:
        """The per-step work of this epoch besides the step itself: learning-rate schedule,
        capture of the late-rewinding state, augmentation. Empty for the original's setting, so
        its training loop stays exactly as lean."""
        config, hooks = self.config, {}
        ipe, first = self.iterations_per_epoch, self.epoch * self.iterations_per_epoch
        if config.lr_schedule != "none" or config.warmup != "none":
            hooks["lr_at_step"] = lambda step: self.schedule.lr_at(first + step, ipe, config.end_iter)
        if self.cycle == 0 and self.rewind_state is None:
            at = self.rewind_point.iteration(ipe)

            def capture(step: int) -> None:
                if first + step + 1 == at:
                    self.rewind_state = clone_state(self.model)

            hooks["after_step"] = capture
        if config.augment:
            generator = derived_generator(config.seed, "augment", self.cycle * 100_000 + self.epoch)
            hooks["augment"] = lambda images: augment_batch(images, generator)
        return hooks

    def _next_masks_by_magnitude(self) -> Masks:
        weights = dict(self.model.named_parameters())
        return self.plan.prune(magnitude_scores(weights, self.masks), self.masks, self.cycle + 1)

    def _start_next_cycle(self) -> None:
        """Prune, then set the survivors' starting values (rewound, or re-drawn for the reinit
        control) and a fresh optimiser: :func:`archs.api.next_ticket`, the one implementation
        of a pruning round (the Python API's too). SNIP scores one training batch drawn for
        this cycle."""
        config, cycle = self.config, self.cycle + 1
        if self.rewind_state is None:   # cannot happen: the rewind point is checked to lie in cycle 0
            raise RuntimeError("the late-rewinding state was never captured")
        snip_batches = None
        if config.prune_criterion == "snip":
            batches = iterate_batches(self.splits.train, config.batch_size,
                                      derived_generator(config.seed, "snip", cycle))
            snip_batches = [next(iter(batches))]
        new_masks, start = next_ticket(self.model, self.masks, self.rewind_state, self.plan,
                                       prune_type=config.prune_type, criterion=config.prune_criterion,
                                       seed=config.seed, cycle=cycle, snip_batches=snip_batches)
        self.masks = {name: mask.to(self.device) for name, mask in new_masks.items()}
        rewind(self.model, start, self.masks)
        self.optimizer = self._new_optimizer()
        self.cycle += 1
        self.epoch = 0
        self.cycle_elapsed_before = 0.0
        self._cycle_session_start = time.perf_counter()
        self.best = None

    def _log_layer_table(self) -> None:
        alive, total = count_alive(self.masks)
        self.log.info("\nSeed %d, cycle %d/%d: weights of each prunable layer",
                      self.config.seed, self.cycle + 1, self.config.prune_iterations)
        self.log.info(format_table(["layer", "nonzeros / total", "alive", "pruned", "shape"],
                                   layer_table_rows(self.masks)))
        self.log.info("alive: %d, pruned: %d, total: %d, compression rate: %.2fx (%.2f%% pruned)",
                      alive, total - alive, total, total / max(alive, 1), 100 * (total - alive) / total)

    # ------------------------------------------------------------------ results
    def results_cycles(self) -> list[dict]:
        return [asdict(c) for c in self.cycles]

    def results(self, versions: dict[str, str]) -> dict:
        """The saved results: the original's keys plus masks, summaries, arguments, versions."""
        if not self.finished:
            raise RuntimeError("results() called before the run finished")
        return {
            "format_version": RESULTS_FORMAT_VERSION,
            **{key: dict(values) for key, values in self.logs.items()},
            "emissions": self.emissions,
            "evaluation_emissions": self.evaluation_emissions,
            # Totals of each measured phase (training, evaluation, checkpoint) and what could not be.
            "energy_by_phase": self.energy if self.energy_provenance else {},
            "energy_unmeasured": self.unmeasured if self.energy_provenance else {},
            "energy_provenance": self.energy_provenance,
            "initial_state_dict": cpu_state(self.initial_state),
            "best_state_dict": cpu_state(self.best["state"]),
            "final_state_dict": cpu_state(self.model.state_dict()),
            "masks": self.mask_history,
            "prunable": list(self.prunable),
            "cycles": self.results_cycles(),
            "args": self.config.as_dict(),
            "split_sizes": {"train": len(self.splits.train), "val": len(self.splits.val),
                            "test": len(self.splits.test)},
            "device": str(self.device),
            "versions": versions,
            # Late rewinding: the state every pruned cycle started from (before its masks).
            "rewind_state_dict": self._late_rewind_state(),
            "early_bird": None if self.early_bird is None else {
                "epoch": self.early_bird_epoch,
                "epochs_saved": (self.config.end_iter - self.early_bird_epoch
                                 if self.early_bird_epoch is not None else 0),
                "mask_distances": list(self.early_bird.distances)},
        }


def starting_point(config: RunConfig, model: nn.Module, source_root: Path | str) -> Masks | None:
    """Load into ``model`` the pretrained state (``init_from``) and then the transferred ticket
    (``ticket_source``) the run starts from; returns the ticket's masks (None: dense start).
    The files are found under ``source_root`` (the save folder) by name and content."""
    if config.init_from:
        path = find_referenced_file(config.init_from, source_root, "pretrained state")
        model.load_state_dict(pretrained_state(load_checkpoint(path), model))
    if not config.ticket_source:
        return None
    path = find_referenced_file(config.ticket_source, source_root, "ticket source")
    results = load_checkpoint(path)
    source_arch = results.get("args", {}).get("arch_type")
    if source_arch != config.arch_type:
        raise UserError(f"the ticket source {path.name} is a {source_arch} run; this run trains "
                        f"{config.arch_type}: a ticket transfers between datasets, not networks")
    masks, start = source_ticket(results, parse_reference(config.ticket_source)[2])
    masks, state = transfer(masks, start, model)
    rewind(model, state, masks)
    return masks


class Checkpointer:
    """Saves a run's :meth:`LotteryRun.state_dict` to ``path``, atomically.

    The state's ``parts`` (masks and best weights: a quarter of a ResNet18 checkpoint, and
    they change only at a cycle's end or a new best) go to side files beside ``path`` named
    by their tag, written only when the tag changes; ``path`` names the side files it needs.
    A side file is deleted only once no saved ``path`` refers to it, so a kill at any moment
    leaves a loadable checkpoint.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._written: dict[str, str] = {}   # part -> side file name holding its current tag

    def side_path(self, part: str, tag: str) -> Path:
        return self.path.with_name(f"{self._prefix}{part}-{tag}.pt")

    @property
    def _prefix(self) -> str:
        return f"{self.path.stem}."   # "X.checkpoint." for "X.checkpoint.pt"

    def __call__(self, run: LotteryRun) -> None:
        state = run.state_dict()
        references = {}
        for part, content in state["parts"].items():
            target = self.side_path(part, content["tag"])
            if self._written.get(part) != target.name:
                atomic_torch_save({"value": content["value"]}, target)
            references[part] = target.name
        atomic_torch_save({**state, "parts": references}, self.path)
        self._written = references
        self._remove_side_files(keep=set(references.values()))

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        """The state saved last, with its parts read back from their side files."""
        state = load_checkpoint(self.path)
        references = state.get("parts") or {}
        parts = {}
        for part, name in references.items():
            side = self.path.with_name(name)
            if not side.exists():
                raise UserError(f"{side} is missing (part of the checkpoint {self.path.name}); "
                                "rerun without --resume to start over")
            tag = name[len(f"{self._prefix}{part}-"):-len(".pt")]
            parts[part] = {"tag": tag, "value": load_checkpoint(side)["value"]}
        self._written = dict(references)
        return {**state, "parts": parts} if references else state

    def remove(self) -> None:
        """Delete the checkpoint and its side files (once the results are saved)."""
        self.path.unlink(missing_ok=True)
        self._remove_side_files(keep=set())
        self._written = {}

    def _remove_side_files(self, keep: set[str]) -> None:
        for candidate in self.path.parent.iterdir():
            name = candidate.name
            side_file = name.startswith(self._prefix) and name != self.path.name and name.endswith(".pt")
            # Temporaries of a write that a kill interrupted (ours are all finished by now).
            temporary = name.startswith(f".{self._prefix}") and name.endswith(".tmp")
            if (side_file and name not in keep) or temporary:
                candidate.unlink(missing_ok=True)


def summary_rows(cycles: list[dict]) -> list[tuple]:
    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    return [(c["cycle"], f"{c['percent_remaining']:.2f}", pct(c["best_val_accuracy"]),
             pct(c["test_accuracy_at_best"]), c["best_epoch"], f"{c['seconds']:.1f}")
            for c in cycles]


SUMMARY_HEADERS = ("cycle", "% weights left", "best val acc %", "test acc at best %",
                   "epoch of best", "time s")
