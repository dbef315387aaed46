"""Sticky assignment by a stable hash of (experiment, unit), in proportion to the weights."""

from collections import Counter

import pytest

from inference.routing import ExperimentRoute, Variant

UNITS = [f"user-{i}" for i in range(100_000)]


def route(weights, experiment_id=42):
    return ExperimentRoute(
        id=experiment_id,
        name="test",
        variants=tuple(Variant(name=f"v{i + 1}", weight=w, target=None) for i, w in enumerate(weights)),
    )


@pytest.mark.parametrize("weights", [(50, 50), (90, 10), (20, 30, 50)], ids=["50-50", "90-10", "20-30-50"])
def test_assignment_matches_the_weights_on_100000_units(weights):
    experiment = route(weights)
    counts = Counter(experiment.choose(unit).name for unit in UNITS)
    for i, weight in enumerate(weights):
        assert counts[f"v{i + 1}"] / len(UNITS) == pytest.approx(weight / 100, abs=0.005)


def test_assignment_is_sticky_and_differs_between_experiments():
    first, again, other = route((50, 50)), route((50, 50)), route((50, 50), experiment_id=43)
    sample = UNITS[:5000]
    assert [first.choose(u).name for u in sample] == [again.choose(u).name for u in sample]
    moved = sum(first.choose(u).name != other.choose(u).name for u in sample)
    assert 2000 < moved < 3000  # another experiment reshuffles units independently


def test_requests_without_a_unit_are_spread_by_weight():
    experiment = route((80, 20))
    counts = Counter(experiment.choose(None).name for _ in range(20_000))
    assert counts["v1"] / 20_000 == pytest.approx(0.8, abs=0.02)
