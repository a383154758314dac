"""Summaries across seeds: mean and spread, Welch's t-test and confidence intervals.

The spread is the sample standard deviation (ddof=1): it describes how much one run varies
from seed to seed, which is what a user repeating the experiment would see. It is NaN for a
single run, where no spread can be measured (rather than a misleading zero).

How well a MEAN is known is a different thing, its standard error (std / sqrt(n)); the
intervals here are built from standard errors, with Student's t and the Welch-Satterthwaite
degrees of freedom, because studies have few seeds (2 to 10) and a normal quantile would
claim more confidence than a handful of runs gives.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """Mean and sample standard deviation of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def from_samples(cls, samples: Iterable[float]) -> "Estimate":
        values = np.asarray(list(samples), dtype=float)
        if values.size == 0:
            return cls(math.nan, math.nan, 0)
        std = float(values.std(ddof=1)) if values.size > 1 else math.nan
        return cls(float(values.mean()), std, int(values.size))


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of sample a against sample b."""

    t: float
    p: float
    df: float
    n_a: int
    n_b: int


def welch_t_test(a: Iterable[float], b: Iterable[float]) -> WelchTest:
    """t = (mean_a - mean_b) / sqrt(var_a/n_a + var_b/n_b), two-sided p; NaN below two runs each.

    Two samples without any spread (both constant) have no defined t either: NaN, not an error.
    """
    from scipy import stats

    a = np.asarray(list(a), dtype=float)
    b = np.asarray(list(b), dtype=float)
    if a.size < 2 or b.size < 2:
        return WelchTest(math.nan, math.nan, math.nan, int(a.size), int(b.size))
    with warnings.catch_warnings():
        # scipy warns on zero variance (constant samples) and returns NaN, which we report as is.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    t = float(result.statistic)
    df = float(result.df) if math.isfinite(t) else math.nan
    return WelchTest(t, float(result.pvalue), df, int(a.size), int(b.size))


@dataclass(frozen=True)
class MeanDifference:
    """mean(a) - mean(b) of two independent samples and its two-sided ``level`` confidence
    interval by Welch's method (no equal-variance assumption).

    ``variance_terms`` holds (var / n, n - 1) of each sample: what a later combination (such as
    Fieller's interval of a ratio) needs to form its own Welch-Satterthwaite degrees of freedom.
    Fewer than two runs on a side leave the standard error, and the interval, NaN. Samples
    without spread give a standard error of 0 and an interval that is the difference itself.
    """

    estimate: float
    standard_error: float
    df: float
    low: float
    high: float
    level: float
    variance_terms: tuple[tuple[float, int], ...]


def welch_satterthwaite_df(terms: Iterable[tuple[float, int]]) -> float:
    """Degrees of freedom of a sum of independent (variance of a mean, its df) terms; inf when
    the sum has no variance at all (nothing is estimated, so no t correction is due)."""
    terms = [(variance, dof) for variance, dof in terms if variance > 0]
    total = sum(variance for variance, _ in terms)
    if total == 0:
        return math.inf
    return total ** 2 / sum(variance ** 2 / dof for variance, dof in terms)


def t_quantile(level: float, df: float) -> float:
    """The two-sided ``level`` critical value of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_difference(a: Iterable[float], b: Iterable[float], level: float = 0.95) -> MeanDifference:
    a = np.asarray(list(a), dtype=float)
    b = np.asarray(list(b), dtype=float)
    estimate = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return MeanDifference(estimate, math.nan, math.nan, math.nan, math.nan, level, ())
    terms = tuple((float(x.var(ddof=1)) / x.size, x.size - 1) for x in (a, b))
    se = math.sqrt(sum(variance for variance, _ in terms))
    df = welch_satterthwaite_df(terms)
    half_width = t_quantile(level, df) * se if se > 0 else 0.0
    return MeanDifference(estimate, se, df, estimate - half_width, estimate + half_width, level, terms)


def at_df(difference: MeanDifference, df: float) -> MeanDifference:
    """``difference`` with its interval rebuilt from Student's t at ``df`` degrees of freedom
    (fewer than its own: the df of a comparison it is combined in)."""
    if math.isnan(difference.standard_error) or math.isnan(df):
        return dataclasses.replace(difference, df=df)
    half = t_quantile(difference.level, df) * difference.standard_error if difference.standard_error > 0 else 0.0
    return dataclasses.replace(difference, df=df, low=difference.estimate - half,
                               high=difference.estimate + half)


def common_df(*differences: MeanDifference) -> float:
    """The smallest of the differences' own Welch-Satterthwaite degrees of freedom (NaN if any is
    unknown): the t of anything combining them is at least as wide as each one's own."""
    dfs = [difference.df for difference in differences]
    return math.nan if any(math.isnan(df) for df in dfs) else min(dfs)


@dataclass(frozen=True)
class RatioInterval:
    """A confidence set for numerator / denominator. ``bounded`` False: the denominator is not
    known to differ from 0 at this level, the set reaches infinity and low/high are -inf/inf.
    NaN bounds: not enough runs to say anything."""

    estimate: float
    low: float
    high: float
    bounded: bool
    df: float
    level: float


def fieller_interval(numerator: MeanDifference, denominator: MeanDifference) -> RatioInterval:
    """Fieller's confidence set for the ratio of two independent differences of means.

    theta is in the set when numerator - theta * denominator (normally distributed, mean 0
    at the true ratio) does not differ significantly from 0:
    (n - theta d)^2 <= t^2 (var_n + theta^2 var_d), a quadratic inequality in theta. Its t has
    the smaller of the two differences' own degrees of freedom (:func:`common_df`), so that
    the set is bounded exactly when the denominator's interval at that t excludes 0, and
    excludes 0 exactly when the numerator's does: the set and the two intervals never
    disagree. Unlike the delta method it is exact for normal means and follows the ratio's
    skew: the interval is not symmetric about the estimate.
    """
    n, d = numerator.estimate, denominator.estimate
    level = numerator.level
    estimate = n / d if d != 0 else math.copysign(math.inf, n) if n != 0 else math.nan
    var_n, var_d = numerator.standard_error ** 2, denominator.standard_error ** 2
    df = common_df(numerator, denominator)
    if math.isnan(var_n) or math.isnan(var_d) or math.isnan(df):
        return RatioInterval(estimate, math.nan, math.nan, False, df, level)
    t2 = t_quantile(level, df) ** 2 if var_n + var_d > 0 else 0.0
    a = d * d - t2 * var_d
    if a <= 0:
        return RatioInterval(estimate, -math.inf, math.inf, False, df, level)
    # Roots of a theta^2 - 2 n d theta + (n^2 - t^2 var_n), the discriminant written out so that
    # it does not cancel; it is >= 0 because the estimate itself lies in the set.
    root = math.sqrt(t2 * max(var_n * d * d + var_d * n * n - t2 * var_n * var_d, 0.0))
    low, high = sorted(((n * d - root) / a, (n * d + root) / a))
    return RatioInterval(estimate, low, high, True, df, level)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-pair differences a_i - b_i and its two-sided ``level`` confidence interval
    (Student's t with n - 1 degrees of freedom on the differences).

    Used where both samples come from the same seeds (a ticket and its control share the
    initialisation, the data split and the batch order of each seed), so that what varies
    from seed to seed cancels in the difference. NaN interval below two pairs.
    """

    mean: float
    low: float
    high: float
    n: int
    level: float

    def describe(self, fmt: str = ".2f") -> str:
        if self.n == 0:
            return "-"
        if math.isnan(self.low):
            return f"{self.mean:+{fmt}} (1 seed: no interval)"
        return f"{self.mean:+{fmt}} [{self.low:+{fmt}}, {self.high:+{fmt}}]"


def paired_difference(a: Iterable[float], b: Iterable[float], level: float = 0.95) -> PairedDifference:
    differences = np.asarray(list(a), dtype=float) - np.asarray(list(b), dtype=float)
    n = int(differences.size)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, level)
    mean = float(differences.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, level)
    half = t_quantile(level, n - 1) * float(differences.std(ddof=1)) / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n, level)
