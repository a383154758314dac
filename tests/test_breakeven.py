"""Break-even arithmetic, its uncertainty, and the statistics behind it, on numbers worked by hand."""
from __future__ import annotations

import math

import pytest

from data.break_even_report import break_even_csv_text, choose_mode
from data.breakeven import (AFTER, BASELINE, BREAK_EVEN_COLUMNS, IMMEDIATELY, NEVER, CostLine,
                            break_even, break_even_outcome, break_even_point, break_even_rows,
                            cost_lines, describe_break_even, inference_horizon)
from data.statistics import Estimate, welch_t_test


def exact(mean: float, n: int = 2) -> Estimate:
    return Estimate(mean, 0.0, n)


# --------------------------------------------------------------------------- statistics
def test_estimate_is_mean_and_sample_std():
    estimate = Estimate.from_samples([1.0, 2.0, 6.0])
    assert estimate.mean == pytest.approx(3.0)
    # deviations -2, -1, 3: squares sum to 14, divided by n - 1 = 2
    assert estimate.std == pytest.approx(math.sqrt(7.0))
    assert estimate.n == 3


def test_estimate_of_one_run_has_no_spread():
    estimate = Estimate.from_samples([4.0])
    assert estimate.mean == 4.0 and math.isnan(estimate.std) and estimate.n == 1


def test_welch_t_matches_the_formula_worked_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    # mean a 2.5, variance 5/3; mean b 6, variance 10
    va, vb = (5 / 3) / 4, 10 / 5
    t = (2.5 - 6.0) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    result = welch_t_test(a, b)
    assert result.t == pytest.approx(t)          # -2.2514
    assert result.df == pytest.approx(df)        # 5.52
    assert 0.05 < result.p < 0.1
    assert (result.n_a, result.n_b) == (4, 5)


def test_welch_needs_two_runs_a_side_and_some_spread():
    single = welch_t_test([1.0], [2.0, 3.0])
    assert math.isnan(single.t) and math.isnan(single.p) and single.n_a == 1
    constant = welch_t_test([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(constant.t) and math.isnan(constant.df)


# --------------------------------------------------------------------------- break-even
def test_two_lines_cross_where_worked_out_by_hand():
    # ticket: 5 kg to train, 1 g per inference; dense: 2 kg, 4 g. 5 + 0.001 N = 2 + 0.004 N
    ticket = CostLine(exact(5.0), exact(0.001))
    dense = CostLine(exact(2.0), exact(0.004))
    result = break_even(ticket, dense)
    assert result.outcome == AFTER
    assert result.inferences == pytest.approx(1000.0)
    assert ticket.total(1000.0)[0] == pytest.approx(dense.total(1000.0)[0])
    assert result.extra_training == pytest.approx(3.0)
    assert result.saving_per_inference == pytest.approx(0.003)


@pytest.mark.parametrize("extra, saving, outcome, point", [
    (-1.0, 0.5, IMMEDIATELY, 0.0),   # cheaper to train and to run
    (0.0, 0.0, IMMEDIATELY, 0.0),    # costs no more either way
    (-1.0, 0.0, IMMEDIATELY, 0.0),
    (2.0, 0.5, AFTER, 4.0),
    (2.0, 0.0, NEVER, math.inf),     # dearer to train, no cheaper to run
    (2.0, -0.5, NEVER, math.inf),
    (-1.0, -0.5, NEVER, math.inf),   # cheaper to train but dearer per inference: overtaken
])
def test_outcomes(extra, saving, outcome, point):
    assert break_even_outcome(extra, saving) == outcome
    assert break_even_point(extra, saving) == point


def test_range_is_the_break_even_at_the_corners_of_the_one_sigma_box():
    ticket = CostLine(Estimate(5.0, 0.3, 3), Estimate(0.001, 0.0003, 3))
    dense = CostLine(Estimate(2.0, 0.4, 3), Estimate(0.004, 0.0004, 3))
    result = break_even(ticket, dense)
    # extra training 3 +/- 0.5 (sqrt(0.3^2 + 0.4^2)), saving 0.003 +/- 0.0005
    assert result.low == pytest.approx(2.5 / 0.0035)
    assert result.high == pytest.approx(3.5 / 0.0025)
    assert result.low < result.inferences < result.high


def test_range_is_open_ended_when_the_saving_may_be_nothing():
    ticket = CostLine(Estimate(5.0, 0.1, 3), Estimate(0.003, 0.001, 3))
    dense = CostLine(Estimate(2.0, 0.1, 3), Estimate(0.004, 0.001, 3))
    result = break_even(ticket, dense)
    assert result.outcome == AFTER and result.high == math.inf


def test_range_may_reach_immediately():
    ticket = CostLine(Estimate(2.1, 0.5, 3), Estimate(0.001, 0.0001, 3))
    dense = CostLine(Estimate(2.0, 0.5, 3), Estimate(0.004, 0.0001, 3))
    assert break_even(ticket, dense).low == 0.0


def test_range_is_unknown_with_a_single_run():
    ticket = CostLine(Estimate.from_samples([5.0]), Estimate.from_samples([0.001, 0.001]))
    dense = CostLine(Estimate.from_samples([2.0, 2.0]), Estimate.from_samples([0.004, 0.004]))
    result = break_even(ticket, dense)
    assert result.inferences == pytest.approx(1000.0)
    assert math.isnan(result.low) and math.isnan(result.high)


def test_total_band_adds_independent_spreads():
    line = CostLine(Estimate(2.0, 0.3, 3), Estimate(0.001, 0.0004, 3))
    mean, std = line.total([0.0, 1000.0])
    assert mean.tolist() == pytest.approx([2.0, 3.0])
    assert std.tolist() == pytest.approx([0.3, 0.5])   # sqrt(0.09 + 0.16)


def test_rows_put_the_baseline_first_and_test_each_ticket_against_it():
    training = {"pp0x1": [1.9, 2.1], "pp90x2": [4.8, 5.2], "pp50x2": [1.0, 1.0]}
    per_inference = {"pp0x1": [0.0038, 0.0042], "pp90x2": [0.0009, 0.0011], "pp50x2": [0.005, 0.006]}
    rows = break_even_rows(cost_lines(training, per_inference), per_inference, "pp0x1")
    assert [r["config"] for r in rows] == ["pp0x1", "pp90x2", "pp50x2"]
    base, ticket, dearer = rows
    assert base["outcome"] == BASELINE and math.isnan(base["break_even_inferences"])
    assert ticket["outcome"] == AFTER
    assert ticket["break_even_inferences"] == pytest.approx(3.0 / 0.003)
    assert ticket["welch_t"] == pytest.approx(welch_t_test([0.0009, 0.0011], [0.0038, 0.0042]).t)
    assert dearer["outcome"] == NEVER and dearer["break_even_inferences"] == math.inf
    assert set(BREAK_EVEN_COLUMNS) - set(ticket) == {"description", "device", "mode"}


def test_descriptions_of_outcomes():
    assert describe_break_even({"outcome": BASELINE}) == "-"
    assert describe_break_even({"outcome": NEVER}) == "never"
    assert describe_break_even({"outcome": IMMEDIATELY}) == "immediately"
    row = {"outcome": AFTER, "break_even_inferences": 1234.5, "break_even_low": 800.0,
           "break_even_high": math.inf}
    assert describe_break_even(row) == "after 1,234 (800 to never)"
    row.update(break_even_inferences=23_456_789.0, break_even_high=3e7)
    assert describe_break_even(row) == "after 2.35e+07 (800 to 3e+07)"


def test_horizon_shows_the_largest_crossing_mid_figure():
    lines = {"a": CostLine(exact(1.0), exact(0.01))}
    assert inference_horizon(lines, [math.nan, 300.0, math.inf, 0.0]) == 600.0
    # no crossing: up to twice where inference CO2 equals training CO2 (1 / 0.01)
    assert inference_horizon(lines, [math.inf]) == pytest.approx(200.0)


def test_csv_cells_keep_full_precision_never_and_blank_not_applicable():
    row = {column: "" for column in BREAK_EVEN_COLUMNS}
    row.update(config="pp90x2", break_even_inferences=math.inf, welch_t=math.nan,
               training_co2_kg_mean=1.2345678901234e-07)
    header, line = break_even_csv_text([row]).splitlines()
    cells = dict(zip(header.split(","), line.split(",")))
    assert cells["break_even_inferences"] == "inf"
    assert cells["welch_t"] == ""
    assert float(cells["training_co2_kg_mean"]) == 1.2345678901234e-07


@pytest.mark.parametrize("available, requested, baseline, chosen", [
    ({"dense", "sparse", "auto"}, None, False, "auto"),
    ({"dense", "sparse"}, None, False, "sparse"),
    ({"dense"}, None, False, "dense"),
    ({"dense", "sparse"}, "dense", False, "dense"),
    ({"dense"}, "sparse", False, None),
    ({"dense", "sparse"}, "sparse", True, "dense"),   # the baseline runs dense kernels
    ({"sparse"}, None, True, "sparse"),               # ... or whatever it was replayed with
])
def test_kernel_mode_choice(available, requested, baseline, chosen):
    assert choose_mode(available, requested, baseline) == chosen
