"""Per-feature drift tests, chosen the way Evidently's defaults choose them, and PSI.

Test choice, by the reference size and the number of distinct values in both samples:

| reference rows | numeric, > 5 values | numeric, <= 5 values | categorical |
| --- | --- | --- | --- |
| <= 1000 | Kolmogorov–Smirnov (p < 0.05) | chi-squared (z-test if <= 2 values) | chi-squared (z-test if <= 2 values) |
| > 1000 | Wasserstein distance / reference std (>= 0.1) | Jensen–Shannon distance (>= 0.1) | Jensen–Shannon distance (>= 0.1) |

The Jensen–Shannon distance uses the natural logarithm, as Evidently does (scipy's default
base): in base 2 every distance is 1.2011 times larger against the same 0.1 threshold.

PSI is always reported beside the test, over 10 reference-quantile bins (categories for
categorical features), with the usual bands: < 0.1 none, 0.1–0.25 moderate, >= 0.25
significant. Written here on scipy.stats rather than depending on Evidently itself: the
five tests are a few lines each, and Evidently would pull in a large dependency tree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

# scipy is imported inside the functions that use it: imported here it cost every Django process
# (migrate, beat, each worker) a second or more of start-up, through the admin's imports.

NUMERIC_TYPES = frozenset({"double", "float", "long", "integer", "number"})
SMALL_REFERENCE_ROWS = 1000
P_VALUE_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
PSI_BINS = 10
PSI_EPSILON = 0.0001
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25
MAX_CATEGORIES_SHOWN = 20


@dataclass
class FeatureDrift:
    name: str
    type: str  # "num" or "cat"
    test: str | None
    statistic: float | None
    p_value: float | None
    threshold: float | None
    drifted: bool
    psi: float | None
    psi_band: str | None
    reference_rows: int
    current_rows: int
    histogram: dict = field(default_factory=dict)
    note: str = ""
    outputs: list = field(default_factory=list)  # a multi-output model's prediction: each output's result

    def as_dict(self) -> dict:
        return {key: _finite_or_none(value) for key, value in asdict(self).items() if key != "outputs" or value}


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def feature_kind(signature_type: str) -> str:
    return "num" if signature_type in NUMERIC_TYPES else "cat"


def clean(values: Sequence, kind: str) -> np.ndarray:
    """Drop missing values; numbers as float64, categories as strings."""
    if kind == "num":
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):  # a stray string or list: take what parses
            array = np.asarray([_as_float(v) for v in values], dtype=np.float64)
        return array[np.isfinite(array)]
    return np.asarray(
        [_category(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=object
    )


def _as_float(value) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _category(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def distinct_values(reference: np.ndarray, current: np.ndarray, *, at_most: int = 5) -> int:
    """Distinct values in both samples, exact up to `at_most`; above it, any larger number.

    A look at the first thousand values of each usually settles it without sorting
    everything (continuous features have more than five values in any thousand).
    """
    head = np.unique(np.concatenate([reference[:1000], current[:1000]]))
    if len(head) > at_most:
        return len(head)
    return len(np.unique(np.concatenate([reference, current])))


def choose_test(reference: np.ndarray, current: np.ndarray, kind: str) -> str:
    n_values = distinct_values(reference, current)
    if len(reference) <= SMALL_REFERENCE_ROWS:
        if kind == "num" and n_values > 5:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if kind == "num" and n_values > 5:
        return "wasserstein"
    return "jensenshannon"


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    result = stats.ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def chisquare_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Current counts against the reference shares scaled to the current size (as Evidently)."""
    from scipy import stats

    _keys, ref_counts, cur_counts = _counts(reference, current)
    expected = ref_counts * (len(current) / len(reference))
    if np.any((expected == 0) & (cur_counts > 0)):
        return math.inf, 0.0  # a value the reference never had
    keep = expected > 0
    result = stats.chisquare(cur_counts[keep], f_exp=expected[keep])
    return float(result.statistic), float(result.pvalue)


def z_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-proportion z-test on the share of the first (sorted) value, pooled variance."""
    from scipy import stats

    keys = sorted(set(reference.tolist()) | set(current.tolist()))
    if len(keys) <= 1:
        return 0.0, 1.0
    first = keys[0]
    n1, n2 = len(reference), len(current)
    p1, p2 = float(np.mean(reference == first)), float(np.mean(current == first))
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance == 0:
        return 0.0, 1.0
    z = (p1 - p2) / math.sqrt(variance)
    return float(z), float(2 * stats.norm.sf(abs(z)))


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    from scipy import stats

    return float(stats.wasserstein_distance(reference, current) / max(float(np.std(reference)), 0.001))


def jensenshannon_distance(reference: np.ndarray, current: np.ndarray, kind: str) -> float:
    """Over Sturges bins of both samples (numeric, > 20 reference values) or the categories; natural log."""
    from scipy.spatial import distance

    if kind == "num" and len(np.unique(reference)) > 20:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        ref_share = np.histogram(reference, edges)[0] / len(reference)
        cur_share = np.histogram(current, edges)[0] / len(current)
    else:
        _, ref_counts, cur_counts = _counts(reference, current)
        ref_share, cur_share = ref_counts / len(reference), cur_counts / len(current)
    return float(distance.jensenshannon(ref_share, cur_share))


def _counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys = np.unique(np.concatenate([reference, current]))
    ref_counts = _count_in(reference, keys)
    cur_counts = _count_in(current, keys)
    return keys, ref_counts, cur_counts


def _count_in(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    found, counts = np.unique(values, return_counts=True)
    result = np.zeros(len(keys), dtype=np.float64)
    result[np.searchsorted(keys, found)] = counts
    return result


def psi_bins(reference: np.ndarray, *, bins: int = PSI_BINS) -> np.ndarray:
    """Inner edges of `bins` reference-quantile bins (ties merge bins)."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])


def psi(reference: np.ndarray, current: np.ndarray, kind: str, *, bins: int = PSI_BINS) -> tuple[float, dict]:
    """PSI = sum((cur - ref) * ln(cur / ref)) over the bins, empty bins set to 0.0001; and the histogram."""
    if kind == "num":
        inner = psi_bins(reference, bins=bins)
        ref_share = np.bincount(np.searchsorted(inner, reference, side="left"), minlength=len(inner) + 1) / len(reference)
        cur_share = np.bincount(np.searchsorted(inner, current, side="left"), minlength=len(inner) + 1) / len(current)
        low = float(min(reference.min(), current.min()))
        high = float(max(reference.max(), current.max()))
        histogram = {"edges": [low, *inner.tolist(), high], "reference": ref_share.tolist(), "current": cur_share.tolist()}
    else:
        keys, ref_counts, cur_counts = _counts(reference, current)
        ref_share, cur_share = ref_counts / len(reference), cur_counts / len(current)
        histogram = _category_histogram(keys, ref_share, cur_share)
    ref_filled = np.where(ref_share == 0, PSI_EPSILON, ref_share)
    cur_filled = np.where(cur_share == 0, PSI_EPSILON, cur_share)
    return float(np.sum((cur_filled - ref_filled) * np.log(cur_filled / ref_filled))), histogram


def _category_histogram(keys: np.ndarray, ref_share: np.ndarray, cur_share: np.ndarray) -> dict:
    order = np.argsort(-(ref_share + cur_share), kind="stable")
    shown = order[:MAX_CATEGORIES_SHOWN]
    histogram = {
        "categories": [str(keys[i]) for i in shown],
        "reference": ref_share[shown].tolist(),
        "current": cur_share[shown].tolist(),
    }
    if len(order) > MAX_CATEGORIES_SHOWN:
        rest = order[MAX_CATEGORIES_SHOWN:]
        histogram["categories"].append("(other)")
        histogram["reference"].append(float(ref_share[rest].sum()))
        histogram["current"].append(float(cur_share[rest].sum()))
    return histogram


def psi_band(value: float) -> str:
    if value < PSI_MODERATE:
        return "none"
    return "moderate" if value < PSI_SIGNIFICANT else "significant"


def compare_feature(name: str, kind: str, reference_values: Sequence, current_values: Sequence) -> FeatureDrift:
    reference = clean(reference_values, kind)
    current = clean(current_values, kind)
    if kind == "num":
        # Sorted once here; scipy's tests and the quantile bins are much faster on sorted input.
        reference, current = np.sort(reference), np.sort(current)
    if len(reference) == 0 or len(current) == 0:
        return FeatureDrift(
            name=name,
            type=kind,
            test=None,
            statistic=None,
            p_value=None,
            threshold=None,
            drifted=False,
            psi=None,
            psi_band=None,
            reference_rows=len(reference),
            current_rows=len(current),
            note="no values to compare",
        )
    test = choose_test(reference, current, kind)
    p_value = None
    if test == "ks":
        statistic, p_value = ks_test(reference, current)
    elif test == "chisquare":
        statistic, p_value = chisquare_test(reference, current)
    elif test == "z":
        statistic, p_value = z_test(reference, current)
    elif test == "wasserstein":
        statistic = wasserstein_normed(reference, current)
    else:
        statistic = jensenshannon_distance(reference, current, kind)
    if p_value is not None:
        threshold, drifted = P_VALUE_THRESHOLD, p_value < P_VALUE_THRESHOLD
    else:
        threshold, drifted = DISTANCE_THRESHOLD, statistic >= DISTANCE_THRESHOLD
    psi_value, histogram = psi(reference, current, kind)
    return FeatureDrift(
        name=name,
        type=kind,
        test=test,
        statistic=statistic,
        p_value=p_value,
        threshold=threshold,
        drifted=bool(drifted),
        psi=psi_value,
        psi_band=psi_band(psi_value),
        reference_rows=len(reference),
        current_rows=len(current),
        histogram=histogram,
    )


def dataset_verdict(features: Sequence[FeatureDrift], *, share_threshold: float) -> tuple[int, int, float, bool]:
    """(tested features, drifted features, share drifted, drift?) over the features that had data."""
    tested = [f for f in features if f.test is not None]
    drifted = sum(1 for f in tested if f.drifted)
    share = drifted / len(tested) if tested else 0.0
    return len(tested), drifted, share, bool(tested) and share >= share_threshold
