"""Drift tests against direct scipy/numpy computations, and the test choice table."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from analytics.statistics import drift
from analytics.statistics.quantiles import merge_quantiles, quantiles_of


def normal(seed, size, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size)


def categories(seed, size, p):
    return np.random.default_rng(seed).choice(np.array(["a", "b", "c", "d"][: len(p)], dtype=object), size=size, p=p)


@pytest.mark.parametrize(
    "reference, current, kind, test",
    [
        pytest.param(normal(1, 500), normal(2, 300), "num", "ks", id="small-numeric-ks"),
        pytest.param(np.arange(500) % 4 * 1.0, np.arange(300) % 4 * 1.0, "num", "chisquare", id="small-numeric-few-values-chi2"),
        pytest.param(np.arange(500) % 2 * 1.0, np.arange(300) % 2 * 1.0, "num", "z", id="small-numeric-binary-z"),
        pytest.param(
            categories(1, 500, [0.5, 0.3, 0.2]),
            categories(2, 300, [0.5, 0.3, 0.2]),
            "cat",
            "chisquare",
            id="small-categorical-chi2",
        ),
        pytest.param(categories(1, 500, [0.5, 0.5]), categories(2, 300, [0.5, 0.5]), "cat", "z", id="small-binary-z"),
        pytest.param(normal(1, 1001), normal(2, 300), "num", "wasserstein", id="large-numeric-wasserstein"),
        pytest.param(
            np.arange(2000) % 5 * 1.0, np.arange(300) % 5 * 1.0, "num", "jensenshannon", id="large-numeric-few-values-js"
        ),
        pytest.param(
            categories(1, 2000, [0.5, 0.3, 0.2]),
            categories(2, 300, [0.5, 0.3, 0.2]),
            "cat",
            "jensenshannon",
            id="large-categorical-js",
        ),
    ],
)
def test_the_test_is_chosen_as_evidentlys_defaults(reference, current, kind, test):
    assert drift.choose_test(reference, current, kind) == test


def test_ks_is_scipys():
    ref, cur = normal(1, 400), normal(2, 350, loc=0.2)
    statistic, p_value = drift.ks_test(ref, cur)
    expected = stats.ks_2samp(ref, cur)
    assert (statistic, p_value) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))


def test_chisquare_scales_reference_counts_to_the_current_size():
    ref = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object)
    cur = np.array(["a"] * 20 + ["b"] * 20 + ["c"] * 10, dtype=object)
    statistic, p_value = drift.chisquare_test(ref, cur)
    expected = stats.chisquare([20, 20, 10], f_exp=[25, 15, 10])
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue)


def test_chisquare_flags_a_value_the_reference_never_had():
    ref = np.array(["a"] * 50 + ["b"] * 50, dtype=object)
    cur = np.array(["a"] * 10 + ["z"], dtype=object)
    assert drift.chisquare_test(ref, cur)[1] == 0.0


def test_z_test_is_the_pooled_two_proportion_test():
    ref = np.array([0.0] * 60 + [1.0] * 40)
    cur = np.array([0.0] * 30 + [1.0] * 50)
    _, p_value = drift.z_test(ref, cur)
    _chi2, expected, _, _ = stats.chi2_contingency([[60, 40], [30, 50]], correction=False)
    assert p_value == pytest.approx(expected, rel=1e-9)


def test_wasserstein_is_normed_by_the_reference_std():
    ref, cur = normal(1, 2000, scale=2.0), normal(2, 500, loc=0.5, scale=2.0)
    assert drift.wasserstein_normed(ref, cur) == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref))


def test_jensenshannon_uses_sturges_bins_of_both_samples_and_the_natural_log():
    ref, cur = normal(1, 2000), normal(2, 500, loc=0.3)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    expected = distance.jensenshannon(np.histogram(ref, edges)[0] / len(ref), np.histogram(cur, edges)[0] / len(cur), base=np.e)
    assert drift.jensenshannon_distance(ref, cur, "num") == pytest.approx(expected)


def split(counts: dict) -> np.ndarray:
    return np.array([value for value, count in counts.items() for _ in range(count)], dtype=object)


EVEN_RANKS = (np.arange(5000) + 0.5) / 5000
# Reference values computed once with Evidently 0.7.23 (scipy 1.17.1):
# evidently.legacy.calculations.stattests.jensenshannon_stat_test.func(ref, cur, column_type, 0.1),
# and for the last case Report([DataDriftPreset()]) on the three columns together.
EVIDENTLY_JENSENSHANNON = [
    pytest.param(
        split({"a": 2500, "b": 2500}), split({"a": 3150, "b": 1850}), "cat", 0.09285357687949544, False, id="50/50-to-63/37-n5000"
    ),
    pytest.param(
        split({"a": 1000, "b": 600, "c": 400}),
        split({"a": 400, "b": 300, "c": 300}),
        "cat",
        0.08841606285541162,
        False,
        id="three-categories",
    ),
    pytest.param(
        np.arange(2000) % 5 * 1.0,
        np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], [300, 250, 200, 150, 100]),
        "num",
        0.12927656165925797,
        True,
        id="numeric-five-values",
    ),
    pytest.param(
        stats.norm.ppf((np.arange(3000) + 0.5) / 3000),
        stats.norm.ppf((np.arange(800) + 0.5) / 800) * 1.1 + 0.3,
        "num",
        0.10860495215688992,
        True,
        id="numeric-sturges-bins",
    ),
]


@pytest.mark.parametrize("reference, current, kind, distance_value, drifted", EVIDENTLY_JENSENSHANNON)
def test_jensenshannon_matches_evidently(reference, current, kind, distance_value, drifted):
    value = drift.jensenshannon_distance(drift.clean(reference, kind), drift.clean(current, kind), kind)
    assert value == pytest.approx(distance_value, rel=1e-12)
    assert (value >= drift.DISTANCE_THRESHOLD) is drifted


@pytest.mark.parametrize("reference, current, kind, distance_value, drifted", EVIDENTLY_JENSENSHANNON[:3])
def test_a_large_reference_with_few_values_gets_evidentlys_jensenshannon_verdict(
    reference, current, kind, distance_value, drifted
):
    result = drift.compare_feature("f", kind, reference, current)
    assert (result.test, result.statistic, result.drifted) == ("jensenshannon", pytest.approx(distance_value, rel=1e-12), drifted)


def test_a_three_feature_dataset_verdict_matches_evidently():
    """Evidently: amount drifts (Wasserstein 0.3000), plan (JS 0.0929) and region (JS 0.0884) do not; 1 of 3, no drift."""
    features = [
        drift.compare_feature("plan", "cat", split({"a": 2500, "b": 2500}), split({"a": 3150, "b": 1850})),
        drift.compare_feature(
            "region", "cat", split({"n": 2500, "s": 1500, "w": 1000}), split({"n": 2000, "s": 1500, "w": 1500})
        ),
        drift.compare_feature("amount", "num", stats.norm.ppf(EVEN_RANKS), stats.norm.ppf(EVEN_RANKS) + 0.3),
    ]
    assert [(f.test, f.drifted) for f in features] == [("jensenshannon", False), ("jensenshannon", False), ("wasserstein", True)]
    assert [f.statistic for f in features] == pytest.approx(
        [0.09285357687949544, 0.08841606285541162, 0.3000394409905721], rel=1e-9
    )
    assert drift.dataset_verdict(features, share_threshold=0.5) == (3, 1, pytest.approx(1 / 3), False)


def test_psi_uses_ten_reference_quantile_bins():
    ref, cur = normal(1, 5000), normal(2, 3000, loc=0.25)
    value, histogram = drift.psi(ref, cur, "num")
    inner = np.quantile(ref, np.linspace(0, 1, 11))[1:-1]
    ref_share = np.histogram(ref, [-np.inf, *inner, np.inf])[0] / len(ref)
    cur_share = np.histogram(cur, [-np.inf, *inner, np.inf])[0] / len(cur)
    assert ref_share == pytest.approx([0.1] * 10, abs=1e-3)
    assert value == pytest.approx(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)), rel=1e-6)
    assert histogram["reference"] == pytest.approx(ref_share.tolist(), abs=1e-3)
    assert len(histogram["edges"]) == 11


@pytest.mark.parametrize(
    "value, band", [(0.05, "none"), (0.1, "moderate"), (0.2, "moderate"), (0.25, "significant"), (1.3, "significant")]
)
def test_psi_bands(value, band):
    assert drift.psi_band(value) == band


@pytest.mark.parametrize("reference_size", [500, 5000], ids=["small-reference", "large-reference"])
def test_a_shifted_numeric_feature_is_flagged_and_an_unshifted_one_is_not(reference_size):
    reference = normal(100, reference_size)
    same = drift.compare_feature("x", "num", reference, normal(13, 2000))
    shifted = drift.compare_feature("x", "num", reference, normal(12, 2000, loc=0.6))
    assert same.drifted is False
    assert shifted.drifted is True
    assert same.psi_band == "none"
    assert shifted.psi_band in ("moderate", "significant")


def test_the_p_value_tests_false_alarm_rate_is_their_level():
    """Unshifted samples still drift 5% of the time under a p < 0.05 test: the rate, not one seed."""
    alarms = sum(drift.compare_feature("x", "num", normal(seed, 500), normal(10_000 + seed, 500)).drifted for seed in range(300))
    assert 5 <= alarms <= 27  # 15 expected; a binomial(300, 0.05) stays in here 99.9% of the time


@pytest.mark.parametrize("reference_size", [500, 5000], ids=["small-reference", "large-reference"])
def test_a_shifted_categorical_feature_is_flagged_and_an_unshifted_one_is_not(reference_size):
    reference = categories(20, reference_size, [0.5, 0.3, 0.2])
    same = drift.compare_feature("c", "cat", reference, categories(21, 2000, [0.5, 0.3, 0.2]))
    shifted = drift.compare_feature("c", "cat", reference, categories(22, 2000, [0.2, 0.3, 0.5]))
    assert (same.drifted, shifted.drifted) == (False, True)


def test_missing_values_are_dropped_and_an_empty_side_is_not_a_test():
    result = drift.compare_feature("x", "num", [1.0, None, 2.0, float("nan")] * 10, [None, None])
    assert result.test is None and result.drifted is False
    assert result.reference_rows == 20


def test_dataset_verdict_uses_the_share_of_drifted_features():
    reference = normal(1, 600)
    features = [drift.compare_feature(f"x{i}", "num", reference, normal(2 + i, 600, loc=1.0 if i < 2 else 0.0)) for i in range(4)]
    assert drift.dataset_verdict(features, share_threshold=0.5) == (4, 2, 0.5, True)
    assert drift.dataset_verdict(features, share_threshold=0.75)[3] is False


# --- merging hourly quantile grids into a day ----------------------------------------------


GRID = tuple(i / 100 for i in range(101))


def test_one_part_merges_to_itself():
    values = normal(5, 300, loc=10)
    assert merge_quantiles([(300, quantiles_of(values, GRID))], GRID, [0.5, 0.95]) == pytest.approx(
        np.quantile(values, [0.5, 0.95]).tolist()
    )


def test_merged_quantiles_are_within_the_grid_rank_error():
    rng = np.random.default_rng(9)
    parts = [rng.lognormal(mu, 0.4, size=n) for mu, n in ((0, 5000), (1, 2000), (2, 300), (0.5, 10))]
    merged = merge_quantiles([(len(p), quantiles_of(p, GRID)) for p in parts], GRID, [0.1, 0.5, 0.9, 0.95])
    union = np.concatenate(parts)
    for target, value in zip([0.1, 0.5, 0.9, 0.95], merged, strict=True):
        assert abs(np.mean(union <= value) - target) <= 0.01


def test_many_parts_are_merged_at_sampled_points_within_the_grid_rank_error():
    rng = np.random.default_rng(4)
    parts = [rng.gamma(2.0, 1.0 + h % 7, size=2000) for h in range(30)]  # 30 x 101 grid values > MAX_POINTS
    targets = [0.5, 0.9, 0.95, 0.99]
    merged = merge_quantiles([(len(p), quantiles_of(p, GRID)) for p in parts], GRID, targets)
    union = np.concatenate(parts)
    for target, value in zip(targets, merged, strict=True):
        assert abs(np.mean(union <= value) - target) <= 0.01
