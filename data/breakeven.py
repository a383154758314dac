"""When does a winning ticket pay back the CO2 of finding it?

Finding a ticket costs more training than the dense baseline (several cycles instead of one)
but each inference may cost less (sparse kernels). Over N inferences served, a model's total
CO2 is a line::

    total(N) = training + per_inference * N

and the ticket pays back its extra training after the break-even point

    N* = (training_ticket - training_dense) / (per_inference_dense - per_inference_ticket).

Outcomes: "immediately" when the ticket costs no more to train and no more per inference
(N* = 0), "after" N* inferences when it costs more to train and less per inference, "never"
when its per-inference CO2 is not lower and it costs more to train, or is higher at all
(N* = inf; a ticket cheaper to train but dearer per inference is only ahead until the lines
cross, so in the long run it never pays).

Uncertainty: every term is a mean over seeds with its sample standard deviation; the seeds
of different configurations are different runs, so the terms are treated as independent.
The differences get sigma = sqrt(sigma_a^2 + sigma_b^2), and the break-even range is N* at
the two corners of the one-sigma box (extra training - sigma, saving + sigma) and
(extra training + sigma, saving - sigma): N* grows with the extra training and falls with the
saving, so those corners are the smallest and largest N* inside the box. We do not pair seeds
(training seed s with inference seed s): the CO2-mode training runs and the replayed tickets
are separate runs, so a pairing would suggest a link that does not exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.statistics import Estimate, welch_t_test

IMMEDIATELY = "immediately"
AFTER = "after"
NEVER = "never"
BASELINE = "baseline"


@dataclass(frozen=True)
class CostLine:
    """Total CO2 (kg) of one configuration as a function of the inferences it serves."""

    training: Estimate        # kg CO2eq to train (all cycles), per run
    per_inference: Estimate   # kg CO2eq per inference

    def total(self, inferences) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the total after ``inferences`` (independent terms)."""
        n = np.asarray(inferences, dtype=float)
        mean = self.training.mean + self.per_inference.mean * n
        std = np.sqrt(self.training.std ** 2 + (self.per_inference.std * n) ** 2)
        return mean, std


def break_even_outcome(extra_training: float, saving_per_inference: float) -> str:
    if saving_per_inference >= 0 and extra_training <= 0:
        return IMMEDIATELY
    if saving_per_inference > 0:
        return AFTER
    return NEVER


def break_even_point(extra_training: float, saving_per_inference: float) -> float:
    """Inferences after which the ticket is cheaper in total: 0, a positive number, or inf."""
    outcome = break_even_outcome(extra_training, saving_per_inference)
    if outcome == IMMEDIATELY:
        return 0.0
    if outcome == NEVER:
        return math.inf
    return extra_training / saving_per_inference


@dataclass(frozen=True)
class BreakEven:
    outcome: str
    inferences: float   # N*: 0 for "immediately", inf for "never"
    low: float          # N* range over the one-sigma box (NaN when a spread is unknown)
    high: float
    extra_training: float          # kg CO2eq: ticket minus baseline
    saving_per_inference: float    # kg CO2eq: baseline minus ticket


def break_even(ticket: CostLine, baseline: CostLine) -> BreakEven:
    extra = ticket.training.mean - baseline.training.mean
    saving = baseline.per_inference.mean - ticket.per_inference.mean
    extra_std = math.hypot(ticket.training.std, baseline.training.std)
    saving_std = math.hypot(ticket.per_inference.std, baseline.per_inference.std)
    if math.isnan(extra_std) or math.isnan(saving_std):
        low = high = math.nan
    else:
        low = break_even_point(extra - extra_std, saving + saving_std)
        high = break_even_point(extra + extra_std, saving - saving_std)
    return BreakEven(break_even_outcome(extra, saving), break_even_point(extra, saving), low, high,
                     extra, saving)


# Columns of break_even.csv, in order (documented in the README section on plotting).
BREAK_EVEN_COLUMNS = (
    "config", "description", "device", "mode",
    "training_runs", "training_co2_kg_mean", "training_co2_kg_std",
    "inference_runs", "co2_kg_per_inference_mean", "co2_kg_per_inference_std",
    "extra_training_co2_kg", "co2_kg_saved_per_inference",
    "outcome", "break_even_inferences", "break_even_low", "break_even_high",
    "welch_t", "welch_p", "welch_df",
)


def cost_lines(training_co2: dict[str, list[float]],
               co2_per_inference: dict[str, list[float]]) -> dict[str, CostLine]:
    """Each configuration's line from its per-run training CO2 and per-run CO2 per inference (kg)."""
    return {name: CostLine(Estimate.from_samples(training_co2[name]),
                           Estimate.from_samples(co2_per_inference[name]))
            for name in training_co2}


def break_even_rows(lines: dict[str, CostLine], co2_per_inference: dict[str, list[float]],
                    baseline: str) -> list[dict]:
    """One row per configuration of ``lines`` (baseline first, then in the given order): its cost
    line, its break-even against ``baseline`` and a Welch t-test of its per-run CO2 per
    inference (``co2_per_inference``) against the baseline's."""
    base = lines[baseline]
    rows = []
    for name, line in lines.items():
        row = {"config": name,
               "training_runs": line.training.n, "training_co2_kg_mean": line.training.mean,
               "training_co2_kg_std": line.training.std,
               "inference_runs": line.per_inference.n,
               "co2_kg_per_inference_mean": line.per_inference.mean,
               "co2_kg_per_inference_std": line.per_inference.std}
        if name == baseline:
            row.update(extra_training_co2_kg=0.0, co2_kg_saved_per_inference=0.0, outcome=BASELINE,
                       break_even_inferences=math.nan, break_even_low=math.nan,
                       break_even_high=math.nan, welch_t=math.nan, welch_p=math.nan,
                       welch_df=math.nan)
        else:
            result = break_even(line, base)
            test = welch_t_test(co2_per_inference[name], co2_per_inference[baseline])
            row.update(extra_training_co2_kg=result.extra_training,
                       co2_kg_saved_per_inference=result.saving_per_inference,
                       outcome=result.outcome, break_even_inferences=result.inferences,
                       break_even_low=result.low, break_even_high=result.high,
                       welch_t=test.t, welch_p=test.p, welch_df=test.df)
        rows.append(row)
    return sorted(rows, key=lambda r: r["config"] != baseline)


def describe_break_even(row: dict) -> str:
    """'after 1,235 (800 to never)', 'immediately', 'never', or '-' for the baseline."""
    outcome = row["outcome"]
    if outcome != AFTER:
        return "-" if outcome == BASELINE else outcome
    text = f"after {format_count(row['break_even_inferences'])}"
    low, high = row["break_even_low"], row["break_even_high"]
    if not (math.isnan(low) or math.isnan(high)):
        text += f" ({format_count(low)} to {format_count(high)})"
    return text


def format_count(value: float) -> str:
    """A number of inferences as people read it: '85', '1,000', '2.35e+07'; inf is 'never'."""
    if math.isinf(value):
        return "never"
    return f"{value:,.0f}" if value < 1e6 else f"{value:.3g}"


def inference_horizon(lines: dict[str, CostLine], break_evens: list[float]) -> float:
    """How far along the inference axis a figure should go to show what matters.

    Twice the largest finite positive break-even point, so the crossing sits mid-figure; when
    there is none, twice the largest number of inferences whose CO2 equals the model's training
    CO2 (where using a model starts to cost more than having trained it); 1 as a last resort.
    """
    finite = [n for n in break_evens if 0 < n < math.inf]
    if finite:
        return 2.0 * max(finite)
    payback = [line.training.mean / line.per_inference.mean for line in lines.values()
               if line.per_inference.mean > 0 and line.training.mean > 0]
    return 2.0 * max(payback) if payback else 1.0
