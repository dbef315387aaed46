"""Resolve `org/model` to the version that answers: production, or an experiment variant,
and the running live mirror's fraction (the share of production's requests it samples).

Routes are cached in-process (ROUTE_CACHE_SECONDS) so a warm request makes no query.
A promotion bumps a generation counter in Redis; the rate-limit round trip reads it, so
every process drops its routes on its next request after a promotion (and the process that
promoted drops them at once). Without Redis the bound is ROUTE_CACHE_SECONDS.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from inference.validation import InputSpec
from platform_site.errors import NotFound
from platform_site.on_loop import leave_if_on_loop

_MAX_ROUTES = 20_000


@dataclass(frozen=True)
class VersionTarget:
    id: int
    number: int
    model_id: int
    spec: InputSpec
    task: str
    classes: list | None
    has_proba: bool
    size_bytes: int
    org_id: int = 0
    serving_sha256: str = ""
    # The verified compiled form the runner serves beside the serving artifact ("" : scikit-learn).
    compiled_sha256: str = ""
    # The reference data's name in model storage ("" : none), for explanations (inference.explanations).
    reference_name: str = ""
    # The platform's own predict for a model reduced to plain numbers (inference.predictors).
    linear: Callable[..., Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Variant:
    name: str
    weight: int
    target: VersionTarget


@dataclass(frozen=True)
class ExperimentRoute:
    id: int
    name: str
    variants: tuple[Variant, ...]

    def choose(self, unit_id: str | None) -> Variant:
        """Sticky: the same (experiment, unit) always lands in the same weight bucket."""
        if unit_id:
            digest = hashlib.blake2b(f"{self.id}:{unit_id}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") % 10_000
        else:
            point = random.randrange(10_000)
        total = sum(v.weight for v in self.variants)
        edge = 0
        for variant in self.variants:
            edge += variant.weight * 10_000 / total
            if point < edge:
                return variant
        return self.variants[-1]


@dataclass(frozen=True)
class MirrorRoute:
    """A running mirror: the share of production's requests whose records are flagged for it."""

    id: int
    fraction: float

    def draws(self) -> bool:
        return random.random() < self.fraction


@dataclass(frozen=True)
class Route:
    org_id: int
    org_slug: str
    model_id: int
    model_name: str
    cache_ttl: int
    production: VersionTarget | None
    experiment: ExperimentRoute | None
    mirror: MirrorRoute | None = None

    @property
    def full_name(self) -> str:
        return f"{self.org_slug}/{self.model_name}"


def target_for(version, *, org_id: int | None = None) -> VersionTarget:
    from inference.predictors import linear_predictor

    if org_id is None:
        org_id = version.registered_model.organization_id
    return VersionTarget(
        id=version.id,
        number=version.number,
        model_id=version.registered_model_id,
        spec=InputSpec.from_signature(
            version.signature, wants_frame=version.fitted_with_feature_names, max_rows=settings.MAX_ROWS_PER_REQUEST
        ),
        task=version.task,
        classes=version.classes,
        has_proba=version.has_predict_proba,
        size_bytes=version.serving_size_bytes or version.size_bytes,
        org_id=org_id,
        serving_sha256=version.serving_sha256,
        compiled_sha256=version.compiled_sha256 if version.runtime == "onnx" else "",
        reference_name=version.reference_data.name or "",
        linear=linear_predictor(version.linear_spec),
    )


_routes: dict[tuple, tuple[float, Route | VersionTarget | None]] = {}
_lock = threading.Lock()
_generation: bytes | None = None


def clear_routes() -> None:
    with _lock:
        _routes.clear()


def note_generation(generation: bytes | None) -> bool:
    """Drop cached routes when the promotion counter moved; True if they were dropped."""
    global _generation
    if generation is None or generation == _generation:
        return False
    first = _generation is None
    _generation = generation
    if not first:
        clear_routes()
    return not first


def _cached(key: tuple, build):
    now = time.monotonic()
    entry = _routes.get(key)
    if entry is not None and entry[0] > now:
        value = entry[1]
    else:
        leave_if_on_loop()  # a query: platform_site.on_loop
        value = build()
        with _lock:
            if len(_routes) >= _MAX_ROUTES:
                _routes.clear()
            _routes[key] = (now + settings.ROUTE_CACHE_SECONDS, value)
    if value is None:
        raise NotFound()
    return value


def _load_model(org_slug: str, model_name: str):
    from registry.models import RegisteredModel

    return (
        RegisteredModel.objects.select_related("organization", "production_version")
        .filter(organization__slug=org_slug, name=model_name, deleted_at__isnull=True)
        .first()
    )


def _build_route(org_slug: str, model_name: str) -> Route | None:
    from inference.models import Experiment, Mirror
    from registry.models import ModelVersion

    model = _load_model(org_slug, model_name)
    if model is None:
        return None
    experiment = None
    running = Experiment.objects.filter(registered_model=model, status=Experiment.Status.RUNNING).first()
    if running is not None:
        versions = {v.id: v for v in ModelVersion.objects.filter(id__in=[v["version_id"] for v in running.variants])}
        experiment = ExperimentRoute(
            id=running.id,
            name=running.name,
            variants=tuple(
                Variant(
                    name=v.get("name") or f"v{v['version']}",
                    weight=int(v["weight"]),
                    target=target_for(versions[v["version_id"]], org_id=model.organization_id),
                )
                for v in running.variants
            ),
        )
    running_mirror = (
        Mirror.objects.filter(registered_model=model, status=Mirror.Status.RUNNING)
        .values_list("id", "fraction", "baseline_version_id")
        .first()
    )
    mirror = None
    if running_mirror is not None and running_mirror[2] == model.production_version_id:
        mirror = MirrorRoute(id=running_mirror[0], fraction=running_mirror[1])
    return Route(
        org_id=model.organization_id,
        org_slug=model.organization.slug,
        model_id=model.id,
        model_name=model.name,
        cache_ttl=model.prediction_cache_ttl,
        production=target_for(model.production_version, org_id=model.organization_id) if model.production_version_id else None,
        experiment=experiment,
        mirror=mirror,
    )


def _held(key: tuple):
    """What the cache holds under `key` while fresh, without building it; None otherwise."""
    entry = _routes.get(key)
    if entry is None or entry[0] <= time.monotonic():
        return None
    return entry[1]


def cached_route(org_slug: str, model_name: str) -> Route | None:
    """The route if this process holds it (no query); None when it would have to load it."""
    return _held(("route", org_slug, model_name))


def cached_version(route: Route, number: int) -> VersionTarget | None:
    """The pinned version if this process holds it (no query); None otherwise."""
    return _held(("version", route.model_id, number))


def resolve_route(org_slug: str, model_name: str) -> Route:
    return _cached(("route", org_slug, model_name), lambda: _build_route(org_slug, model_name))


def resolve_version(route: Route, number: int) -> VersionTarget:
    from registry.models import ModelVersion

    def build():
        version = ModelVersion.objects.filter(registered_model_id=route.model_id, number=number).first()
        return target_for(version, org_id=route.org_id) if version is not None else None

    return _cached(("version", route.model_id, number), build)
