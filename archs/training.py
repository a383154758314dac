"""Finding winning tickets: iterative magnitude pruning with rewinding (Frankle & Carbin, 2019).

One :class:`LotteryRun` trains one seed: cycle 0 trains the dense network; each later cycle
prunes ``prune_percent`` % of the surviving weights of every convolution and linear weight
by magnitude, rewinds the survivors and every other parameter to the initial state, and
trains again with a fresh Adam. The whole state of a run is a plain dict of tensors
(:meth:`LotteryRun.state_dict`), saved after every epoch so an interrupted run resumes to
the same result.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from archs import build_model
from archs.masks import (Masks, count_alive, full_masks, layer_table_rows, percent_remaining,
                         prunable_names, prune_by_magnitude, rewind)
from data.datasets import DataSplits, Split, get_spec, iterate_batches
from data.runs import LOG_KEYS, RESULTS_FORMAT_VERSION, RunConfig
from utils import TrainingDiverged, UserError, format_table, get_logger, seed_everything


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


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for images, labels in iterate_batches(split, batch_size):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train(was_training)
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch_size: int,
                generator: torch.Generator, masked: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[float, float]:
    """One pass over ``split``; returns mean loss and accuracy (percent).

    After each optimiser step the pruned weights are multiplied by their mask, so they stay
    exactly zero whatever the optimiser does (Adam's moments and weight decay included),
    while a live weight is free to pass through zero.
    """
    model.train()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for images, labels in iterate_batches(split, batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for weight, mask in masked:
                weight.mul_(mask)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
    n = len(split)
    return loss_sum.item() / n, 100.0 * correct.item() / n


class LotteryRun:
    """The state of one seed's run and the procedure that advances it epoch by epoch.

    ``recorder_factory`` (CO2 tracking mode only) starts a CodeCarbon recorder; it is called
    when training starts or resumes. ``on_cycle_end`` receives each finished cycle's ticket
    (see :meth:`cycle_ticket`), so that every level of pruning can be replayed later.
    """

    def __init__(self, config: RunConfig, splits: DataSplits, device: torch.device,
                 recorder_factory: Callable | None = None, eval_batch_size: int | None = None,
                 on_cycle_end: Callable[[dict], None] | None = None, print_freq: int = 1):
        self.config = config
        self.splits = splits
        self.device = device
        self.recorder_factory = recorder_factory
        self.on_cycle_end = on_cycle_end
        self.print_freq = print_freq   # display only: not a setting of the run
        self.eval_batch_size = eval_batch_size or config.batch_size
        self.log = get_logger()

        seed_everything(config.seed)
        spec = get_spec(config.dataset)
        self.model = build_model(config.arch_type, spec.in_channels, spec.image_size,
                                 spec.num_classes, device)
        self.initial_state = clone_state(self.model)
        self.prunable = prunable_names(self.model)
        self.masks: Masks = {name: m.to(device) for name, m in full_masks(self.model).items()}
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
        self.emissions: dict[int, dict[str, float]] = {}
        self.emissions_offset: dict[str, float] | None = None
        self.cycles: list[CycleSummary] = []
        self.best: dict | None = None

    # ------------------------------------------------------------------ state
    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr,
                                weight_decay=self.config.decay)

    def state_dict(self) -> dict:
        return {
            "format_version": RESULTS_FORMAT_VERSION,
            "settings": self.config.training_settings(),
            "cycle": self.cycle, "epoch": self.epoch, "images_seen": self.images_seen,
            "elapsed": self.elapsed(), "cycle_elapsed": self.cycle_elapsed(),
            "model": cpu_state(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            # The initial state is rebuilt from the seed on resume, not stored every epoch
            # (45 MB for ResNet18); its fingerprint proves the rebuild is the same.
            "initial_fingerprint": state_fingerprint(self.initial_state),
            "masks": cpu_state(self.masks),
            "mask_history": [cpu_state(m) for m in self.mask_history],
            "generator": self.generator.get_state(),
            "logs": self.logs, "emissions": self.emissions,
            "emissions_offset": self.emissions_offset,
            "cycles": [asdict(c) for c in self.cycles],
            "best": None if self.best is None else {**self.best, "state": cpu_state(self.best["state"])},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("settings") != self.config.training_settings():
            raise UserError("the checkpoint was made with other settings "
                            f"({state.get('settings')}); rerun without --resume to start over")
        self.cycle, self.epoch = state["cycle"], state["epoch"]
        self.images_seen = state["images_seen"]
        self.elapsed_before, self.cycle_elapsed_before = state["elapsed"], state["cycle_elapsed"]
        if state["initial_fingerprint"] != state_fingerprint(self.initial_state):
            raise UserError("this machine does not rebuild the checkpoint's initial weights from the "
                            "seed (another torch version?); rerun without --resume to start over")
        self.model.load_state_dict(state["model"])
        self.masks = {k: v.to(self.device) for k, v in state["masks"].items()}
        self.mask_history = state["mask_history"]
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.logs, self.emissions = state["logs"], state["emissions"]
        # A resumed CO2 run starts a new tracker: carry the totals measured so far.
        self.emissions_offset = (self.emissions[max(self.emissions)] if self.emissions
                                 else state["emissions_offset"])
        self.cycles = [CycleSummary(**c) for c in state["cycles"]]
        best = state["best"]
        self.best = None if best is None else {
            **best, "state": {k: v.to(self.device) for k, v in best["state"].items()}}

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
            show_progress: bool = True) -> None:
        """Train until every cycle is done, calling ``checkpoint(self)`` after each epoch."""
        if self.finished:  # resumed from the checkpoint of a finished run: only saving is left
            return
        config = self.config
        recorder = self.recorder_factory() if config.co2_tracking_mode and self.recorder_factory else None
        self._session_start = self._cycle_session_start = time.perf_counter()
        try:
            while not self.finished:
                self._run_cycle(recorder, checkpoint, show_progress)
        finally:
            if recorder is not None and not self.finished:
                recorder.stop()

    def _run_cycle(self, recorder, checkpoint, show_progress) -> None:
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
            while self.epoch < config.end_iter:
                loss, accuracy = train_epoch(self.model, self.optimizer, self.splits.train,
                                             config.batch_size, self.generator, masked)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss} in cycle {self.cycle + 1}, epoch "
                        f"{self.epoch + 1} of seed {config.seed}; lower --lr (now {config.lr}). "
                        "Results of the seeds finished before are saved")
                self.epoch += 1
                self.images_seen += len(self.splits.train)
                last_epoch_of_run = (self.epoch == config.end_iter
                                     and self.cycle == config.prune_iterations - 1)
                if self.epoch % config.valid_freq == 0 or self.epoch == config.end_iter:
                    self._record(loss, accuracy, remaining, recorder, last_epoch_of_run)
                if self.epoch % self.print_freq == 0 or self.epoch == config.end_iter:
                    bar.set_postfix_str(self._progress_text(loss))
                bar.update(1)
                if self.epoch == config.end_iter:
                    self._finish_cycle()
                    if self.cycle + 1 < config.prune_iterations:
                        self._start_next_cycle()
                    else:
                        self.cycle += 1  # past the last cycle: the run is finished
                if checkpoint is not None:
                    checkpoint(self)
                if self.epoch == 0:   # a new cycle started: leave this bar
                    break

    def _record(self, loss, accuracy, remaining, recorder, last_epoch_of_run) -> None:
        key = self.images_seen
        self.logs["time"][key] = self.elapsed()
        self.logs["non_zeros_weights"][key] = remaining
        self.logs["train_loss"][key] = loss
        self.logs["train_accuracy"][key] = accuracy
        if self.config.co2_tracking_mode:
            if recorder is not None:
                from data.emissions import add_offset
                raw = recorder.stop() if last_epoch_of_run else recorder.flush()
                record = add_offset(raw, self.emissions_offset)
                self.emissions[key] = record
                self.logs["co2"][key] = record["emissions"]
            return
        val_loss, val_accuracy = evaluate(self.model, self.splits.val, self.eval_batch_size)
        test_loss, test_accuracy = evaluate(self.model, self.splits.test, self.eval_batch_size)
        self.logs["val_loss"][key], self.logs["val_accuracy"][key] = val_loss, val_accuracy
        self.logs["test_loss"][key], self.logs["test_accuracy"][key] = test_loss, test_accuracy
        if self.best is None or val_accuracy > self.best["val_accuracy"]:
            self.best = {"state": clone_state(self.model), "val_accuracy": val_accuracy,
                         "test_accuracy": test_accuracy, "epoch": self.epoch, "images_seen": key}

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
            self.on_cycle_end(self.cycle_ticket())

    def cycle_ticket(self) -> dict:
        """The current cycle's ticket: its masks, its best and final weights, its summary."""
        return {"cycle": self.cycle, "masks": cpu_state(self.masks),
                "best_state_dict": cpu_state(self.best["state"]),
                "final_state_dict": cpu_state(self.model.state_dict()),
                "summary": asdict(self.cycles[-1])}

    def _start_next_cycle(self) -> None:
        """Prune the trained weights, rewind the survivors to the initial state, fresh Adam."""
        weights = dict(self.model.named_parameters())
        self.masks = prune_by_magnitude(weights, self.masks, self.config.prune_percent)
        rewind(self.model, self.initial_state, self.masks)
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
        }


def summary_rows(cycles: list[dict]) -> list[tuple]:
    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    return [(c["cycle"], f"{c['percent_remaining']:.2f}", pct(c["best_val_accuracy"]),
             pct(c["test_accuracy_at_best"]), c["best_epoch"], f"{c['seconds']:.1f}")
            for c in cycles]


SUMMARY_HEADERS = ("cycle", "% weights left", "best val acc %", "test acc at best %",
                   "epoch of best", "time s")
