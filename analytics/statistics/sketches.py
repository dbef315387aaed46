"""Latency percentiles that merge exactly: a DDSketch (Datadog's `ddsketch`) per rollup row.

A sketch counts values in logarithmic bins: bin k holds (gamma^(k-1), gamma^k] with gamma =
(1 + a) / (1 - a), and its value stands for every value in it within a relative error a
(RELATIVE_ACCURACY, 1 %). A row keeps `{"bins": {"k": count}, "zero_count": n}`; merging rows
adds their counts bin by bin, so a day's sketch is the very sketch of the day's raw latencies:
merging hours adds no error, however quiet or many they are.

A percentile is read as numpy's default (linear) reads it: at rank q(n - 1), between the
order statistics at the floor and the ceiling of that rank, each replaced by its bin's value.
Both are within a of the true order statistics, so the percentile is within a (relative) of
`numpy.quantile` on the raw values, for any count.

PostgreSQL bins an hour's latencies itself (`bin_key_sql`), with the same arithmetic as
`LogarithmicMapping.key`: ln(x) / ln(2) times MULTIPLIER, rounded up; a test holds the two
to the same keys.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from ddsketch import LogarithmicMapping
from ddsketch.store import DenseStore

RELATIVE_ACCURACY = 0.01
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
# LogarithmicMapping's own factor (its key is ceil(log2(x) * factor)), written out so that SQL
# can compute the same keys: 1 / log1p(2a / (1 - a)) * ln 2.
MULTIPLIER = 1 / math.log1p(2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY)) * math.log(2)
# At or below this a value is counted as zero (the mapping's smallest value); latencies are
# never negative, and one that were would count as zero too.
MIN_POSITIVE = MAPPING.min_possible


def bin_key_sql(column: str) -> str:
    """The SQL expression of a float8 column's bin key (for values above MIN_POSITIVE)."""
    return f"ceil((ln({column}) / ln(2::float8)) * %(sketch_multiplier)s::float8)::int"


def sql_params() -> dict:
    return {"sketch_multiplier": MULTIPLIER, "sketch_min_positive": MIN_POSITIVE}


def sketch_of(values: Iterable[float]) -> dict:
    """The sketch of raw values, as a rollup row stores it."""
    bins: dict[str, int] = defaultdict(int)
    zero_count = 0
    for value in values:
        if value > MIN_POSITIVE:
            bins[str(MAPPING.key(value))] += 1
        else:
            zero_count += 1
    return {"bins": dict(bins), "zero_count": zero_count}


def merge_sketches(sketches: Iterable[dict]) -> dict:
    """One sketch of all the values the given sketches hold (exact: counts add per bin)."""
    bins: dict[str, float] = defaultdict(int)
    zero_count = 0
    for sketch in sketches:
        if not sketch:
            continue
        zero_count += sketch["zero_count"]
        for key, count in sketch["bins"].items():
            bins[key] += count
    return {"bins": dict(bins), "zero_count": zero_count}


def sketch_count(sketch: dict) -> float:
    return sum(sketch["bins"].values()) + sketch["zero_count"] if sketch else 0


def quantiles(sketch: dict, targets: Sequence[float]) -> list[float | None]:
    """Values at `targets` (0..1), within RELATIVE_ACCURACY of numpy's linear quantiles; None if empty."""
    count = sketch_count(sketch)
    if count == 0:
        return [None] * len(targets)
    store = DenseStore()
    for key, n in sketch["bins"].items():
        store.add(int(key), n)
    zero_count = sketch["zero_count"]

    def at_rank(rank: int) -> float:
        return 0.0 if rank < zero_count else MAPPING.value(store.key_at_rank(rank - zero_count))

    values = []
    for target in targets:
        if not 0 <= target <= 1:
            raise ValueError(f"quantile {target!r} is outside [0, 1]")
        rank = target * (count - 1)
        low = math.floor(rank)
        high = min(low + 1, math.ceil(count) - 1)
        fraction = rank - low
        low_value = at_rank(low)
        values.append(low_value if fraction == 0 else low_value + fraction * (at_rank(high) - low_value))
    return values
