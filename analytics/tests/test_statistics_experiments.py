"""Each statistic against a direct scipy/numpy computation on fixed data."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, root_mean_squared_error

from analytics.statistics.experiments import (
    compare_mae,
    compare_means,
    compare_proportions,
    compare_rmse,
    mae_estimate,
    rmse_estimate,
    sample_ratio_mismatch,
    t_interval,
    wilson_interval,
)

Z95 = stats.norm.ppf(0.975)


def wilson_by_hand(k, n, z=Z95):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (7, 10), (81, 100), (500, 1000), (1000, 1000)])
def test_wilson_interval_matches_the_score_formula(k, n):
    estimate = wilson_interval(k, n)
    low, high = wilson_by_hand(k, n)
    assert estimate.value == k / n
    assert estimate.low == pytest.approx(low, abs=1e-12)
    assert estimate.high == pytest.approx(high, abs=1e-12)


def test_t_interval_matches_numpy_and_the_t_quantile():
    values = np.array([3.1, 2.7, 4.4, 3.9, 3.3, 2.8, 4.0, 3.6])
    estimate = t_interval(mean=values.mean(), std=values.std(ddof=1), n=len(values))
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    assert estimate.value == pytest.approx(values.mean())
    assert estimate.low == pytest.approx(values.mean() - half, rel=1e-12)
    assert estimate.high == pytest.approx(values.mean() + half, rel=1e-12)


def test_two_proportion_z_test_matches_uncorrected_chi_squared():
    # z^2 of the pooled two-proportion test equals Pearson's chi-squared on the 2x2 table.
    comparison = compare_proportions(230, 1000, 200, 1000)
    chi2, p_value, _, _ = stats.chi2_contingency([[230, 770], [200, 800]], correction=False)
    assert comparison.difference == pytest.approx(0.03)
    assert comparison.p_value == pytest.approx(p_value, rel=1e-9)
    pooled = 430 / 2000
    z = 0.03 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert z * z == pytest.approx(chi2, rel=1e-9)


def test_difference_interval_is_newcombes_hybrid_score():
    comparison = compare_proportions(45, 60, 30, 55)
    l1, u1 = wilson_by_hand(45, 60)
    l0, u0 = wilson_by_hand(30, 55)
    p1, p0 = 45 / 60, 30 / 55
    assert comparison.low == pytest.approx(p1 - p0 - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), rel=1e-9)
    assert comparison.high == pytest.approx(p1 - p0 + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2), rel=1e-9)


def test_welch_matches_scipy_ttest_ind_and_its_interval():
    rng = np.random.default_rng(42)
    variant, control = rng.normal(10.4, 2.0, size=40), rng.normal(10.0, 3.5, size=55)
    comparison = compare_means(
        mean=variant.mean(),
        std=variant.std(ddof=1),
        n=len(variant),
        control_mean=control.mean(),
        control_std=control.std(ddof=1),
        control_n=len(control),
    )
    result = stats.ttest_ind(variant, control, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert comparison.difference == pytest.approx(variant.mean() - control.mean())
    assert comparison.p_value == pytest.approx(result.pvalue, rel=1e-9)
    assert comparison.low == pytest.approx(interval.low, rel=1e-9)
    assert comparison.high == pytest.approx(interval.high, rel=1e-9)


def test_srm_matches_scipy_chisquare():
    check = sample_ratio_mismatch([5120, 4880], [50, 50])
    expected = stats.chisquare([5120, 4880], f_exp=[5000, 5000])
    assert check.statistic == pytest.approx(expected.statistic)
    assert check.p_value == pytest.approx(expected.pvalue)
    assert check.expected == [5000, 5000]
    assert check.is_mismatch is False


def test_srm_alarms_when_a_variant_is_starved():
    check = sample_ratio_mismatch([9000, 8100, 900], [45, 45, 10])
    assert check.p_value < 1e-6
    assert check.is_mismatch is True


def test_srm_stays_quiet_on_a_fair_split():
    rng = np.random.default_rng(1)
    assignments = rng.choice(3, size=30_000, p=[0.2, 0.3, 0.5])
    check = sample_ratio_mismatch(np.bincount(assignments).tolist(), [20, 30, 50])
    assert check.p_value > 0.001
    assert check.is_mismatch is False


@pytest.mark.parametrize("n", [0])
def test_no_samples_give_no_interval(n):
    assert wilson_interval(0, n).value is None
    assert compare_proportions(0, 0, 3, 10).p_value is None
    assert sample_ratio_mismatch([0, 0], [50, 50]).p_value is None


# --- regressors' errors ---------------------------------------------------------------------


def predictions_and_truth(seed, n, *, bias=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(10.0, 3.0, size=n)
    return truth + bias + rng.normal(0.0, scale, size=n), truth


def test_mae_is_sklearns_with_the_t_interval_of_the_absolute_errors():
    predicted, truth = predictions_and_truth(1, 80, bias=0.3)
    estimate = mae_estimate(predicted - truth)
    absolute = np.abs(predicted - truth)
    low, high = stats.t.interval(0.95, df=79, loc=absolute.mean(), scale=stats.sem(absolute))
    assert estimate.value == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-12)
    assert (estimate.low, estimate.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))


def test_rmse_is_sklearns_with_the_square_roots_of_the_mse_interval():
    predicted, truth = predictions_and_truth(2, 80, scale=2.0)
    estimate = rmse_estimate(predicted - truth)
    squared = (predicted - truth) ** 2
    low, high = stats.t.interval(0.95, df=79, loc=squared.mean(), scale=stats.sem(squared))
    assert estimate.value == pytest.approx(root_mean_squared_error(truth, predicted), rel=1e-12)
    assert (estimate.low, estimate.high) == (pytest.approx(math.sqrt(low), rel=1e-12), pytest.approx(math.sqrt(high), rel=1e-12))


def test_mae_difference_is_welchs_test_of_the_absolute_errors():
    predicted, truth = predictions_and_truth(3, 70, scale=1.0)
    control_predicted, control_truth = predictions_and_truth(4, 90, scale=1.5)
    comparison = compare_mae(predicted - truth, control_predicted - control_truth)
    welch = stats.ttest_ind(np.abs(predicted - truth), np.abs(control_predicted - control_truth), equal_var=False)
    interval = welch.confidence_interval(0.95)
    expected = mean_absolute_error(truth, predicted) - mean_absolute_error(control_truth, control_predicted)
    assert comparison.difference == pytest.approx(expected, rel=1e-12)
    assert comparison.p_value == pytest.approx(welch.pvalue, rel=1e-9)
    assert (comparison.low, comparison.high) == (pytest.approx(interval.low, rel=1e-9), pytest.approx(interval.high, rel=1e-9))


def test_rmse_difference_uses_the_delta_method_with_welchs_degrees_of_freedom():
    predicted, truth = predictions_and_truth(5, 120, scale=1.0)
    control_predicted, control_truth = predictions_and_truth(6, 100, scale=1.4)
    comparison = compare_rmse(predicted - truth, control_predicted - control_truth)
    rmse, control_rmse = root_mean_squared_error(truth, predicted), root_mean_squared_error(control_truth, control_predicted)
    v1 = np.var((predicted - truth) ** 2, ddof=1) / 120 / (4 * rmse**2)
    v0 = np.var((control_predicted - control_truth) ** 2, ddof=1) / 100 / (4 * control_rmse**2)
    df = (v1 + v0) ** 2 / (v1**2 / 119 + v0**2 / 99)
    t = (rmse - control_rmse) / math.sqrt(v1 + v0)
    assert comparison.difference == pytest.approx(rmse - control_rmse, rel=1e-12)
    assert comparison.p_value == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    half = stats.t.ppf(0.975, df) * math.sqrt(v1 + v0)
    assert (comparison.low, comparison.high) == (
        pytest.approx(rmse - control_rmse - half),
        pytest.approx(rmse - control_rmse + half),
    )


def test_the_rmse_tests_false_alarm_rate_is_its_level():
    """Equal error spreads: the difference is significant about 5% of the time, not more."""
    rng = np.random.default_rng(12)
    alarms = sum(compare_rmse(rng.normal(0, 1, 150), rng.normal(0, 1, 150)).p_value < 0.05 for _ in range(400))
    assert 8 <= alarms <= 35  # 20 expected; a binomial(400, 0.05) stays in here 99.9% of the time


def test_perfect_predictions_have_zero_error_and_no_spread():
    assert compare_rmse(np.zeros(5), np.zeros(5)).p_value == 1.0
    assert rmse_estimate(np.zeros(5)).value == 0.0
    estimate = mae_estimate(np.zeros(5))
    assert (estimate.value, estimate.low, estimate.high) == (0.0, 0.0, 0.0)
