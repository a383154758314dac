"""Break-even arithmetic, its uncertainty, and the statistics behind it, on numbers worked by hand."""
from __future__ import annotations

import math

import pytest

import numpy as np
from scipy import stats

from data.analysis.break_even_report import (break_even_csv_text, break_even_figure, break_even_table,
                                    choose_mode, figure_caveat, measurements_by_config,
                                    shortest_of, table_notes, too_short_caveat)
from data.analysis.breakeven import (AFTER, BASELINE, BREAK_EVEN_COLUMNS, IMMEDIATELY, NEVER, UNDETERMINED,
                            CostLine, Measurements, break_even, break_even_point, break_even_rows,
                            break_even_verdict, cost_lines, coverage_study, describe_break_even,
                            inference_horizon)
from data.energy.emissions import TrackerSettings
from data.analysis.statistics import (Estimate, fieller_interval, mean_difference, t_quantile,
                             welch_satterthwaite_df, welch_t_test)


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


def test_mean_difference_is_welchs_interval_worked_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    va, vb = (5 / 3) / 4, 10 / 5
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    result = mean_difference(a, b)
    assert result.estimate == pytest.approx(-3.5)
    assert result.df == pytest.approx(df)
    assert (result.low, result.high) == pytest.approx((-3.5 - half, -3.5 + half))
    # the same interval as scipy's own Welch test gives
    scipy_ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((scipy_ci.low, scipy_ci.high))


def test_mean_difference_without_spread_is_exact_and_with_one_run_unknown():
    exact = mean_difference([3.0, 3.0], [1.0, 1.0])
    assert (exact.estimate, exact.standard_error, exact.low, exact.high) == (2.0, 0.0, 2.0, 2.0)
    single = mean_difference([3.0], [1.0, 2.0])
    assert single.estimate == 1.5 and math.isnan(single.low) and math.isnan(single.high)


def test_welch_satterthwaite_df_of_equal_terms_adds_their_dfs():
    assert welch_satterthwaite_df([(0.5, 4), (0.5, 4)]) == pytest.approx(8.0)
    assert welch_satterthwaite_df([(0.0, 4), (0.0, 1)]) == math.inf
    assert t_quantile(0.95, math.inf) == pytest.approx(1.959964, abs=1e-6)


def test_fieller_bounds_solve_its_defining_equation_and_nothing_outside_is_in():
    numerator = mean_difference([4.8, 5.3, 5.0], [1.9, 2.1, 2.3])
    denominator = mean_difference([0.0040, 0.0038, 0.0043], [0.0009, 0.0012, 0.0010])
    result = fieller_interval(numerator, denominator)
    assert result.bounded and result.low < result.estimate < result.high
    n, d = numerator.estimate, denominator.estimate
    vn, vd = numerator.standard_error ** 2, denominator.standard_error ** 2
    t2 = t_quantile(0.95, result.df) ** 2

    def excess(theta):
        return (n - theta * d) ** 2 - t2 * (vn + theta ** 2 * vd)

    for bound in (result.low, result.high):
        assert excess(bound) == pytest.approx(0.0, abs=1e-9 * t2 * vn)
    grid = np.linspace(result.low * 0.5, result.high * 1.5, 2001)
    inside = grid[[excess(theta) <= 0 for theta in grid]]
    assert inside.min() == pytest.approx(result.low, rel=2e-3)
    assert inside.max() == pytest.approx(result.high, rel=2e-3)
    # asymmetric like the ratio: further above the estimate than below
    assert result.high - result.estimate > result.estimate - result.low


def test_fieller_without_spread_is_the_ratio_itself():
    result = fieller_interval(mean_difference([5.0, 5.0], [2.0, 2.0]),
                              mean_difference([0.004, 0.004], [0.001, 0.001]))
    assert result.bounded and result.low == pytest.approx(1000.0) and result.high == pytest.approx(1000.0)


def test_fieller_is_unbounded_when_the_denominator_may_be_zero():
    result = fieller_interval(mean_difference([5.0, 5.2, 4.9], [2.0, 2.1, 1.9]),
                              mean_difference([0.004, 0.001, 0.006], [0.003, 0.004, 0.002]))
    assert not result.bounded and result.low == -math.inf and result.high == math.inf


# --------------------------------------------------------------------------- verdict rules
@pytest.mark.parametrize("extra, saving, outcome, reason", [
    ((-2, -1), (1, 2), IMMEDIATELY, ""),     # known cheaper to train and to run
    ((0, 0), (0, 0), IMMEDIATELY, ""),       # exactly the same cost (no spread at all)
    ((-2, -1), (0, 0), IMMEDIATELY, ""),
    ((1, 2), (1, 2), AFTER, ""),             # known dearer to train, known cheaper to run
    ((1, 2), (-2, -1), NEVER, ""),           # known dearer both ways
    ((1, 2), (0, 0), NEVER, ""),             # dearer to train, exactly no saving
    ((-2, -1), (-2, -1), NEVER, "overtaken"),  # cheaper to train, known dearer to run
    ((-1, 1), (-2, -1), NEVER, "overtaken"),
    ((1, 2), (-1, 1), UNDETERMINED, "CO2 saved per inference includes 0"),
    ((-2, -1), (-1, 1), UNDETERMINED, "CO2 saved per inference includes 0"),
    ((-1, 1), (1, 2), UNDETERMINED, "extra training CO2 includes 0"),
    ((-1, 1), (-1, 1), UNDETERMINED, "extra training CO2 and of the CO2 saved per inference"),
    ((math.nan, math.nan), (1, 2), UNDETERMINED, "fewer than 2 runs"),
])
def test_verdict_rules(extra, saving, outcome, reason):
    verdict = break_even_verdict(*extra, *saving)
    assert verdict.outcome == outcome
    assert reason in verdict.reason and (reason or verdict.reason == "")


@pytest.mark.parametrize("extra, saving, as_measured", [
    ((1, 2), (1, 2), "as measured: after"),
    ((-2, -1), (1, 2), "as measured: immediately"),
    ((-1, 1), (-1, 1), "as measured: undetermined anyway"),
])
def test_too_short_measurements_leave_every_verdict_undetermined(extra, saving, as_measured):
    verdict = break_even_verdict(*extra, *saving, too_short=True)
    assert verdict.outcome == UNDETERMINED
    assert verdict.reason.startswith("measurements too short to trust (under 5 ")
    assert verdict.reason.endswith(as_measured)


# --------------------------------------------------------------------------- break-even
def measured(training, per_inference, too_short=False, seconds=60.0) -> Measurements:
    return Measurements(training, per_inference, seconds, too_short)


# ticket: 5 kg to train, 1 g per inference; dense: 2 kg, 4 g. 5 + 0.001 N = 2 + 0.004 N at 1000
TICKET = measured([4.8, 5.2], [0.0009, 0.0011])
DENSE = measured([1.9, 2.1], [0.0038, 0.0042])


def test_two_exact_lines_cross_where_worked_out_by_hand():
    ticket, dense = measured([5.0, 5.0], [0.001, 0.001]), measured([2.0, 2.0], [0.004, 0.004])
    result = break_even(ticket, dense)
    assert result.outcome == AFTER and result.reason == ""
    assert result.inferences == pytest.approx(1000.0)
    assert (result.low, result.high) == pytest.approx((1000.0, 1000.0))
    assert ticket.line.total(1000.0)[0] == pytest.approx(dense.line.total(1000.0)[0])


def test_break_even_interval_worked_by_hand():
    result = break_even(TICKET, DENSE)
    assert result.outcome == AFTER
    assert result.extra_training.estimate == pytest.approx(3.0)
    assert result.saving_per_inference.estimate == pytest.approx(0.003)
    # extra training: variance of the mean 0.08/2 + 0.02/2 = 0.05; saving: 4e-8 + 1e-8 = 5e-8.
    # At N = 1000 x, (3 - 3x)^2 = t^2 (0.05 + 0.05 x^2): a quadratic whose roots multiply to 1,
    # so the bounds lie symmetric about 1000 on a log scale. The four variance terms, each with
    # one degree of freedom: 0.04 and 0.01 for each difference (the saving's scaled by 1000^2),
    # so both have Welch df 0.05^2 / (0.04^2 + 0.01^2), the one t of the verdict and interval.
    t2 = stats.t.ppf(0.975, 0.0025 / 0.0017) ** 2
    k = 18.0 / (9.0 - 0.05 * t2)
    low, high = (k - math.sqrt(k * k - 4)) / 2, (k + math.sqrt(k * k - 4)) / 2
    assert (result.low, result.high) == pytest.approx((1000.0 * low, 1000.0 * high))
    assert result.low * result.high == pytest.approx(1000.0 ** 2)


def test_break_even_is_undetermined_with_the_caveat_when_measured_too_briefly():
    for ticket, dense in ((measured(TICKET.training, TICKET.per_inference, too_short=True), DENSE),
                          (TICKET, measured(DENSE.training, DENSE.per_inference, too_short=True))):
        result = break_even(ticket, dense)
        assert result.outcome == UNDETERMINED and result.too_short
        assert "too short" in result.reason and result.reason.endswith("as measured: after")
        # the interval as measured is still given, for what it is worth
        assert result.low * result.high == pytest.approx(1000.0 ** 2)


def test_break_even_when_the_saving_may_be_nothing_is_undetermined_from_0_to_never():
    result = break_even(measured([5.0, 5.2, 4.8], [0.003, 0.005, 0.001]),
                        measured([2.0, 2.1, 1.9], [0.004, 0.003, 0.005]))
    assert result.outcome == UNDETERMINED
    assert "CO2 saved per inference includes 0" in result.reason
    assert (result.low, result.high) == (0.0, math.inf)
    assert result.inferences == pytest.approx(3.0 / 0.001)


def test_break_even_with_a_single_run_has_no_interval():
    result = break_even(measured([5.0], [0.001, 0.001]), DENSE)
    assert result.outcome == UNDETERMINED and "fewer than 2 runs" in result.reason
    assert result.inferences == pytest.approx(3.0 / 0.003)
    assert math.isnan(result.low) and math.isnan(result.high)


def test_never_and_immediately_have_degenerate_intervals():
    never = break_even(measured([5.0, 5.1], [0.006, 0.0061]), DENSE)
    assert never.outcome == NEVER and (never.low, never.high) == (math.inf, math.inf)
    assert never.inferences == math.inf
    immediately = break_even(measured([0.5, 0.52], [0.0010, 0.0011]), DENSE)
    assert immediately.outcome == IMMEDIATELY and (immediately.low, immediately.high) == (0.0, 0.0)


@pytest.mark.parametrize("extra, saving, point", [
    (-1.0, 0.5, 0.0), (0.0, 0.0, 0.0), (2.0, 0.5, 4.0), (2.0, 0.0, math.inf), (-1.0, -0.5, math.inf),
])
def test_point_estimate(extra, saving, point):
    assert break_even_point(extra, saving) == point


def test_interval_holds_its_confidence_level_and_is_narrower_than_the_one_sd_box():
    # 1000 synthetic studies of 5 seeds, true N* 2,500. The t of the smaller df makes the
    # interval conservative (97% measured); it fails only if it covers less than 95% by more
    # than 3 standard errors of a 1000-study proportion (0.007), whatever the generator seed.
    result = coverage_study(studies=1000, seeds=5, rng_seed=7)
    coverage, median_ratio = result["fieller"]
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 1000)
    assert median_ratio < result["one_sd_box"][1]


def saving_welch_df_2_35():
    """3 seeds a side. Saving per inference 3e-3 with standard error 1e-3 (t = 3), its two
    variance terms 0.919 : 0.081 (Welch df 2.35, t quantile 4.0: its interval includes 0). Extra
    training 3 kg, standard error 0.5 (t = 6: known positive at either df)."""
    s_base = math.sqrt(3e-6 / 1.088)
    s_ticket = math.sqrt(0.088) * s_base
    spread = np.array([-1.0, 0.0, 1.0])
    ticket = measured(5.0 + math.sqrt(0.375) * spread, 1e-3 + s_ticket * spread)
    dense = measured(2.0 + math.sqrt(0.375) * spread, 4e-3 + s_base * spread)
    return ticket, dense


def test_interval_and_verdict_share_the_savings_welch_df_so_undetermined_is_unbounded():
    ticket, dense = saving_welch_df_2_35()
    terms = [np.var(x, ddof=1) / 3 for x in (dense.per_inference, ticket.per_inference)]
    saving_df = sum(terms) ** 2 / sum(v ** 2 / 2 for v in terms)
    assert saving_df == pytest.approx(2.35, abs=0.01)
    result = break_even(ticket, dense)
    assert result.df == pytest.approx(saving_df)
    assert result.extra_training.low > 0       # known positive even at the saving's df
    assert result.saving_per_inference.low < 0 < result.saving_per_inference.high
    assert result.outcome == UNDETERMINED and "CO2 saved per inference includes 0" in result.reason
    assert (result.low, result.high) == (0.0, math.inf)
    # the t of the four groups together at N* = 1000 (3.5 df: terms 0.125, 0.125 and 1000^2
    # times the saving's) would have bounded N*: the disagreement this test guards against
    four = [0.125, 0.125] + [v * 1000 ** 2 for v in terms]
    pooled_df = sum(four) ** 2 / sum(v ** 2 / 2 for v in four)
    assert pooled_df == pytest.approx(3.54, abs=0.01)
    assert result.saving_per_inference.estimate / result.saving_per_inference.standard_error > \
        t_quantile(0.95, pooled_df)


def test_verdict_and_interval_never_disagree():
    rng = np.random.default_rng(3)
    for _ in range(400):
        seeds = int(rng.integers(2, 6))
        ticket = measured(rng.normal(5, rng.uniform(0.1, 3), seeds), rng.normal(1e-3, rng.uniform(1e-5, 2e-3), seeds))
        dense = measured(rng.normal(2, rng.uniform(0.1, 3), seeds), rng.normal(4e-3, rng.uniform(1e-5, 2e-3), seeds))
        result = break_even(ticket, dense)
        saving, extra = result.saving_per_inference, result.extra_training
        assert (result.high == math.inf) == (saving.low <= 0 or result.outcome == NEVER)
        if result.outcome == AFTER:
            assert 0 < result.low <= result.inferences <= result.high < math.inf
        if result.outcome == UNDETERMINED and saving.low > 0:
            assert result.low == 0.0 and extra.low <= 0 < result.high < math.inf


def test_never_that_hides_a_crossing_says_both():
    # cheaper to train by 1 kg, dearer by 0.75 g per inference: ahead until 1,333, behind after
    result = break_even(measured([0.99, 1.0, 1.01], [0.00474, 0.00475, 0.00476]),
                        measured([1.99, 2.0, 2.01], [0.00399, 0.004, 0.00401]))
    assert result.outcome == NEVER
    assert result.reason == ("cheaper to train but dearer per inference: ahead until about 1,333 "
                             "inferences, behind after")
    row = {"outcome": NEVER, "reason": result.reason}
    assert describe_break_even(row) == "never (ahead until about 1,333 inferences, behind after)"


def test_total_band_adds_independent_spreads():
    line = CostLine(Estimate(2.0, 0.3, 3), Estimate(0.001, 0.0004, 3))
    mean, std = line.total([0.0, 1000.0])
    assert mean.tolist() == pytest.approx([2.0, 3.0])
    assert std.tolist() == pytest.approx([0.3, 0.5])   # sqrt(0.09 + 0.16)


def known_measurements(too_short_config: str | None = None) -> dict[str, Measurements]:
    values = {"pp0x1": DENSE, "pp90x2": TICKET,
              "pp50x2": measured([0.5, 0.52], [0.0010, 0.0011]),     # cheaper both ways
              "pp80x2": measured([5.0, 5.1], [0.006, 0.0061])}       # dearer both ways
    if too_short_config:
        m = values[too_short_config]
        values[too_short_config] = measured(m.training, m.per_inference, too_short=True, seconds=0.4)
    return values


def test_rows_put_the_baseline_first_and_test_each_ticket_against_it():
    rows = break_even_rows(known_measurements(), "pp0x1")
    assert [r["config"] for r in rows] == ["pp0x1", "pp90x2", "pp50x2", "pp80x2"]
    base, ticket, cheaper, dearer = rows
    assert base["outcome"] == BASELINE and math.isnan(base["break_even_inferences"])
    assert math.isnan(base["welch_p"]) and math.isnan(base["extra_training_co2_kg_ci_low"])
    assert ticket["outcome"] == AFTER
    assert ticket["break_even_inferences"] == pytest.approx(1000.0)
    assert ticket["break_even_low"] * ticket["break_even_high"] == pytest.approx(1e6)
    assert ticket["extra_training_co2_kg_ci_low"] > 0 and ticket["co2_kg_saved_per_inference_ci_low"] > 0
    assert ticket["welch_t"] == pytest.approx(welch_t_test([0.0009, 0.0011], [0.0038, 0.0042]).t)
    assert ticket["confidence_level"] == 0.95 and ticket["welch_level"] == 0.05
    assert cheaper["outcome"] == IMMEDIATELY and dearer["outcome"] == NEVER
    assert not any(row["too_short"] for row in rows)
    assert set(BREAK_EVEN_COLUMNS) - set(ticket) == {"description", "device", "mode"}


def test_a_baseline_measured_too_briefly_makes_every_verdict_undetermined():
    rows = break_even_rows(known_measurements("pp0x1"), "pp0x1")
    assert [row["outcome"] for row in rows] == [BASELINE] + [UNDETERMINED] * 3
    assert all(row["too_short"] for row in rows)
    assert rows[1]["reason"].endswith("as measured: after")
    assert rows[1]["break_even_inferences"] == pytest.approx(1000.0)


def report_rows(too_short_config: str | None = None) -> list[dict]:
    rows = break_even_rows(known_measurements(too_short_config), "pp0x1")
    for row in rows:
        row.update(mode="sparse", description="", device="cpu")
    return rows


def test_table_csv_and_figure_say_when_measurements_were_too_short():
    tracker = TrackerSettings(measure_power_secs=1.0)
    rows = report_rows("pp90x2")
    table = break_even_table(rows).splitlines()
    line = next(line for line in table if line.split()[0] == "pp90x2")
    assert "undetermined (estimate 1,000; 95% CI" in line and "0.4 s TOO SHORT" in line
    other = next(line for line in table if line.split()[0] == "pp50x2")
    assert "immediately" in other and "TOO SHORT" not in other
    assert too_short_caveat(rows, tracker).startswith(
        "WARNING: measurements of pp90x2 lasted as little as 0.4 s, under 5 of CodeCarbon's 1 s")
    assert "pp90x2: undetermined because measurements too short" in table_notes(rows)
    header, *lines = break_even_csv_text(rows).splitlines()
    cells = [dict(zip(header.split(","), line.split(","))) for line in lines]
    assert [c["too_short"] for c in cells] == ["False", "True", "False", "False"]
    assert cells[1]["outcome"] == "undetermined" and cells[1]["shortest_measurement_s"] == "0.4"
    caveat = figure_caveat(rows, tracker)
    assert caveat.startswith("WARNING: measurements as short as 0.4 s")
    fig = break_even_figure(rows, cost_lines(known_measurements("pp90x2")), 2000.0, "t", caveat)
    # the legend sits in the axes or, where it would cover data, beside them (entries wrapped)
    legend = fig.axes[0].get_legend() or fig.legends[0]
    labels = [" ".join(text.get_text().split()) for text in legend.get_texts()]
    assert any(label.endswith("undetermined, too short") for label in labels)
    assert fig._suptitle.get_text().replace("\n", " ") == caveat
    # a longer measurement on a slower sampling interval is just as suspect
    assert too_short_caveat(report_rows(), TrackerSettings(measure_power_secs=15.0))
    assert not too_short_caveat(report_rows(), tracker) and not figure_caveat(report_rows(), tracker)


def test_contaminated_measurements_make_the_verdict_undetermined_and_say_why():
    crowded = Measurements(TICKET.training, TICKET.per_inference, 60.0, False, 0.6, True)
    result = break_even(crowded, DENSE)
    assert result.outcome == UNDETERMINED and result.contaminated
    assert result.reason == "measured while other processes used over 25% of the machine; as measured: after"
    assert result.low * result.high == pytest.approx(1000.0 ** 2)   # the interval as measured
    rows = break_even_rows({"pp0x1": DENSE, "pp90x2": crowded}, "pp0x1")
    assert rows[1]["contaminated"] and rows[1]["others_cpu_share_max"] == 0.6
    assert not rows[0]["contaminated"]
    for row in rows:
        row.update(mode="dense", description="", device="cpu")
    assert "CONTAMINATED" in break_even_table(rows).splitlines()[-1]
    both = break_even(Measurements(TICKET.training, TICKET.per_inference, 0.4, True, 0.6, True), DENSE)
    assert both.reason.startswith("measurements too short") and "other processes" in both.reason


def test_others_share_above_the_threshold_flags_a_configuration():
    tracker = TrackerSettings(measure_power_secs=1.0)
    result = measurements_by_config(["a", "b"], {"a": [1.0], "b": [2.0]}, {"a": 100.0, "b": 100.0},
                                    {"a": [0.1], "b": [0.2]}, {"a": 30.0, "b": 30.0}, tracker,
                                    {"a": [0.1, 0.3], "b": [0.2, math.nan]})
    assert result["a"].contaminated and result["a"].others_cpu_share == 0.3
    assert not result["b"].contaminated and result["b"].others_cpu_share == 0.2


def test_figure_draws_each_verdict_with_its_reason_and_promises_bars_only_when_drawn():
    rows = report_rows()
    fig = break_even_figure(rows, cost_lines(known_measurements()), 2000.0, "t")
    label = fig.axes[0].get_xlabel()
    assert "bars: 95% CI of the break-even point" in label
    assert "pp90x2: after 1,000 (95% CI" in label and "pp80x2: never" in label
    ticket, dense = saving_welch_df_2_35()
    undetermined = break_even_rows({"pp0x1": dense, "pp90x2": ticket}, "pp0x1")
    for row in undetermined:
        row.update(mode="dense", description="", device="cpu")
    fig = break_even_figure(undetermined, cost_lines({"pp0x1": dense, "pp90x2": ticket}), 2000.0, "t")
    label = fig.axes[0].get_xlabel().replace("\n", " ")
    assert "bars:" not in label
    assert "pp90x2: undetermined" in label and "saved per inference includes 0" in label


def test_measurements_take_the_shortest_of_training_and_inference():
    tracker = TrackerSettings(measure_power_secs=1.0)
    result = measurements_by_config(["a", "b"], {"a": [1.0], "b": [2.0]}, {"a": 100.0, "b": 100.0},
                                    {"a": [0.1], "b": [0.2]}, {"a": 3.0, "b": math.nan}, tracker)
    assert result["a"].shortest_measurement_s == 3.0 and result["a"].too_short
    assert result["b"].shortest_measurement_s == 100.0 and not result["b"].too_short
    assert math.isnan(shortest_of([math.nan])) and shortest_of([math.nan, 2.0, 1.0]) == 1.0


def test_descriptions_of_outcomes():
    assert describe_break_even({"outcome": BASELINE}) == "-"
    assert describe_break_even({"outcome": NEVER}) == "never"
    assert describe_break_even({"outcome": IMMEDIATELY}) == "immediately"
    row = {"outcome": AFTER, "break_even_inferences": 1234.5, "break_even_low": 800.0,
           "break_even_high": 2000.0}
    assert describe_break_even(row) == "after 1,234 (95% CI 800 to 2,000)"
    row.update(break_even_inferences=23_456_789.0, break_even_high=3e7)
    assert describe_break_even(row) == "after 2.35e+07 (95% CI 800 to 3e+07)"
    row.update(outcome=UNDETERMINED, break_even_inferences=0.0, break_even_low=0.0,
               break_even_high=math.inf)
    assert describe_break_even(row) == "undetermined (estimate immediately; 95% CI 0 to never)"
    row.update(break_even_low=math.nan, break_even_high=math.nan)
    assert describe_break_even(row) == "undetermined (estimate immediately)"


def test_horizon_shows_the_largest_crossing_mid_figure():
    lines = {"a": CostLine(Estimate(1.0, 0.0, 2), Estimate(0.01, 0.0, 2))}
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


def test_too_short_uses_the_sampling_interval_the_runs_recorded():
    from types import SimpleNamespace

    from data.analysis.break_even_report import recorded_sample_seconds

    replays = [SimpleNamespace(sample_seconds=math.nan), SimpleNamespace(sample_seconds=2.0)]
    assert recorded_sample_seconds({"a.pt": {"sample_seconds": 15.0}}, replays, 1.0) == 15.0
    assert recorded_sample_seconds({"a.pt": None}, replays, 1.0) == 2.0
    # nothing recorded (files of earlier versions, or an empty cell): the caller's figure
    assert recorded_sample_seconds({}, [SimpleNamespace(sample_seconds=0.0)], 3.0) == 3.0
