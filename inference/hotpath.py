"""The inference hot path: one straight line of named steps, shared by every protocol.

authenticate -> resolve (production or experiment variant) -> limit -> validate -> cache
-> predict -> record. A warm request makes no database query: keys, routes and models come
from in-process caches; limits, the prediction cache and the record stream are Redis calls
with timeouts and fallbacks, one round trip waited for: the rate limit script also reads
the prediction cache (the body is validated first, in process, to know the cache key; its
verdict still comes after the limit's); the record and the answer to cache are queued on
the same connection and leave with the next round trip (inference.records). A plain linear
model is predicted by the platform's own arithmetic, anything else by its organization's
runner (inference.predictors). Each step
feeds Server-Timing and the Prometheus metrics. A live mirror costs the request one draw
against the fraction its cached route holds: a sampled request's record carries the mirror's
id, and the analytics worker predicts it with the candidate later (docs/mirroring.md).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.http import HttpRequest

from accounts.authentication import ApiKeyError, authenticate_api_key, cached_principal, credential_from_headers
from inference import explanations, limits, prediction_cache, predictors, records, routing
from platform_site.errors import ModelhostError, NotFound, PermissionDenied, Unauthenticated
from platform_site.metrics import (
    PREDICTION_CACHE_HITS,
    PREDICTION_ERRORS,
    PREDICTION_LATENCY,
    PREDICTION_REQUESTS,
    PREDICTION_ROWS,
)
from platform_site.on_loop import LeaveTheLoop, on_event_loop

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]  # 10 bits -> 2 characters
# The environ key under which a run on the event loop hands its limit count to the request
# thread's run (platform_site.on_loop); a client cannot set a key that is not HTTP_*.
COUNTED = "modelhost.counted"


def new_prediction_id() -> str:
    """`prd_` + a ULID: 48 bits of milliseconds then 80 random bits, sortable by time; its 26
    characters are the 128 bits with two zero bits in front, 10 bits (two characters) at a time."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "prd_" + "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])


@dataclass
class Timings:
    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    spans: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last = self.started

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.spans.append((name, (now - self.last) * 1000))
        self.last = now

    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.3f}" for name, ms in self.spans)


@dataclass(frozen=True)
class CallerIdentity:
    """Who is predicting: counted against `subject`'s limits and recorded with `api_key_id`."""

    org_slug: str | None
    subject: str
    api_key_id: int | None
    key_limit: int = 0
    key_quota: int = 0
    org_limit: int = 0
    org_quota: int = 0


@dataclass
class ModelInput:
    """A validated batch: what the model predicts on, and its canonical bytes for the cache key."""

    x: Any
    n_rows: int
    canonical: bytes
    recorded: Any


@dataclass
class PredictionCall:
    """A protocol's request, before the version (and so the signature) is known.

    `validate(target)` checks the body against the chosen version and may set
    `want_proba` (the V2 protocol asks for probabilities by output name).
    """

    unit_id: str | None
    want_proba: bool
    validate: Callable[[routing.VersionTarget], ModelInput]
    extra: dict = field(default_factory=dict)
    # Per-row feature contributions asked for (parameters.explain; inference.explanations).
    explain: bool = False


@dataclass
class Outcome:
    prediction_id: str
    route: routing.Route
    target: routing.VersionTarget
    variant: str | None
    predictions: np.ndarray | list
    probabilities: np.ndarray | list | None
    cache_hit: bool
    latency_ms: float
    timings: Timings
    limit_headers: dict[str, str]
    call: PredictionCall
    # {"method", "output", "values": (rows, features), "base": (rows,)} when the call asked to explain.
    explanation: dict | None = None

    def headers(self) -> dict[str, str]:
        return {"X-Cache": "HIT" if self.cache_hit else "MISS", "Server-Timing": self.timings.header(), **self.limit_headers}


def authenticate(request: HttpRequest) -> CallerIdentity:
    """API key (the fast path), else a JWT or a browser session of an organization member."""
    plaintext = credential_from_headers(request.META)
    if plaintext is not None:
        try:
            key = authenticate_api_key(plaintext)
        except ApiKeyError as exc:
            raise Unauthenticated(exc.reason, headers={"WWW-Authenticate": 'Bearer realm="api"'}) from None
        if not key.has_scope("predict"):
            raise PermissionDenied("This API key lacks the 'predict' scope.")
        return CallerIdentity(
            org_slug=key.organization_slug,
            subject=f"k{key.id}",
            api_key_id=key.id,
            key_limit=key.rate_limit_per_minute,
            key_quota=key.monthly_quota,
            org_limit=key.organization_rate_limit_per_minute,
            org_quota=key.organization_monthly_quota,
        )
    user = _user_from_jwt_or_session(request)
    if user is None:
        raise Unauthenticated(
            "Send an API key (Authorization: Bearer mh_… or X-API-Key), a JWT, or log in.",
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    return CallerIdentity(org_slug=None, subject=f"u{user.pk}", api_key_id=None)


def _user_from_jwt_or_session(request: HttpRequest):
    from rest_framework.exceptions import AuthenticationFailed

    from accounts.authentication import JwtAuthentication

    if request.META.get("HTTP_AUTHORIZATION", "").lower().startswith("bearer "):
        try:
            result = JwtAuthentication().authenticate(request)
        except AuthenticationFailed as exc:
            raise Unauthenticated(str(exc.detail), headers={"WWW-Authenticate": 'Bearer realm="api"'}) from None
        return result[0] if result else None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        _enforce_csrf(request)
        return user
    return None


def _enforce_csrf(request: HttpRequest) -> None:
    # A browser session must carry the CSRF token, as DRF's SessionAuthentication requires.
    from django.middleware.csrf import CsrfViewMiddleware

    reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    if reason is not None:
        raise PermissionDenied("CSRF check failed: send the X-CSRFToken header with a session-authenticated request.")


def _route_for(identity: CallerIdentity, org_slug: str, model_name: str) -> tuple[routing.Route, CallerIdentity]:
    """The route, if the caller may use it; people get their organization's limits attached."""
    if identity.api_key_id is not None:
        if identity.org_slug != org_slug:
            raise NotFound()
        return routing.resolve_route(org_slug, model_name), identity
    from accounts.models import Membership

    membership = (
        Membership.objects.select_related("organization")
        .filter(user_id=int(identity.subject[1:]), organization__slug=org_slug)
        .first()
    )
    if membership is None:
        raise NotFound()
    org = membership.organization
    identity = CallerIdentity(
        org_slug=org_slug,
        subject=identity.subject,
        api_key_id=None,
        org_limit=org.rate_limit_per_minute,
        org_quota=org.monthly_quota,
    )
    return routing.resolve_route(org_slug, model_name), identity


def run_prediction(
    *,
    request: HttpRequest,
    org_slug: str | None,
    model_name: str,
    version_number: int | None,
    protocol: str,
    parse: Callable[[], PredictionCall],
) -> Outcome:
    timings = Timings()
    identity = authenticate(request)
    timings.mark("auth")
    org_slug = org_slug or identity.org_slug
    if org_slug is None:
        raise NotFound()
    route, identity = _route_for(identity, org_slug, model_name)
    call = parse()
    target, variant = _choose_target(route, version_number, call.unit_id)
    timings.mark("resolve")
    try:
        # Validation runs before the limit (it needs no Redis) so that the limit's round trip
        # can also read the prediction cache; its verdict is given only after the limit, so a
        # refused request is a 429 whatever its body, and an invalid one still counts.
        model_input, invalid = _validate(call, target)
        timings.mark("validate")
        if model_input is not None and on_event_loop() and not _computed_here(call, target, model_input):
            raise LeaveTheLoop  # a runner or the reference data: wait on a request thread, not on the loop
        key = _cache_key(route, target, model_input, call)
        counted = request.META.pop(COUNTED, None)
        if counted is None:
            limit_state = limits.check_and_count(
                subject=identity.subject,
                org_id=route.org_id,
                key_limit=identity.key_limit,
                org_limit=identity.org_limit,
                key_quota=identity.key_quota,
                org_quota=identity.org_quota,
                rows=model_input.n_rows if model_input is not None else 0,
                cache_key=key,
            )
            cached_raw = limit_state.cached
        else:  # counted by a first run on the event loop, which left when the route changed
            limit_state, counted_key = counted
            cached_raw = limit_state.cached if counted_key == key else (prediction_cache.lookup(key) if key else None)
        if routing.note_generation(limit_state.route_generation):
            if on_event_loop():
                # Resolving again is a query: the request thread's run takes over this count.
                request.META[COUNTED] = (limit_state, key)
                raise LeaveTheLoop
            # Another process changed a route: resolve again, and re-check against a new target.
            route, identity = _route_for(identity, org_slug, model_name)
            target, variant = _choose_target(route, version_number, call.unit_id)
            model_input, invalid = _validate(call, target)
            fresh_key = _cache_key(route, target, model_input, call)
            if fresh_key != key:
                key, cached_raw = fresh_key, prediction_cache.lookup(fresh_key) if fresh_key is not None else None
        timings.mark("limit")
        if invalid is not None:
            raise invalid
        cached = prediction_cache.decode(cached_raw) if cached_raw is not None else None
        if cached is not None and call.explain and not isinstance(cached.get("e"), dict):
            cached = None  # an entry without its explanation (never written under an explain key; not trusted blindly)
        timings.mark("cache")
        explanation = None
        if cached is not None:
            predictions, probabilities = cached["p"], cached.get("q")
            explanation = explanations.from_cache(cached["e"]) if call.explain else None
        elif call.explain:
            predictions, probabilities, explanation = predictors.predict_explained(
                target=target, x=model_input.x, want_proba=call.want_proba, finite=target.spec.forbids_missing
            )
        else:
            predictions, probabilities = predictors.predict(
                target=target, x=model_input.x, want_proba=call.want_proba, finite=target.spec.forbids_missing
            )
        timings.mark("predict")
    except ModelhostError as exc:
        _record_failure(
            identity=identity,
            route=route,
            target=target,
            variant=variant,
            protocol=protocol,
            call=call,
            timings=timings,
            error=exc,
        )
        raise
    outcome = Outcome(
        prediction_id=new_prediction_id(),
        route=route,
        target=target,
        variant=variant,
        predictions=predictions,
        probabilities=probabilities,
        cache_hit=cached is not None,
        latency_ms=0.0,
        timings=timings,
        limit_headers=limit_state.headers(),
        call=call,
        explanation=explanation,
    )
    cache_value = None
    if key is not None and cached is None:
        cache_value = prediction_cache.encode(
            predictions=predictions,
            probabilities=probabilities,
            explanation=explanations.to_cache(explanation) if explanation is not None else None,
        )
    outcome.latency_ms = timings.total_ms()
    record = _record(identity=identity, outcome=outcome, protocol=protocol, rows=model_input.n_rows, inputs=model_input.recorded)
    if route.mirror is not None and variant is None and version_number is None and route.mirror.draws():
        # Only the draw happens here; the candidate predicts on the worker, after the answer left.
        record["mirror"] = route.mirror.id
    records.publish(
        record=record,
        cache_key=key,
        cache_value=cache_value,
        ttl=route.cache_ttl,
    )
    timings.mark("record")
    _observe(outcome=outcome, protocol=protocol, rows=model_input.n_rows)
    return outcome


def _computed_here(call: PredictionCall, target: routing.VersionTarget, model_input: ModelInput) -> bool:
    """Whether this request's answer is computed in this process (no runner, no reference data)."""
    return not call.explain and predictors.computes_here(
        target, model_input.x, want_proba=call.want_proba, finite=target.spec.forbids_missing
    )


def computed_here(plaintext: str, org_slug: str | None, model_name: str, number: int | None) -> bool:
    """Whether a prediction with this API key on this route can be answered from what this process
    holds (the key, the route, a model it computes), with no query and no runner: then the web's
    event loop answers it itself (platform_site.on_loop). Reads only; a wrong True is caught by
    the steps' own leave_if_on_loop."""
    principal = cached_principal(plaintext)
    if principal is None or not principal.has_scope("predict"):
        return False
    org_slug = org_slug or principal.organization_slug
    if org_slug != principal.organization_slug:
        return False
    route = routing.cached_route(org_slug, model_name)
    if route is None:
        return False
    if number is not None:
        target = routing.cached_version(route, number)
        return target is not None and predictors.serves_here(target)
    if route.experiment is not None:
        return all(predictors.serves_here(variant.target) for variant in route.experiment.variants)
    return route.production is not None and predictors.serves_here(route.production)


def _validate(call: PredictionCall, target: routing.VersionTarget) -> tuple[ModelInput | None, ModelhostError | None]:
    try:
        return call.validate(target), None
    except ModelhostError as exc:
        return None, exc


def _cache_key(
    route: routing.Route, target: routing.VersionTarget, model_input: ModelInput | None, call: PredictionCall
) -> str | None:
    if model_input is None or route.cache_ttl <= 0:
        return None
    return prediction_cache.cache_key(
        version_id=target.id, canonical_input=model_input.canonical, want_proba=call.want_proba, explain=call.explain
    )


def _choose_target(
    route: routing.Route, version_number: int | None, unit_id: str | None
) -> tuple[routing.VersionTarget, str | None]:
    if version_number is not None:
        return routing.resolve_version(route, version_number), None
    if route.experiment is not None:
        variant = route.experiment.choose(unit_id)
        return variant.target, variant.name
    if route.production is None:
        raise NotFound(f"{route.full_name} has no production version; promote one or call /versions/<n>/predict.")
    return route.production, None


def _capped(values: Any) -> Any:
    if isinstance(values, np.ndarray):
        values = values[: settings.RECORD_MAX_ROWS].tolist()
    elif isinstance(values, list):
        values = values[: settings.RECORD_MAX_ROWS]
    return values


def _record(*, identity: CallerIdentity, outcome: Outcome, protocol: str, rows: int, inputs: Any) -> dict:
    return {
        "id": outcome.prediction_id,
        "ts": time.time(),
        "org": outcome.route.org_id,
        "model": outcome.route.model_id,
        "version": outcome.target.id,
        "exp": outcome.route.experiment.id if outcome.variant is not None and outcome.route.experiment else None,
        "variant": outcome.variant,
        "key": identity.api_key_id,
        "unit": outcome.call.unit_id,
        "proto": protocol,
        "rows": rows,
        "lat": round(outcome.latency_ms, 3),
        "hit": outcome.cache_hit,
        "status": 200,
        "in": _capped(inputs),
        "out": _capped(outcome.predictions),
    }


def _record_failure(*, identity, route, target, variant, protocol, call, timings, error: ModelhostError) -> None:
    PREDICTION_ERRORS.labels(route.org_slug, route.model_name, protocol, error.code).inc()
    records.publish(
        record={
            "id": new_prediction_id(),
            "ts": time.time(),
            "org": route.org_id,
            "model": route.model_id,
            "version": target.id,
            "exp": route.experiment.id if variant is not None and route.experiment else None,
            "variant": variant,
            "key": identity.api_key_id,
            "unit": call.unit_id,
            "proto": protocol,
            "rows": 0,
            "lat": round(timings.total_ms(), 3),
            "hit": False,
            "status": error.status,
            "err": error.code,
        }
    )


_series: dict[tuple, tuple] = {}


def _observe(*, outcome: Outcome, protocol: str, rows: int) -> None:
    org, model, version = outcome.route.org_slug, outcome.route.model_name, str(outcome.target.number)
    variant = outcome.variant or ""
    children = _series.get((org, model, version, protocol, variant))
    if children is None:  # labels() hashes and locks each call: bind each series' children once
        if len(_series) > 50_000:
            _series.clear()
        children = _series[(org, model, version, protocol, variant)] = (
            PREDICTION_REQUESTS.labels(org, model, version, protocol, variant),
            PREDICTION_ROWS.labels(org, model, version),
            PREDICTION_CACHE_HITS.labels(org, model, version),
            PREDICTION_LATENCY.labels(org, model, version, protocol),
        )
    requests, row_count, hits, latency = children
    requests.inc()
    row_count.inc(rows)
    if outcome.cache_hit:
        hits.inc()
    latency.observe(outcome.latency_ms / 1000)
