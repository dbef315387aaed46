"""A bounded per-process LRU of loaded models, with a memory budget.

Not every model lives in every worker: a version is loaded on first use (through the
registry's safe loader) and the least recently used ones are dropped when the count or the
estimated memory passes MODEL_CACHE_MAX_MODELS / MODEL_CACHE_MAX_MB. The estimate is the
artifact's size on disk, which for pickles and joblib files is close to the size in memory.
"""
from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import sklearn
from django.conf import settings

from inference.linear_fast_path import fast_predict_for
from platform_site.metrics import MODEL_LOAD_SECONDS, MODELS_LOADED


# scikit-learn's joblib wrapper replays the process's warning filters, one by one, around
# every task it runs (sklearn.utils.parallel._FuncWrapper), and a forest predicts one task per
# tree. A web process carries 15 filters (numpy, scipy, urllib3 and requests add them at
# import), and replaying them cost over a third of a one-row prediction of a 100-tree forest:
# 13-14.6 ms against 7.9-8.5 ms with one filter, measured in a web process. So a prediction
# runs with one filter, "default": a warning a model raises is still shown, once per place,
# as Python shows warnings by default. The swap is reference-counted under a lock, so
# concurrent predictions share it and the process's own filters always come back.
_PREDICT_FILTERS = (("default", None, Warning, None, 0),)
_filters_lock = threading.Lock()
_filters_depth = 0
_filters_saved: list | None = None


def _filters_changed() -> None:
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()


@contextmanager
def one_warning_filter():
    global _filters_depth, _filters_saved
    with _filters_lock:
        if _filters_depth == 0:
            _filters_saved = warnings.filters
            warnings.filters = list(_PREDICT_FILTERS)
            _filters_changed()
        _filters_depth += 1
    try:
        yield
    finally:
        with _filters_lock:
            _filters_depth -= 1
            if _filters_depth == 0:
                warnings.filters = _filters_saved
                _filters_saved = None
                _filters_changed()


@dataclass
class LoadedModel:
    version_id: int
    estimator: Any
    has_proba: bool
    size_bytes: int
    load_seconds: float
    # The platform's own predict for a plain linear model (inference.linear_fast_path), or None.
    fast_predict: Callable[[np.ndarray], np.ndarray] | None = None
    width: int = 0

    def predict(self, x, *, want_proba: bool, finite: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, when asked and available, probabilities.

        `finite` says validation has refused NaN and infinity (the signature allows no missing
        value): scikit-learn then skips its own scan (assume_finite), and a plain linear model
        is predicted by the platform's fast path. predict() is always called: deriving labels
        from argmax(predict_proba) is wrong for threshold-tuned classifiers, so the cost of a
        second call is paid for correctness.
        """
        fast = finite and self.fast_predict is not None and type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 2 and x.shape[1] == self.width
        proba = want_proba and self.has_proba
        if fast:
            predictions = self.fast_predict(x)
            if not proba:  # no scikit-learn call at all: no filter swap, no config context
                return predictions, None
        with one_warning_filter(), sklearn.config_context(assume_finite=finite):
            if not fast:
                predictions = self.estimator.predict(x)
            return predictions, self.estimator.predict_proba(x) if proba else None


class ModelCache:
    """Loaded models by version id, least recently used dropped first.

    Every read and write of the entries happens under one lock (a lookup reorders the LRU, so
    even a hit writes); loading happens outside it, behind a per-version gate, so one slow load
    never blocks lookups of other versions. Hand-written over an OrderedDict rather than
    cachetools' LRUCache because the bound is two limits at once (count and estimated bytes)
    and the newest model always stays, even when it alone passes the byte budget.
    """

    def __init__(self) -> None:
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, version_id: int, *, size_bytes: int, load: Callable[[], Any]) -> LoadedModel:
        model = self._lookup(version_id)
        if model is not None:
            return model
        with self._lock:
            gate = self._loading.setdefault(version_id, threading.Lock())
        try:
            with gate:  # one load per version per process, even under threads
                model = self._lookup(version_id)
                if model is not None:
                    return model
                model = self._load(version_id, size_bytes=size_bytes, load=load)
                with self._lock:
                    self._models[version_id] = model
                    self._evict()
                    count = len(self._models)
                MODELS_LOADED.set(count)
                return model
        finally:
            # Whether the load worked or raised: a thread still waiting on this gate finds the
            # model (or loads again itself), and the next caller starts from a clean slate.
            with self._lock:
                if self._loading.get(version_id) is gate:
                    del self._loading[version_id]

    def _lookup(self, version_id: int) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(version_id)
            if model is not None:
                self._models.move_to_end(version_id)
            return model

    @staticmethod
    def _load(version_id: int, *, size_bytes: int, load: Callable[[], Any]) -> LoadedModel:
        started = time.perf_counter()
        estimator = load()
        seconds = time.perf_counter() - started
        MODEL_LOAD_SECONDS.observe(seconds)
        return LoadedModel(
            version_id=version_id,
            estimator=estimator,
            has_proba=_has_predict_proba(estimator),
            size_bytes=size_bytes,
            load_seconds=seconds,
            fast_predict=fast_predict_for(estimator),
            width=int(getattr(estimator, "n_features_in_", 0) or 0),
        )

    def _evict(self) -> None:
        """Drop the least recently used entries past the bounds; the caller holds the lock."""
        budget = settings.MODEL_CACHE_MAX_MB * 1024 * 1024
        while len(self._models) > 1 and (
            len(self._models) > settings.MODEL_CACHE_MAX_MODELS or sum(m.size_bytes for m in self._models.values()) > budget
        ):
            self._models.popitem(last=False)

    def discard(self, version_id: int) -> None:
        with self._lock:
            self._models.pop(version_id, None)
            count = len(self._models)
        MODELS_LOADED.set(count)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        MODELS_LOADED.set(0)

    def loading_versions(self) -> set[int]:
        """The versions a thread is loading right now."""
        with self._lock:
            return set(self._loading)

    def __contains__(self, version_id: int) -> bool:
        with self._lock:
            return version_id in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)


def _has_predict_proba(estimator: Any) -> bool:
    # SVC(probability=False) and pipelines ending in a regressor hide predict_proba behind
    # an AttributeError raised on access, which hasattr() turns into False.
    return hasattr(estimator, "predict_proba")


models = ModelCache()
