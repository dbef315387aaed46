"""A/B statistics: intervals for one variant, its difference to the control, and SRM.

Accuracy is a proportion: Wilson score interval, Newcombe's hybrid score interval for the
difference, and the pooled two-proportion z-test. A regressor's mean absolute error is the
mean of its absolute errors: Student's t interval, and Welch's t-test (unequal variances)
with the Welch–Satterthwaite interval for the difference. Its root mean squared error is
the square root of the mean squared error: the square roots of the MSE's t interval, and
for the difference the delta method (se of RMSE = se of MSE / (2 RMSE)) with Welch's degrees
of freedom. Sample-ratio mismatch: chi-squared goodness of fit of assignment counts to the
configured weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# scipy is imported inside the functions that use it: imported here it cost every Django process
# (migrate, beat, each worker) a second or more of start-up, through the admin's imports.


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Comparison:
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None


NOTHING = Estimate(None, None, None)
NO_COMPARISON = Comparison(None, None, None, None)


def _z(confidence: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> Estimate:
    """The proportion and its Wilson score interval (scipy's binomtest, method 'wilson')."""
    from scipy import stats

    if n <= 0:
        return NOTHING
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high))


def t_interval(*, mean: float, std: float, n: int, confidence: float = 0.95) -> Estimate:
    """The mean and its Student t interval, from the sample mean, sample std (ddof=1) and n."""
    from scipy import stats

    if n <= 0:
        return NOTHING
    if n == 1 or not math.isfinite(std):
        return Estimate(mean, None, None)
    sem = std / math.sqrt(n)
    if sem == 0:
        return Estimate(mean, mean, mean)
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high))


def compare_proportions(
    successes: int, n: int, control_successes: int, control_n: int, *, confidence: float = 0.95
) -> Comparison:
    """Variant minus control: Newcombe's interval and the pooled two-proportion z-test p-value."""
    from scipy import stats

    if n <= 0 or control_n <= 0:
        return NO_COMPARISON
    p1, p0 = successes / n, control_successes / control_n
    difference = p1 - p0
    w1, w0 = (
        wilson_interval(successes, n, confidence=confidence),
        wilson_interval(control_successes, control_n, confidence=confidence),
    )
    low = difference - math.sqrt((p1 - w1.low) ** 2 + (w0.high - p0) ** 2)
    high = difference + math.sqrt((w1.high - p1) ** 2 + (p0 - w0.low) ** 2)
    pooled = (successes + control_successes) / (n + control_n)
    variance = pooled * (1 - pooled) * (1 / n + 1 / control_n)
    if variance == 0:
        p_value = 1.0 if difference == 0 else 0.0
    else:
        z = difference / math.sqrt(variance)
        p_value = float(2 * stats.norm.sf(abs(z)))
    return Comparison(difference, low, high, p_value)


def compare_means(
    *, mean: float, std: float, n: int, control_mean: float, control_std: float, control_n: int, confidence: float = 0.95
) -> Comparison:
    """Variant minus control: Welch's t-test p-value and the Welch–Satterthwaite interval."""
    from scipy import stats

    if n < 2 or control_n < 2:
        return NO_COMPARISON
    difference = mean - control_mean
    v1, v0 = std**2 / n, control_std**2 / control_n
    se = math.sqrt(v1 + v0)
    if se == 0:
        return Comparison(difference, difference, difference, 1.0 if difference == 0 else 0.0)
    result = stats.ttest_ind_from_stats(mean, std, n, control_mean, control_std, control_n, equal_var=False)
    df = (v1 + v0) ** 2 / (v1**2 / (n - 1) + v0**2 / (control_n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Comparison(difference, difference - half, difference + half, float(result.pvalue))


def mae_estimate(errors: np.ndarray, *, confidence: float = 0.95) -> Estimate:
    """Mean absolute error of `errors` (prediction minus truth) and its t interval."""
    absolute = np.abs(errors)
    n = len(absolute)
    if n == 0:
        return NOTHING
    return t_interval(
        mean=float(absolute.mean()), std=float(absolute.std(ddof=1)) if n > 1 else math.nan, n=n, confidence=confidence
    )


def rmse_estimate(errors: np.ndarray, *, confidence: float = 0.95) -> Estimate:
    """Root mean squared error of `errors` and the square roots of the MSE's t interval."""
    squared = np.square(errors)
    n = len(squared)
    if n == 0:
        return NOTHING
    mse = t_interval(
        mean=float(squared.mean()), std=float(squared.std(ddof=1)) if n > 1 else math.nan, n=n, confidence=confidence
    )
    low = None if mse.low is None else math.sqrt(max(mse.low, 0.0))
    high = None if mse.high is None else math.sqrt(mse.high)
    return Estimate(math.sqrt(mse.value), low, high)


def compare_mae(errors: np.ndarray, control_errors: np.ndarray, *, confidence: float = 0.95) -> Comparison:
    """Variant's MAE minus the control's: Welch's test and interval on the absolute errors."""
    absolute, control = np.abs(errors), np.abs(control_errors)
    if len(absolute) < 2 or len(control) < 2:
        return NO_COMPARISON
    return compare_means(
        mean=float(absolute.mean()),
        std=float(absolute.std(ddof=1)),
        n=len(absolute),
        control_mean=float(control.mean()),
        control_std=float(control.std(ddof=1)),
        control_n=len(control),
        confidence=confidence,
    )


def compare_rmse(errors: np.ndarray, control_errors: np.ndarray, *, confidence: float = 0.95) -> Comparison:
    """Variant's RMSE minus the control's: delta-method standard errors, Welch's degrees of freedom."""
    from scipy import stats

    n, control_n = len(errors), len(control_errors)
    if n < 2 or control_n < 2:
        return NO_COMPARISON

    def rmse_and_variance(values: np.ndarray) -> tuple[float, float]:
        squared = np.square(values)
        rmse = math.sqrt(float(squared.mean()))
        # Var(RMSE) ~ Var(MSE) / (4 MSE); all errors zero leaves nothing to vary.
        return rmse, (float(squared.var(ddof=1)) / len(values) / (4 * rmse**2) if rmse > 0 else 0.0)

    rmse, v1 = rmse_and_variance(errors)
    control_rmse, v0 = rmse_and_variance(control_errors)
    difference = rmse - control_rmse
    se = math.sqrt(v1 + v0)
    if se == 0:
        return Comparison(difference, difference, difference, 1.0 if difference == 0 else 0.0)
    df = (v1 + v0) ** 2 / (v1**2 / (n - 1) + v0**2 / (control_n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p_value = float(2 * stats.t.sf(abs(difference) / se, df))
    return Comparison(difference, difference - half, difference + half, p_value)


@dataclass(frozen=True)
class SampleRatioCheck:
    statistic: float | None
    p_value: float | None
    expected: list[float]
    is_mismatch: bool


def sample_ratio_mismatch(observed: Sequence[int], weights: Sequence[float], *, alarm_p_value: float = 0.001) -> SampleRatioCheck:
    """Chi-squared goodness of fit of assignment counts to the weights; alarm below `alarm_p_value`."""
    from scipy import stats

    observed_array = np.asarray(observed, dtype=np.float64)
    weights_array = np.asarray(weights, dtype=np.float64)
    total = observed_array.sum()
    expected = (total * weights_array / weights_array.sum()).tolist()
    if total == 0 or len(observed_array) < 2:
        return SampleRatioCheck(None, None, expected, False)
    result = stats.chisquare(observed_array, f_exp=expected)
    p_value = float(result.pvalue)
    return SampleRatioCheck(float(result.statistic), p_value, expected, p_value < alarm_p_value)
