"""Merge quantile grids: a day's distribution of a regressor's predictions from its hours.

Each hourly rollup keeps a regressor's output deciles. Between two grid points an hour's
distribution is taken as linear, so the merged CDF is a count-weighted mix of
piecewise-linear CDFs; inverting it gives the day's quantile with a rank error no larger
than the grid step. One part alone is returned exactly. (Latency percentiles, which must
hold in the tail, merge exactly through sketches instead: analytics.statistics.sketches.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_POINTS = 512
PARTS_PER_CHUNK = 256


def quantiles_of(values: np.ndarray, grid: Sequence[float]) -> list[float]:
    """The values at each grid point, interpolated as PostgreSQL's percentile_cont does."""
    return np.quantile(np.asarray(values, dtype=np.float64), np.asarray(grid), method="linear").tolist()


def merge_quantiles(parts: Sequence[tuple[int, Sequence[float]]], grid: Sequence[float], targets: Sequence[float]) -> list[float]:
    """Quantiles at `targets` of the union of parts, each part `(count, values at grid)`."""
    parts = [(n, values) for n, values in parts if n > 0 and values]
    if not parts:
        return [float("nan")] * len(targets)
    grid_array = np.asarray(grid, dtype=np.float64)
    if len(parts) == 1:
        return np.interp(targets, grid_array, np.asarray(parts[0][1], dtype=np.float64)).tolist()
    counts = np.asarray([n for n, _ in parts], dtype=np.float64)
    values = np.maximum.accumulate(np.asarray([v for _, v in parts], dtype=np.float64), axis=1)
    points = np.unique(values)
    if len(points) > MAX_POINTS:
        # Many parts (a month of hours): evaluate the mix at evenly spaced ranks of the
        # union instead of at every grid value; the cost stays parts x MAX_POINTS.
        points = points[np.linspace(0, len(points) - 1, MAX_POINTS).round().astype(np.intp)]
    mix = np.zeros_like(points)
    for start in range(0, len(values), PARTS_PER_CHUNK):
        chunk = slice(start, start + PARTS_PER_CHUNK)
        mix += counts[chunk] @ _cdfs_at(points, values[chunk], grid_array)
    mix = np.maximum.accumulate(mix / counts.sum())
    return np.interp(targets, mix, points).tolist()


def _cdfs_at(points: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each part's CDF at `points` (parts x points): linear between its grid values, 0 below, 1 above.

    Where values repeat (many equal latencies), the CDF jumps at that value to the highest
    grid point that holds it. All parts are searched at once: each row is shifted past the
    previous one, so one sorted array holds them all.
    """
    n_parts, width = values.shape
    low = min(values[:, 0].min(), points[0])
    gap = (max(values[:, -1].max(), points[-1]) - low) + 1.0
    shift = (np.arange(n_parts, dtype=np.float64) * gap)[:, None]
    flat = (values - low + shift).ravel()
    queries = points[None, :] - low + shift
    upper = (
        np.searchsorted(flat, queries.ravel(), side="right").reshape(n_parts, len(points)) - (np.arange(n_parts) * width)[:, None]
    )
    i = np.clip(upper - 1, 0, width - 2)  # values[i] <= point < values[i + 1] where inside
    left = np.take_along_axis(values, i, axis=1)
    right = np.take_along_axis(values, i + 1, axis=1)
    fraction = np.clip((points[None, :] - left) / np.where(right > left, right - left, 1.0), 0.0, 1.0)
    cdf = grid[i] + (grid[i + 1] - grid[i]) * fraction
    return np.where(upper <= 0, 0.0, np.where(upper >= width, 1.0, cdf))
