"""Prediction records and feedback for analytics tests, written through the real ingestion path."""

from __future__ import annotations

import itertools
from datetime import datetime

from accounts.principals import Caller
from inference.models import Feedback
from inference.records import ingest_records
from registry import services as registry_services
from registry.tests import factories as registry_factories

_ids = itertools.count(1)


def iris_model(tenant, name: str = "iris", *, versions: int = 1, promote: bool = True):
    """A registered iris model of `tenant` with `versions` versions (the first in production)."""
    model = registry_services.create_model(caller=Caller(user=tenant.user), organization=tenant.organization, name=name)
    created = [registry_factories.create_version(model, promote=promote and i == 0) for i in range(versions)]
    model.refresh_from_db()
    return model, created


def record(version, *, at: datetime, **fields) -> dict:
    """One record as the hot path publishes it (inference.hotpath._record)."""
    model = version.registered_model
    body = {
        "id": f"prd_test{next(_ids):022d}",
        "ts": at.timestamp(),
        "org": model.organization_id,
        "model": model.id,
        "version": version.id,
        "exp": None,
        "variant": None,
        "key": None,
        "unit": None,
        "proto": "native",
        "rows": 1,
        "lat": 1.0,
        "hit": False,
        "status": 200,
        "in": [[5.1, 3.5, 1.4, 0.2]],
        "out": [0],
    }
    body.update(fields)
    return body


def ingest(records: list[dict]) -> list[dict]:
    ingest_records(records)
    return records


def feedback(version, prediction_id: str, *, label=None, value=None) -> Feedback:
    return Feedback.objects.create(
        organization_id=version.registered_model.organization_id,
        prediction_id=prediction_id,
        version=version,
        label=label,
        value=value,
    )
