"""When does a winning ticket pay back the CO2 of finding it?

Finding a ticket costs more training than the dense baseline (several cycles instead of one)
but each inference may cost less (sparse kernels). Over N inferences served, a model's total
CO2 is a line::

    total(N) = training + per_inference * N

and the ticket pays back its extra training after the break-even point

    N* = (training_ticket - training_dense) / (per_inference_dense - per_inference_ticket).

From the means alone (:func:`break_even_point`): N* = 0 when the ticket costs no more to train
and no more per inference, extra / saving when it costs more to train and less per inference,
inf when it is no cheaper per inference (a ticket cheaper to train but dearer per inference
is only ahead until the lines cross, so in the long run it never pays).

Uncertainty (95%, :data:`CONFIDENCE_LEVEL`). The inputs are per-seed samples: training CO2 of
each CO2-tracking training run and CO2 per inference of each replayed run, four independent
groups (ticket and baseline, training and inference; separate runs, so no pairing by seed).
The extra training CO2 and the saving per inference each get Welch's confidence interval (a
difference of means, standard errors, Student's t), both with the smaller of the two
differences' Welch-Satterthwaite degrees of freedom. N* gets Fieller's confidence set for a
ratio (:func:`data.analysis.statistics.fieller_interval`) with that same t: exact for normal means,
asymmetric like the ratio itself, unbounded exactly when the saving is not known to be
positive and reaching 0 exactly when the extra training CO2 is not known to be positive. A percentile bootstrap over seeds was tried and rejected:
with 5 seeds a resample of 5 runs understates the spread, and it covered the true N* in only
90% of simulated studies (:func:`coverage_study` gives the figures).

The verdict (:func:`break_even_verdict`) is only as strong as those intervals allow, and
"undetermined", with its reason, otherwise; measurements shorter than
:data:`data.energy.emissions.MIN_POWER_SAMPLES` power samples make every verdict undetermined.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.energy.emissions import MIN_POWER_SAMPLES
from data.analysis.statistics import (Estimate, MeanDifference, RatioInterval, at_df, common_df,
                             fieller_interval, mean_difference, welch_t_test)

IMMEDIATELY = "immediately"
AFTER = "after"
NEVER = "never"
UNDETERMINED = "undetermined"
BASELINE = "baseline"
CONFIDENCE_LEVEL = 0.95
# The level of the Welch t-test reported beside the verdict (two-sided).
WELCH_LEVEL = 0.05


@dataclass(frozen=True)
class CostLine:
    """Total CO2 (kg) of one configuration as a function of the inferences it serves."""

    training: Estimate        # kg CO2eq to train (all cycles), per run
    per_inference: Estimate   # kg CO2eq per inference

    def total(self, inferences) -> tuple[np.ndarray, np.ndarray]:
        """Mean and seed-to-seed standard deviation of the total after ``inferences``
        (independent terms): the spread one run shows, not how well the mean is known."""
        n = np.asarray(inferences, dtype=float)
        mean = self.training.mean + self.per_inference.mean * n
        std = np.sqrt(self.training.std ** 2 + (self.per_inference.std * n) ** 2)
        return mean, std


@dataclass(frozen=True)
class Measurements:
    """What was measured for one configuration: one value per run (seed)."""

    training: tuple[float, ...]        # kg CO2eq of each CO2-tracking training run (all cycles)
    per_inference: tuple[float, ...]   # kg CO2eq per inference of each replayed run
    # The shortest tracked duration among those runs' measurements (a whole training run, one
    # inference pass), and whether it spans too few of CodeCarbon's power samples to trust.
    shortest_measurement_s: float = math.nan
    too_short: bool = False
    # The largest share of the machine other processes used during any of those measurements,
    # and whether it is over data.energy.process.CONTAMINATION_SHARE.
    others_cpu_share: float = math.nan
    contaminated: bool = False

    def __post_init__(self):
        object.__setattr__(self, "training", tuple(float(x) for x in self.training))
        object.__setattr__(self, "per_inference", tuple(float(x) for x in self.per_inference))

    @property
    def line(self) -> CostLine:
        return CostLine(Estimate.from_samples(self.training), Estimate.from_samples(self.per_inference))


def break_even_point(extra_training: float, saving_per_inference: float) -> float:
    """Inferences after which the ticket is cheaper in total, from point estimates: 0 when it
    costs no more either way, inf when it is no cheaper per inference (and not cheaper
    everywhere), else extra / saving."""
    if saving_per_inference >= 0 and extra_training <= 0:
        return 0.0
    if saving_per_inference <= 0:
        return math.inf
    return extra_training / saving_per_inference


def _known_sign(low: float, high: float) -> int | None:
    """+1 or -1 when a confidence interval excludes 0 on that side, 0 when it is exactly 0
    (no spread at all), None when it straddles 0 or is unknown (NaN)."""
    if low > 0:
        return 1
    if high < 0:
        return -1
    if low == 0 == high:
        return 0
    return None


@dataclass(frozen=True)
class Verdict:
    outcome: str   # IMMEDIATELY, AFTER, NEVER or UNDETERMINED
    reason: str    # why, when it is not the plain reading of the outcome; "" otherwise


def break_even_verdict(extra_low: float, extra_high: float, saving_low: float, saving_high: float,
                       too_short: bool = False) -> Verdict:
    """The verdict the confidence intervals of the extra training CO2 (ticket - baseline) and
    of the saving per inference (baseline - ticket) support. A difference is "known" positive
    or negative when its interval excludes 0, or known to be 0 when the interval is exactly 0.

    - immediately: extra training known <= 0 and saving known >= 0;
    - never: saving known < 0 (dearer per inference: whatever its training cost, the baseline
      ends up ahead for good), or saving exactly 0 and extra training known > 0;
    - after N: extra training and saving both known > 0 (N* then has a bounded interval);
    - undetermined otherwise, naming the interval that includes 0; also whenever a
      configuration has fewer than two runs (no interval) or ``too_short`` (measurements too
      short to trust: the spread between seeds does not show what a too-short measurement
      misses, so no interval can vouch for them).
    """
    extra, saving = _known_sign(extra_low, extra_high), _known_sign(saving_low, saving_high)
    if any(math.isnan(x) for x in (extra_low, extra_high, saving_low, saving_high)):
        verdict = Verdict(UNDETERMINED, "fewer than 2 runs of a configuration: no confidence interval")
    elif extra in (-1, 0) and saving in (1, 0):
        verdict = Verdict(IMMEDIATELY, "")
    elif saving == -1:
        verdict = Verdict(NEVER, "" if extra in (1, 0) else
                          "dearer per inference, so overtaken by the baseline even if cheaper to train")
    elif saving == 0 and extra == 1:
        verdict = Verdict(NEVER, "")
    elif extra == 1 and saving == 1:
        verdict = Verdict(AFTER, "")
    else:
        unresolved = [what for what, sign in (("extra training CO2", extra),
                                              ("CO2 saved per inference", saving)) if sign is None]
        verdict = Verdict(UNDETERMINED, f"the {CONFIDENCE_LEVEL:.0%} CI of the {' and of the '.join(unresolved)} "
                                        "includes 0")
    return too_short_verdict(verdict) if too_short else verdict


def too_short_verdict(as_measured: Verdict) -> Verdict:
    """Undetermined, whatever the runs as measured say (kept in the reason)."""
    said = as_measured.outcome if as_measured.outcome != UNDETERMINED else "undetermined anyway"
    return Verdict(UNDETERMINED, f"measurements too short to trust (under {MIN_POWER_SAMPLES} of "
                                 f"CodeCarbon's power samples); as measured: {said}")


def contaminated_verdict(verdict: Verdict, as_measured: Verdict) -> Verdict:
    """Undetermined: other processes used more than CONTAMINATION_SHARE of the machine while it
    was measured (counters then include their energy, and contention inflates CPU time)."""
    from data.energy.process import CONTAMINATION_SHARE

    said = as_measured.outcome if as_measured.outcome != UNDETERMINED else "undetermined anyway"
    reason = (f"measured while other processes used over {CONTAMINATION_SHARE:.0%} of the machine; "
              f"as measured: {said}")
    if verdict.reason.startswith("measurements too short"):
        reason = verdict.reason.split("; as measured")[0] + "; " + reason
    return Verdict(UNDETERMINED, reason)


@dataclass(frozen=True)
class BreakEven:
    outcome: str
    reason: str
    inferences: float   # N* from the means: 0 for "immediately", inf for "never"
    low: float          # N*'s confidence interval: [0, 0] immediately, [inf, inf] never,
    high: float         # [0, inf] when nothing is known, NaN with fewer than 2 runs
    extra_training: MeanDifference         # kg CO2eq: ticket minus baseline
    saving_per_inference: MeanDifference   # kg CO2eq: baseline minus ticket
    too_short: bool
    df: float = math.nan   # degrees of freedom of every interval above (common_df)
    contaminated: bool = False


def break_even(ticket: Measurements, baseline: Measurements) -> BreakEven:
    """The ticket against the baseline: point estimate, interval and verdict.

    Both differences' intervals, the verdict and Fieller's interval use one t: the smaller of
    the two differences' Welch-Satterthwaite degrees of freedom (:func:`common_df`). The
    verdict and the interval then cannot disagree: N*'s interval reaches "never" exactly when
    the saving's interval includes 0, and 0 ("immediately") exactly when the extra training's
    does.
    """
    extra = mean_difference(ticket.training, baseline.training, CONFIDENCE_LEVEL)
    saving = mean_difference(baseline.per_inference, ticket.per_inference, CONFIDENCE_LEVEL)
    df = common_df(extra, saving)
    extra, saving = at_df(extra, df), at_df(saving, df)
    ratio = fieller_interval(extra, saving)
    too_short = ticket.too_short or baseline.too_short
    contaminated = ticket.contaminated or baseline.contaminated
    statistical = break_even_verdict(extra.low, extra.high, saving.low, saving.high)
    if statistical.outcome == NEVER and extra.estimate < 0 and saving.estimate < 0:
        crossing = format_count(extra.estimate / saving.estimate)
        statistical = Verdict(NEVER, f"cheaper to train but dearer per inference: ahead until "
                                     f"about {crossing} inferences, behind after")
    low, high = _break_even_interval(statistical.outcome, ratio)
    verdict = too_short_verdict(statistical) if too_short else statistical
    if contaminated:
        verdict = contaminated_verdict(verdict, statistical)
    return BreakEven(verdict.outcome, verdict.reason, break_even_point(extra.estimate, saving.estimate),
                     low, high, extra, saving, too_short, df, contaminated)


def _break_even_interval(outcome: str, ratio: RatioInterval) -> tuple[float, float]:
    """N*'s confidence interval in inferences, from the verdict and Fieller's set for the ratio.

    A negative ratio at the low end means the ticket is ahead from the start (0 inferences);
    an unbounded set means anything from 0 to never."""
    if outcome == IMMEDIATELY:
        return 0.0, 0.0
    if outcome == NEVER:
        return math.inf, math.inf
    if math.isnan(ratio.low):
        return math.nan, math.nan
    if not ratio.bounded or ratio.high < 0:
        return 0.0, math.inf
    return max(ratio.low, 0.0), ratio.high


# Columns of break_even.csv, in order (described in the README section "Break-even").
# *_ci_low / *_ci_high are the bounds of the confidence interval at confidence_level.
BREAK_EVEN_COLUMNS = (
    "config", "description", "device", "mode",
    "training_runs", "training_co2_kg_mean", "training_co2_kg_std",
    "inference_runs", "co2_kg_per_inference_mean", "co2_kg_per_inference_std",
    "extra_training_co2_kg", "extra_training_co2_kg_ci_low", "extra_training_co2_kg_ci_high",
    "co2_kg_saved_per_inference", "co2_kg_saved_per_inference_ci_low",
    "co2_kg_saved_per_inference_ci_high",
    "outcome", "reason", "break_even_inferences", "break_even_low", "break_even_high",
    "confidence_level", "break_even_df", "welch_t", "welch_p", "welch_df", "welch_level",
    "shortest_measurement_s", "too_short", "others_cpu_share_max", "contaminated",
)

# What only a comparison with the baseline has (NaN, an empty cell, in the baseline's row).
COMPARISON_COLUMNS = tuple(column for column in BREAK_EVEN_COLUMNS
                           if column.startswith(("extra_", "co2_kg_saved", "break_even_", "welch_"))
                           and column != "welch_level")


def cost_lines(measurements: dict[str, Measurements]) -> dict[str, CostLine]:
    return {name: m.line for name, m in measurements.items()}


def break_even_rows(measurements: dict[str, Measurements], baseline: str) -> list[dict]:
    """One row per configuration (baseline first, then in the given order): its cost line, its
    break-even against ``baseline`` with the confidence intervals behind it, and a Welch t-test
    of its per-run CO2 per inference against the baseline's."""
    base = measurements[baseline]
    rows = []
    for name, measured in measurements.items():
        line = measured.line
        row = {"config": name,
               "training_runs": line.training.n, "training_co2_kg_mean": line.training.mean,
               "training_co2_kg_std": line.training.std,
               "inference_runs": line.per_inference.n,
               "co2_kg_per_inference_mean": line.per_inference.mean,
               "co2_kg_per_inference_std": line.per_inference.std,
               "confidence_level": CONFIDENCE_LEVEL, "welch_level": WELCH_LEVEL,
               "shortest_measurement_s": measured.shortest_measurement_s,
               "others_cpu_share_max": measured.others_cpu_share}
        if name == baseline:
            row.update({column: math.nan for column in COMPARISON_COLUMNS})
            row.update(outcome=BASELINE, reason="", too_short=measured.too_short,
                       contaminated=measured.contaminated)
        else:
            result = break_even(measured, base)
            test = welch_t_test(measured.per_inference, base.per_inference)
            extra, saving = result.extra_training, result.saving_per_inference
            row.update(extra_training_co2_kg=extra.estimate,
                       extra_training_co2_kg_ci_low=extra.low,
                       extra_training_co2_kg_ci_high=extra.high,
                       co2_kg_saved_per_inference=saving.estimate,
                       co2_kg_saved_per_inference_ci_low=saving.low,
                       co2_kg_saved_per_inference_ci_high=saving.high,
                       outcome=result.outcome, reason=result.reason,
                       break_even_inferences=result.inferences, break_even_low=result.low,
                       break_even_high=result.high, break_even_df=result.df, welch_t=test.t, welch_p=test.p,
                       welch_df=test.df, too_short=result.too_short, contaminated=result.contaminated)
        rows.append(row)
    return sorted(rows, key=lambda r: r["config"] != baseline)


def describe_break_even(row: dict) -> str:
    """'after 1,235 (95% CI 800 to 2,000)', 'immediately', 'never', 'undetermined (estimate
    1,235; 95% CI 0 to never)' or '-' for the baseline."""
    outcome = row["outcome"]
    if outcome == BASELINE:
        return "-"
    if outcome == NEVER and row.get("reason", "").startswith("cheaper to train"):
        return f"never ({row['reason'].split(': ', 1)[1]})"
    if outcome in (IMMEDIATELY, NEVER):
        return outcome
    point, low, high = row["break_even_inferences"], row["break_even_low"], row["break_even_high"]
    ci = ("" if math.isnan(low) or math.isnan(high) else
          f"{CONFIDENCE_LEVEL:.0%} CI {format_count(low)} to {format_count(high)}")
    if outcome == AFTER:
        return f"after {format_count(point)}" + (f" ({ci})" if ci else "")
    estimate = f"estimate {describe_point(point)}"
    return f"{outcome} ({estimate}; {ci})" if ci else f"{outcome} ({estimate})"


def describe_point(inferences: float) -> str:
    if inferences == 0:
        return "immediately"
    return format_count(inferences)


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


# --------------------------------------------------------------------------- checking the method
def synthetic_study(rng: np.random.Generator, seeds: int, training_sd: float,
                    per_inference_sd: float) -> tuple[Measurements, Measurements]:
    """A made-up study whose true break-even is 2,500 inferences: the ticket costs 3 kg more to
    train (5 against 2 kg) and saves 1.2 g per inference (0.4 against 1.6 g); every run adds
    normal noise of the given standard deviations."""
    def runs(mean, sd):
        return rng.normal(mean, sd, seeds)

    ticket = Measurements(runs(5.0, training_sd), runs(4e-4, per_inference_sd))
    baseline = Measurements(runs(2.0, training_sd), runs(1.6e-3, per_inference_sd))
    return ticket, baseline


SYNTHETIC_BREAK_EVEN = 2500.0


def coverage_study(studies: int = 2000, seeds: int = 5, training_sd: float = 0.9,
                   per_inference_sd: float = 3.5e-4, rng_seed: int = 0) -> dict[str, tuple[float, float]]:
    """How often the interval of :func:`break_even` holds the true N* over many synthetic
    studies, and its median high / low ratio, beside the one-standard-deviation box used before
    (N* at the corners extra -/+ sd, saving +/- sd, sds of single runs added in quadrature).

    The default noise (coefficients of variation of about 18 to 45% per run, as short
    CodeCarbon measurements show) is the one where that box had a high/low ratio of about 6.
    Returns {"fieller": (coverage, median ratio), "one_sd_box": (coverage, median ratio)}.
    """
    rng = np.random.default_rng(rng_seed)
    hits = {"fieller": 0, "one_sd_box": 0}
    ratios: dict[str, list[float]] = {name: [] for name in hits}
    for _ in range(studies):
        ticket, baseline = synthetic_study(rng, seeds, training_sd, per_inference_sd)
        result = break_even(ticket, baseline)
        extra_sd = math.hypot(np.std(ticket.training, ddof=1), np.std(baseline.training, ddof=1))
        saving_sd = math.hypot(np.std(ticket.per_inference, ddof=1),
                               np.std(baseline.per_inference, ddof=1))
        extra, saving = result.extra_training.estimate, result.saving_per_inference.estimate
        box = (break_even_point(extra - extra_sd, saving + saving_sd),
               break_even_point(extra + extra_sd, saving - saving_sd))
        for name, (low, high) in (("fieller", (result.low, result.high)), ("one_sd_box", box)):
            hits[name] += low <= SYNTHETIC_BREAK_EVEN <= high
            ratios[name].append(high / low if low > 0 else math.inf)
    return {name: (hits[name] / studies, float(np.median(ratios[name]))) for name in hits}
