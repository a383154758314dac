"""What a run reports: the summary of each cycle, the saved results, and the tables printed."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from archs.pruning import count_alive, layer_table_rows, structure_column
from archs.train.loop import cpu_state
from data.runs import RESULTS_FORMAT_VERSION
from utils import format_table

if TYPE_CHECKING:
    from archs.train.cycles import LotteryRun


@dataclass
class CycleSummary:
    cycle: int
    percent_remaining: float
    best_val_accuracy: float      # NaN when nothing was evaluated (CO2 tracking mode)
    test_accuracy_at_best: float
    best_epoch: int               # 1-based epoch of the cycle; the last one when not evaluated
    best_images_seen: int
    seconds: float
    final_test_accuracy: float = math.nan   # at the cycle's last epoch (NaN when not evaluated)


def run_results(run: LotteryRun, versions: dict[str, str]) -> dict:
    """The saved results: the original's keys plus masks, summaries, arguments, versions."""
    if not run.finished:
        raise RuntimeError("results() called before the run finished")
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        **{key: dict(values) for key, values in run.logs.items()},
        "emissions": run.emissions,
        "evaluation_emissions": run.evaluation_emissions,
        # Totals of each measured phase (training, evaluation, checkpoint) and what could not be.
        "energy_by_phase": run.energy if run.energy_provenance else {},
        "energy_unmeasured": run.unmeasured if run.energy_provenance else {},
        "energy_provenance": run.energy_provenance,
        "initial_state_dict": cpu_state(run.initial_state),
        "best_state_dict": cpu_state(run.best["state"]),
        "final_state_dict": cpu_state(run.model.state_dict()),
        "masks": run.mask_history,
        "prunable": list(run.prunable),
        "cycles": [asdict(c) for c in run.cycles],
        "args": run.identity.as_dict(),
        "split_sizes": {"train": len(run.splits.train), "val": len(run.splits.val),
                        "test": len(run.splits.test)},
        "device": str(run.device),
        "versions": versions,
        # Late rewinding: the state every pruned cycle started from (before its masks).
        "rewind_state_dict": run.late_rewind_state(),
        "early_bird": None if run.early_bird is None else {
            "epoch": run.early_bird_epoch,
            "epochs_saved": (run.config.end_iter - run.early_bird_epoch
                             if run.early_bird_epoch is not None else 0),
            "mask_distances": list(run.early_bird.distances)},
        **run.extra_results(),
    }


def cycle_ticket(run: LotteryRun) -> dict:
    """The run's current cycle's ticket: its masks, its best and final weights, its summary."""
    return {"cycle": run.cycle, "masks": cpu_state(run.masks),
            "best_state_dict": cpu_state(run.best["state"]),
            "final_state_dict": cpu_state(run.model.state_dict()),
            "summary": asdict(run.cycles[-1])}


def log_layer_table(log, masks, seed: int, cycle: int, cycles: int, plan=None) -> None:
    """The weights of each prunable layer at the start of ``cycle`` (0-based) of ``cycles``;
    with an N:M ``plan`` (a :class:`PruningPlan`), a column says each layer's pattern."""
    alive, total = count_alive(masks)
    log.info("\nSeed %d, cycle %d/%d: weights of each prunable layer", seed, cycle + 1, cycles)
    headers, rows = ["layer", "nonzeros / total", "alive", "pruned", "shape"], layer_table_rows(masks)
    if plan is not None and plan.structure is not None:
        rates = plan.percent_for_layer(list(masks))
        headers.append("pattern")
        rows = [(*row, structure_column(masks[name], plan.structure, exempt=rates[name] == 0))
                for row, name in zip(rows, masks)]
    log.info(format_table(headers, rows))
    log.info("alive: %d, pruned: %d, total: %d, compression rate: %.2fx (%.2f%% pruned)",
             alive, total - alive, total, total / max(alive, 1), 100 * (total - alive) / total)


def summary_rows(cycles: list[dict]) -> list[tuple]:
    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2f}"

    return [(c["cycle"], f"{c['percent_remaining']:.2f}", pct(c["best_val_accuracy"]),
             pct(c["test_accuracy_at_best"]), c["best_epoch"], f"{c['seconds']:.1f}")
            for c in cycles]


SUMMARY_HEADERS = ("cycle", "% weights left", "best val acc %", "test acc at best %",
                   "epoch of best", "time s")
