"""The replay gate of a promotion: `require_replay` on the stage and experiment promote calls.

Registered as the registry's "require_replay" promotion check (analytics.apps), so it runs
inside `registry.services.set_stage`, under the model's row lock. The evidence is the newest of
(a) the version's finished replays against the current production version and (b) the live
mirrors of the version against it (running or stopped, once they compared a row). The gate's
figure counts rows the version failed on as disagreeing: agreeing rows over compared rows plus
rows failed on the version only, so a candidate that agrees wherever it answers but fails on a
tenth of the traffic does not pass a 0.98 gate.
"""

from __future__ import annotations

from datetime import datetime

from analytics.models import MirrorReport, Replay
from platform_site.errors import Conflict
from registry.models import ModelVersion


def _evidence(*, version: ModelVersion, production: ModelVersion) -> tuple[str, int, dict, datetime, str] | None:
    """(kind, id, report, when, where to read it) of the newest replay or mirror, or None."""
    model = version.registered_model
    replay = (
        Replay.objects.filter(
            organization_id=model.organization_id, version=version, baseline_version=production, status=Replay.Status.DONE
        )
        .order_by("-finished_at", "-id")
        .first()
    )
    mirror = (
        MirrorReport.objects.filter(
            organization_id=model.organization_id,
            mirror__version=version,
            mirror__baseline_version=production,
            rows_mirrored__gt=0,
        )
        .order_by("-updated_at", "-id")
        .first()
    )
    found = []
    if replay is not None:
        found.append(
            (
                "replay",
                replay.pk,
                replay.report,
                replay.finished_at,
                f"/api/v1/models/{model.full_name}/versions/{version.number}/replays/{replay.pk}",
            )
        )
    if mirror is not None:
        found.append(("mirror", mirror.mirror_id, mirror.report, mirror.updated_at, f"/api/v1/models/{model.full_name}/mirror"))
    return max(found, key=lambda item: item[3]) if found else None


def gate_figures(report: dict) -> dict:
    """The figures the gate reads from a replay's or mirror's report."""
    failed = report["failures"]["candidate_only"]
    compared = report["rows_compared"]
    agreeing = report["agreement_detail"]["agreeing"]
    judged = compared + failed
    return {
        "rows_compared": compared,
        "rows_failed": failed,
        "agreement": report["agreement"],
        "gate_agreement": agreeing / judged if judged else None,
    }


def require_replay(*, version: ModelVersion, production: ModelVersion | None, min_agreement: float, min_rows: int = 1) -> None:
    """Refuse the promotion (Conflict, quoting the evidence) unless it shows enough agreement."""
    model = version.registered_model
    if production is None:
        raise Conflict(
            f"{model.full_name} has no production version, so no replay can compare version {version.number} with it; "
            "promote without require_replay.",
            replay=None,
        )
    evidence = _evidence(version=version, production=production)
    if evidence is None:
        raise Conflict(
            f"Version {version.number} has no replay against production (version {production.number}) yet: run one "
            f"(POST /api/v1/models/{model.full_name}/versions/{version.number}/replays) or mirror traffic to it "
            f"(POST /api/v1/models/{model.full_name}/mirror), then promote again.",
            replay=None,
        )
    kind, identifier, report, when, location = evidence
    figures = gate_figures(report)
    quoted = {
        "kind": kind,
        "id": identifier,
        "url": location,
        "at": when.isoformat(),
        **figures,
        "min_agreement": min_agreement,
        "min_rows": min_rows,
    }
    name = f"Replay #{identifier}" if kind == "replay" else f"Mirror #{identifier}"
    gate = figures["gate_agreement"]
    said = (
        f"{name} of version {version.number} against production (version {production.number}): "
        f"{figures['rows_compared']} rows compared, {figures['rows_failed']} failed on version {version.number}, "
        f"{'no agreement' if gate is None else f'{gate:.2%} agreement'} counting failures as disagreeing"
    )
    judged = figures["rows_compared"] + figures["rows_failed"]
    if judged < min_rows:
        raise Conflict(f"{said}; the promotion asks for at least {min_rows} rows.", replay=quoted)
    if gate is None or gate < min_agreement:
        raise Conflict(f"{said}, below the {min_agreement:.2%} the promotion asks for.", replay=quoted)
