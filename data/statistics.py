"""Summaries across seeds: mean and spread, and Welch's t-test between two configurations.

The spread is the sample standard deviation (ddof=1): it describes how much one run varies
from seed to seed, which is what a user repeating the experiment would see. It is NaN for a
single run, where no spread can be measured (rather than a misleading zero).
"""
from __future__ import annotations

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
