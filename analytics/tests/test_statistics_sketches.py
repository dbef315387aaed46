"""Latency sketches: exact merges, and percentiles within the stated accuracy of numpy's."""

import math

import numpy as np
import pytest
from ddsketch import LogarithmicMapping
from django.db import connection

from analytics.statistics import sketches
from analytics.statistics.quantiles import merge_quantiles, quantiles_of

ALPHA = sketches.RELATIVE_ACCURACY
TARGETS = [0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]


def day_of_hours(seed: int, low: int, high: int, hours: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.lognormal(3.0 + 0.4 * math.sin(h / 4), 0.35, size=rng.integers(low, high + 1)) for h in range(hours)]


def within_accuracy(estimates, exact) -> bool:
    return all(abs(e - x) <= ALPHA * x * (1 + 1e-9) for e, x in zip(estimates, exact, strict=True))


@pytest.mark.parametrize(
    "low, high", [pytest.param(10, 60, id="quiet-10-60-per-hour"), pytest.param(2000, 5000, id="busy-2000-5000-per-hour")]
)
@pytest.mark.parametrize("seed", range(5))
def test_a_days_percentiles_from_its_hours_sketches_are_within_accuracy_of_numpys(seed, low, high):
    hours = day_of_hours(seed, low, high)
    day = sketches.merge_sketches(sketches.sketch_of(h.tolist()) for h in hours)
    union = np.concatenate(hours)
    assert within_accuracy(sketches.quantiles(day, TARGETS), np.quantile(union, TARGETS))


def test_the_grid_merge_it_replaces_was_low_on_a_quiet_day():
    """The bound the sketch keeps, which a day merged from hourly quantile grids broke."""
    grid = tuple(i / 100 for i in range(100)) + tuple(0.99 + i / 1000 for i in range(1, 10)) + (1.0,)
    hours = day_of_hours(2, 10, 60)
    union = np.concatenate(hours)
    from_grids = merge_quantiles([(len(h), quantiles_of(h, grid)) for h in hours], grid, [0.99])[0]
    from_sketches = sketches.quantiles(sketches.merge_sketches(sketches.sketch_of(h.tolist()) for h in hours), [0.99])[0]
    exact = np.quantile(union, 0.99)
    assert from_grids < exact * (1 - ALPHA)
    assert abs(from_sketches - exact) <= ALPHA * exact


def test_merging_sketches_gives_the_sketch_of_all_the_values():
    hours = day_of_hours(7, 10, 300)
    merged = sketches.merge_sketches(sketches.sketch_of(h.tolist()) for h in hours)
    assert merged == sketches.sketch_of(np.concatenate(hours).tolist())


def test_one_value_and_zeros():
    assert sketches.quantiles(sketches.sketch_of([12.5]), [0.0, 0.5, 1.0]) == pytest.approx([12.5] * 3, rel=ALPHA)
    sketch = sketches.sketch_of([0.0, 0.0, 0.0, 4.0])
    assert sketch["zero_count"] == 3
    assert sketches.quantiles(sketch, [0.5, 1.0]) == pytest.approx([0.0, 4.0], rel=ALPHA)


def test_an_empty_sketch_has_no_percentiles():
    assert sketches.quantiles(sketches.merge_sketches([{}, {}]), [0.5]) == [None]


def test_a_quantile_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="quantile 1.5 is outside"):
        sketches.quantiles(sketches.sketch_of([1.0]), [1.5])


def test_the_keys_are_the_librarys_at_the_stated_accuracy():
    mapping = LogarithmicMapping(ALPHA)
    values = np.random.default_rng(1).lognormal(2, 2, size=2000)
    assert sketches.sketch_of(values.tolist())["bins"] == {
        str(k): n for k, n in zip(*np.unique([mapping.key(v) for v in values], return_counts=True), strict=True)
    }
    assert all(abs(mapping.value(mapping.key(v)) - v) <= ALPHA * v * (1 + 1e-12) for v in values)


@pytest.mark.django_db
def test_postgresql_bins_values_as_the_library_does_even_at_bin_edges():
    mapping = LogarithmicMapping(ALPHA)
    edges = [2 ** (k / sketches.MULTIPLIER) for k in range(-400, 1100)]  # 0.0004 ms to 5e9 ms
    values = [v for edge in edges for v in (np.nextafter(edge, 0), edge, np.nextafter(edge, math.inf))]
    values += np.random.default_rng(3).lognormal(1, 3, size=3000).tolist()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sketches.bin_key_sql('x')} FROM unnest(%(values)s::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i",
            {"values": [float(v) for v in values], **sketches.sql_params()},
        )
        from_sql = [row[0] for row in cursor.fetchall()]
    assert from_sql == [mapping.key(float(v)) for v in values]
