"""Where a version's predictions are computed: in this process, or in its organization's runner.

The web and the worker never unpickle a tenant's file. A model the upload sandbox reduced to
plain numbers (a linear model's coefficients, intercepts and numeric classes, checked there to
reproduce scikit-learn's answers bit for bit) is data, not code: it is predicted here by the
platform's own arithmetic (registry.loaders.serving.linear_predictor_from_spec), which saves
the round trip to a runner. Everything else, and any request that path does not cover
(missing values allowed, a DataFrame, probabilities the spec cannot reproduce), goes to the
organization's runner (inference.runners.client).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import orjson

from inference.runners import client as runners


class LinearPredictor:
    """A plain linear model's predict (and predict_proba where verified), from its spec."""

    def __init__(self, spec: dict) -> None:
        from registry.loaders.serving import linear_predictor_from_spec

        self.spec = spec
        self.width = int(spec["n_features"])
        self.has_proba = spec.get("proba") is not None
        self._predict = linear_predictor_from_spec(spec)

    def __call__(self, x: np.ndarray, *, want_proba: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The answer, or None when this path cannot give what was asked."""
        if want_proba and not self.has_proba:
            return None
        return self._predict(x, want_proba=want_proba)


def linear_predictor(spec: dict | None) -> LinearPredictor | None:
    if not spec:
        return None
    return _linear_predictor(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS))


@functools.lru_cache(maxsize=4096)
def _linear_predictor(spec_json: bytes) -> LinearPredictor:
    return LinearPredictor(orjson.loads(spec_json))


def serves_here(target) -> bool:
    """Whether this process computes the version's answers to well-formed numeric rows: a linear
    model reduced to numbers, fed a float array without missing values, and able to give the
    probabilities the version has. `computes_here` is the same question for one request."""
    linear = target.linear
    return (
        linear is not None
        and target.spec.forbids_missing
        and not target.spec.wants_frame
        and (linear.has_proba or not target.has_proba)
    )


def computes_here(target, x: Any, *, want_proba: bool, finite: bool) -> bool:
    """Whether `predict` computes this request's answer in this process rather than in a runner."""
    linear = target.linear
    return (
        linear is not None
        and finite
        and type(x) is np.ndarray
        and x.dtype == np.float64
        and x.ndim == 2
        and x.shape[1] == linear.width
        and not (want_proba and target.has_proba and not linear.has_proba)
    )


def predict(*, target, x: Any, want_proba: bool, finite: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and probabilities when asked and the model has them) of `target` on `x`."""
    if computes_here(target, x, want_proba=want_proba, finite=finite):
        return target.linear(x, want_proba=want_proba and target.has_proba)
    return runners.predict(
        org_id=target.org_id,
        version_id=target.id,
        serving_sha256=target.serving_sha256,
        compiled_sha256=target.compiled_sha256,
        x=x,
        want_proba=want_proba and target.has_proba,
        finite=finite,
    )


def predict_explained(*, target, x: Any, want_proba: bool, finite: bool) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """As `predict`, with each row's feature contributions (inference.explanations): computed
    here for a linear model this process predicts, else in the runner beside the model."""
    from django.conf import settings

    from inference.explanations import linear_explanation, reference_for

    reference = reference_for(target)
    if computes_here(target, x, want_proba=want_proba, finite=finite):
        predictions, probabilities = target.linear(x, want_proba=want_proba and target.has_proba)
        return (
            predictions,
            probabilities,
            linear_explanation(spec=target.linear.spec, x=x, predictions=predictions, mean=reference.mean),
        )
    return runners.predict_explained(
        org_id=target.org_id,
        version_id=target.id,
        serving_sha256=target.serving_sha256,
        compiled_sha256=target.compiled_sha256,
        x=x,
        want_proba=want_proba and target.has_proba,
        finite=finite,
        mean=reference.mean,
        background=reference.background,
        sampling_max_rows=settings.EXPLAIN_SAMPLING_MAX_ROWS,
    )


def warm(*, target) -> None:
    """Have the runner hold `target` before traffic arrives (nothing to do for the web's own path)."""
    if target.linear is None:
        runners.warm(org_id=target.org_id, version_id=target.id, compiled_sha256=target.compiled_sha256)
