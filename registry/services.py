"""Writes and rules for the registry: models, version uploads, stages, releases, rollback."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F, Max
from django.dispatch import Signal
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import Organization
from accounts.principals import Caller
from accounts.services import record_audit_event
from platform_site.errors import Conflict, InvalidArtifact, InvalidInput, ModelhostError, NotFound
from registry import artifacts, signatures
from registry.models import COMPILE_PENDING_REASON, COMPILE_SKIPPED_REASON, ModelVersion, RegisteredModel, Release, Stage, Task

logger = logging.getLogger(__name__)

# Sent after a version becomes production (on commit): the inference layer warms it.
production_changed = Signal()
# Sent after what serves a version changed (on commit): the inference layer re-resolves routes.
serving_changed = Signal()
# Conditions a promotion may ask for by name: each is called as check(version=, production=,
# **options) under the model's row lock and raises (a Conflict quoting its evidence) when unmet.
# The app that holds the evidence registers its check (analytics: "require_replay", in its
# AppConfig.ready), so that the registry imports no app to its right.
promotion_checks: dict[str, Callable[..., None]] = {}


def _check_name(name: str) -> str:
    if not name or name != slugify(name) or len(name) > 100:
        raise InvalidInput(
            f"'{name}' is not a valid model name: use lowercase letters, digits, hyphens and underscores (at most 100).",
            errors=[{"field": "name", "message": "use lowercase letters, digits, hyphens and underscores"}],
        )
    return name


@transaction.atomic
def create_model(
    *, caller: Caller, organization: Organization, name: str, description: str = "", task: str = ""
) -> RegisteredModel:
    _check_name(name)
    if task and task not in Task.values:
        choices = ", ".join(Task.values)
        raise InvalidInput(
            f"'{task}' is not a task; choose one of {choices}.", errors=[{"field": "task", "message": f"choose one of {choices}"}]
        )
    if RegisteredModel.objects.filter(organization=organization, name=name, deleted_at__isnull=True).exists():
        raise Conflict(
            f"A model named {organization.slug}/{name} already exists.", errors=[{"field": "name", "message": "already exists"}]
        )
    model = RegisteredModel.objects.create(
        organization=organization, name=name, description=description, task=task, created_by=caller.person
    )
    record_audit_event(organization=organization, caller=caller, action="model.created", target=model, data={"name": name})
    return model


@transaction.atomic
def update_model(*, caller: Caller, model: RegisteredModel, **changes: Any) -> RegisteredModel:
    allowed = {"description", "prediction_cache_ttl"}
    for field, value in changes.items():
        if field not in allowed:
            raise InvalidInput(f"{field} cannot be changed.", errors=[{"field": field, "message": "read-only"}])
        setattr(model, field, value)
    model.save(update_fields=[*changes, "updated_at"])
    record_audit_event(organization=model.organization, caller=caller, action="model.updated", target=model, data=changes)
    return model


@transaction.atomic
def delete_model(*, caller: Caller, model: RegisteredModel) -> None:
    """Soft delete: the name is freed and the model stops serving; versions stay for audit."""
    model.deleted_at = timezone.now()
    model.save(update_fields=["deleted_at", "updated_at"])
    record_audit_event(
        organization=model.organization, caller=caller, action="model.deleted", target=model, data={"name": model.name}
    )


def _parse_metrics(value: Any, *, field: str, numbers_only: bool) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object.", errors=[{"field": field, "message": "expected a JSON object"}])
    for key, item in value.items():
        ok = (
            isinstance(item, (int, float)) and not isinstance(item, bool)
            if numbers_only
            else isinstance(item, (str, int, float, bool)) or item is None
        )
        if not ok:
            kind = "a number" if numbers_only else "a string, number or boolean"
            raise InvalidInput(
                f"{field}.{key} must be {kind}.", errors=[{"field": f"{field}.{key}", "message": f"expected {kind}"}]
            )
    return value


def upload_version(
    *,
    caller: Caller,
    model: RegisteredModel,
    file: UploadedFile,
    reference_data: UploadedFile | None = None,
    input_example: Any = None,
    metrics: Any = None,
    params: Any = None,
    description: str = "",
    source: str = "upload",
    use_compiled: bool = True,
) -> ModelVersion:
    """Check an uploaded artifact in a sandbox, store it, and record it as the next version.

    Nothing is stored unless every check passes: the file is inspected from a temporary
    copy, and the stored copy is removed again if recording the version fails. The version
    is served by scikit-learn at once; a tree ensemble is then compiled by a Celery worker
    (``compile_version``, queued on commit), unless `use_compiled` is False, which keeps it on
    scikit-learn without compiling (``set_compiled_use`` changes it later).
    """
    metrics = _parse_metrics(metrics, field="metrics", numbers_only=True)
    params = _parse_metrics(params, field="params", numbers_only=False)
    with artifacts.staged_upload(file) as staged:
        reference = artifacts.read_reference_data(reference_data) if reference_data is not None else None
        if input_example is not None:
            signatures.example_rows(input_example)  # shape check before the expensive part
        check_example = input_example if input_example is not None else staged.input_example
        if check_example is None and reference is not None:
            check_example = reference.head_records
        report = artifacts.inspect_in_sandbox(staged, input_example=check_example)
        signature = _choose_signature(staged=staged, input_example=input_example, reference=reference, report=report)
        _check_guessed_types(staged=staged, signature=signature, report=report)
        stored_paths: list[str] = []
        try:
            with transaction.atomic():
                locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
                number = (locked.versions.aggregate(n=Max("number"))["n"] or 0) + 1
                version = ModelVersion(
                    registered_model=locked,
                    number=number,
                    sha256=staged.sha256,
                    size_bytes=staged.size,
                    format=staged.format,
                    inner_path=staged.inner_path,
                    inner_format=staged.inner_format,
                    sklearn_version=report.get("sklearn_version") or "",
                    serving_sklearn_version=report["serving_sklearn_version"],
                    estimator_class=report["estimator_class"],
                    final_estimator_class=report.get("final_estimator_class") or "",
                    task=report["task"],
                    classes=report.get("classes"),
                    has_predict_proba=bool(report.get("has_predict_proba")),
                    n_features=report.get("n_features"),
                    fitted_with_feature_names=bool(report.get("feature_names")),
                    signature=signature,
                    input_example=signatures.without_nan(
                        input_example
                        if input_example is not None
                        else (staged.input_example or (reference.head_records if reference else None))
                    ),
                    reference_rows=reference.rows if reference else 0,
                    metrics=metrics,
                    params=params,
                    description=description,
                    warnings=_warnings(report),
                    source=source,
                    load_seconds=report.get("load_seconds"),
                    created_by=caller.person,
                )
                base = f"orgs/{locked.organization_id}/models/{locked.pk}/versions/{number}"
                version.artifact.name = artifacts.store(staged.path, f"{base}/{staged.sha256[:16]}.{staged.extension}")
                stored_paths.append(version.artifact.name)
                if reference is not None:
                    version.reference_data.name = artifacts.store(reference.path, f"{base}/reference.csv")
                    stored_paths.append(version.reference_data.name)
                serving = report["serving_artifact"]
                version.serving_artifact.name = artifacts.store_bytes(serving, f"{base}/serving-{staged.sha256[:16]}.pkl")
                stored_paths.append(version.serving_artifact.name)
                version.serving_sha256 = hashlib.sha256(serving).hexdigest()
                version.serving_size_bytes = len(serving)
                version.linear_spec = report.get("linear_spec")
                version.use_compiled = use_compiled
                if not report.get("compiled_candidate"):
                    version.compiled_reason = report.get("compiled_reason", "")[:500]
                else:
                    version.compiled_reason = COMPILE_PENDING_REASON if use_compiled else COMPILE_SKIPPED_REASON
                version.save()
                if version.compiled_reason == COMPILE_PENDING_REASON:
                    _compile_on_commit(version.pk)
                if not locked.task:
                    locked.task = version.task
                    locked.save(update_fields=["task", "updated_at"])
                record_audit_event(
                    organization=locked.organization,
                    caller=caller,
                    action="version.created",
                    target=version,
                    data={
                        "model": locked.name,
                        "number": number,
                        "sha256": staged.sha256,
                        "format": staged.format,
                        "source": source,
                    },
                )
        except BaseException:
            for name in stored_paths:
                artifacts.delete_stored(name)
            raise
        finally:
            if reference is not None:
                reference.cleanup()
    return version


def _warnings(report: dict) -> list[dict]:
    found = []
    saved, serving = report.get("sklearn_version"), report["serving_sklearn_version"]
    if saved and saved != serving:
        found.append(
            {
                "code": "sklearn_version_mismatch",
                "message": (
                    f"Saved with scikit-learn {saved}, served by {serving}; predictions may differ. Retrain or re-save with "
                    f"{serving} to silence this."
                ),
            }
        )
    if not saved:
        found.append(
            {
                "code": "sklearn_version_unknown",
                "message": "The artifact does not record the scikit-learn version it was saved with.",
            }
        )
    return found


def _choose_signature(
    *, staged: artifacts.StagedArtifact, input_example: Any, reference: artifacts.ReferenceData | None, report: dict
) -> dict:
    signature: dict = {}
    if staged.mlflow_signature:
        signature = signatures.from_mlflow(staged.mlflow_signature)
    if not signature and input_example is not None:
        signature = signatures.from_example(input_example)
    if not signature and staged.input_example is not None:
        signature = signatures.from_example(staged.input_example)
    if not signature and reference is not None:
        signature = signatures.from_dataframe_dtypes(reference.columns, reference.dtypes, "reference_data")
    if not signature:
        signature = signatures.from_estimator(feature_names=report.get("feature_names"), n_features=report.get("n_features"))
    if not signature:
        raise InvalidInput(
            "The model's input columns cannot be determined: send an input_example or reference_data.",
            errors=[{"field": "input_example", "message": "required for this model"}],
        )
    expected = report.get("n_features")
    width = len(signature["inputs"])
    if expected is not None and width != expected:
        raise InvalidInput(
            f"The signature has {width} columns ({signature['source']}) but the model expects {expected} features.",
            errors=[{"field": "signature", "message": f"{width} columns, model expects {expected}"}],
        )
    names = report.get("feature_names")
    if names and signature["named"] and set(signatures.column_names(signature)) != set(names):
        missing = sorted(set(names) - set(signatures.column_names(signature)))
        extra = sorted(set(signatures.column_names(signature)) - set(names))
        raise InvalidInput(
            f"The signature's columns do not match the model's features (missing: {', '.join(missing) or '-'}; "
            f"unexpected: {', '.join(extra) or '-'}).",
            errors=[{"field": "signature", "message": f"missing {m}"} for m in missing]
            + [{"field": "signature", "message": f"unexpected {e}"} for e in extra],
        )
    if names and signature["named"]:
        # Keep the model's own column order, which is what it was fitted on.
        by_name = {column["name"]: column for column in signature["inputs"]}
        signature = {**signature, "inputs": [by_name[name] for name in names]}
    return signature


def _check_guessed_types(*, staged: artifacts.StagedArtifact, signature: dict, report: dict) -> None:
    """Refuse (422) a model whose columns were assumed numeric and which cannot predict on a row of zeros.

    Without an MLflow signature, input example or reference data, a signature from
    `feature_names_in_` or `n_features_in_` types every column a number. A model fitted on
    string columns would then fail at predict time whatever the caller sent; this says so at
    upload instead. The sandbox's synthesized row is that zero row unless an encoder's category
    went into it (its ``zero_row``); only then is a zero row tried here (a second sandbox run,
    half a second for a 500-tree forest when it was always made).
    """
    if signature.get("source") not in ("feature_names_in", "n_features_in"):
        return
    sample = report.get("sample") or {}
    failure = None
    if sample.get("source") == "synthesized" and sample.get("zero_row"):
        if sample.get("ok") is False:
            failure = sample.get("error")
    elif sample.get("source") in (None, "synthesized"):
        # The sandbox's synthesized row puts a known category in encoded columns, which says
        # nothing about whether every column takes numbers: try the row the signature implies.
        zero_row = [{column["name"]: 0.0 for column in signature["inputs"]}]
        try:
            artifacts.inspect_in_sandbox(staged, input_example=zero_row)
        except InvalidArtifact as exc:
            failure = exc.detail
    if failure is not None:
        raise InvalidArtifact(
            "The model's column types are unknown, so they were taken as numbers, and the model fails on a row of zeros "
            f"({failure}). "
            "Send an input_example or reference_data with the upload so that its string or boolean columns are known.",
            errors=[{"field": "input_example", "message": "required: the model does not take numbers in every column"}],
        )


def _next_release_number(model: RegisteredModel) -> int:
    return (model.releases.aggregate(n=Max("number"))["n"] or 0) + 1


def _record_release(*, caller: Caller, model: RegisteredModel, kind: str, from_version, to_version, reason: str) -> Release:
    release = Release.objects.create(
        registered_model=model,
        number=_next_release_number(model),
        kind=kind,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        actor=caller.person,
        actor_api_key_prefix=caller.api_key.prefix if caller.api_key else "",
    )
    record_audit_event(
        organization=model.organization,
        caller=caller,
        action=f"release.{kind}",
        target=release,
        data={
            "model": model.name,
            "release": release.number,
            "from_version": from_version.number if from_version else None,
            "to_version": to_version.number if to_version else None,
            "reason": reason,
        },
    )
    return release


def _make_production(*, caller: Caller, model: RegisteredModel, version: ModelVersion | None, kind: str, reason: str) -> Release:
    """Switch the production pointer under a row lock: exactly one production version."""
    previous = model.production_version
    if previous is not None and previous.pk != getattr(version, "pk", None):
        ModelVersion.objects.filter(pk=previous.pk).update(stage=Stage.ARCHIVED)
    if version is not None:
        ModelVersion.objects.filter(pk=version.pk).update(stage=Stage.PRODUCTION)
        version.stage = Stage.PRODUCTION
    model.production_version = version
    model.save(update_fields=["production_version", "updated_at"])
    release = _record_release(caller=caller, model=model, kind=kind, from_version=previous, to_version=version, reason=reason)
    transaction.on_commit(
        lambda: production_changed.send(sender=RegisteredModel, model_id=model.pk, version_id=getattr(version, "pk", None))
    )
    return release


@transaction.atomic
def set_stage(
    *, caller: Caller, version: ModelVersion, stage: str, reason: str = "", require_replay: dict | None = None
) -> ModelVersion:
    """Move a version to `stage`; production switches as a new release.

    `require_replay` ({"min_agreement": 0.98, "min_rows": 100}) makes a promotion conditional on
    the newest replay or live mirror of the version against the current production version
    (the "require_replay" promotion check): 409 quoting it when it falls short or none exists.
    """
    if stage not in (Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED):
        raise InvalidInput(
            f"'{stage}' is not a stage; choose staging, production or archived.",
            errors=[{"field": "stage", "message": "choose staging, production or archived"}],
        )
    if require_replay is not None and stage != Stage.PRODUCTION:
        raise InvalidInput(
            "require_replay is a condition of a promotion; send it with stage production only.",
            errors=[{"field": "require_replay", "message": "only with stage production"}],
        )
    model = (
        RegisteredModel.objects.select_for_update(of=("self",))
        .select_related("organization", "production_version")
        .get(pk=version.registered_model_id)
    )
    version = ModelVersion.objects.get(pk=version.pk)
    if stage == Stage.PRODUCTION:
        if model.production_version_id == version.pk:
            raise Conflict(f"Version {version.number} is already in production.")
        if require_replay is not None:
            check = promotion_checks.get("require_replay")
            if check is None:
                raise InvalidInput(
                    "This installation cannot check replays.", errors=[{"field": "require_replay", "message": "not available"}]
                )
            check(version=version, production=model.production_version, **require_replay)
        _make_production(caller=caller, model=model, version=version, kind=Release.Kind.PROMOTE, reason=reason)
    else:
        old = version.stage
        version.stage = stage
        version.save(update_fields=["stage"])
        if model.production_version_id == version.pk:
            _make_production(
                caller=caller, model=model, version=None, kind=Release.Kind.RETIRE, reason=reason or f"moved to {stage}"
            )
            version.stage = stage
            ModelVersion.objects.filter(pk=version.pk).update(stage=stage)
        record_audit_event(
            organization=model.organization,
            caller=caller,
            action="version.stage_changed",
            target=version,
            data={"model": model.name, "number": version.number, "from": old, "to": stage},
        )
    version.refresh_from_db()
    return version


@transaction.atomic
def rollback(*, caller: Caller, model: RegisteredModel, reason: str = "") -> Release:
    """Production goes back to the version before the current one, as a new release."""
    model = (
        RegisteredModel.objects.select_for_update(of=("self",))
        .select_related("organization", "production_version")
        .get(pk=model.pk)
    )
    latest = model.releases.order_by("-number").select_related("from_version").first()
    if latest is None or latest.from_version is None:
        raise Conflict("There is no previous production version to roll back to.")
    target = latest.from_version
    if target.registered_model_id != model.pk:
        raise NotFound()
    return _make_production(
        caller=caller,
        model=model,
        version=target,
        kind=Release.Kind.ROLLBACK,
        reason=reason or f"rollback to v{target.number} (release {latest.number - 1 if latest.number > 1 else latest.number})",
    )


def import_mlflow_version(*, caller: Caller, model: RegisteredModel, model_uri: str, description: str = "") -> ModelVersion:
    """Download an MLflow model from the configured tracking server and upload it as a version."""
    with artifacts.download_mlflow_model(model_uri) as uploaded:
        return upload_version(caller=caller, model=model, file=uploaded, description=description, source=model_uri)


@transaction.atomic
def set_compiled_use(*, caller: Caller, version: ModelVersion, use_compiled: bool) -> ModelVersion:
    """Turn the version's compiled form on or off (the owner's choice; off means scikit-learn).

    Turning it on for a tree ensemble that was not compiled because it was off at upload
    queues its compile (``runtime`` "sklearn", ``compiled.status`` "compiling" until then);
    for a version that has no compiled form otherwise, it changes nothing it serves:
    ``runtime`` stays "sklearn" and ``runtime_reason`` says why.
    """
    version = ModelVersion.objects.select_for_update().select_related("registered_model__organization").get(pk=version.pk)
    if version.use_compiled != use_compiled:
        version.use_compiled = use_compiled
        fields = ["use_compiled"]
        if use_compiled and version.compiled_reason == COMPILE_SKIPPED_REASON:
            version.compiled_reason = COMPILE_PENDING_REASON
            fields.append("compiled_reason")
            _compile_on_commit(version.pk)
        version.save(update_fields=fields)
        model = version.registered_model
        record_audit_event(
            organization=model.organization,
            caller=caller,
            action="version.compiled_changed",
            target=version,
            data={"model": model.name, "number": version.number, "use_compiled": use_compiled, "runtime": version.runtime},
        )
        transaction.on_commit(lambda: serving_changed.send(sender=ModelVersion, model_id=model.pk, version_id=version.pk))
    return version


def _compile_on_commit(version_id: int) -> None:
    """Queue the version's compile once the upload commits (the worker must see the row).

    ``robust``: a broker that is down must not fail an upload that is already stored; the
    version then stays on scikit-learn, "compiling", until ``manage.py compile_pending`` queues
    it again."""

    transaction.on_commit(lambda: queue_compile(version_id=version_id), robust=True)


def queue_compile(*, version_id: int) -> None:
    """Send the version's compile to a worker (the default queue)."""
    from registry import tasks

    # The sandbox has MODEL_CHECK_TIMEOUT_SECONDS; the rest is storage. Far under the broker's visibility timeout.
    limit = settings.MODEL_CHECK_TIMEOUT_SECONDS + 120
    tasks.compile_version.apply_async((version_id,), soft_time_limit=limit, time_limit=limit + 30)


def pending_compile_ids(*, older_than_seconds: float = 0) -> list[int]:
    """The versions still waiting for their compile, uploaded at least `older_than_seconds` ago."""
    from datetime import timedelta

    from django.utils import timezone

    waiting = ModelVersion.objects.filter(compiled_sha256="", compiled_reason=COMPILE_PENDING_REASON)
    if older_than_seconds > 0:
        waiting = waiting.filter(created_at__lte=timezone.now() - timedelta(seconds=older_than_seconds))
    return list(waiting.order_by("id").values_list("id", flat=True))


def requeue_pending_compiles(*, older_than_seconds: float | None = None) -> int:
    """Queue again every compile still pending `older_than_seconds` (COMPILE_REQUEUE_AFTER_SECONDS)
    after its version's upload; returns how many. A compile that is merely slow may run twice:
    compile_version is idempotent, the second finds it done."""
    age = settings.COMPILE_REQUEUE_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    ids = pending_compile_ids(older_than_seconds=age)
    for version_id in ids:
        queue_compile(version_id=version_id)
    return len(ids)


def compile_version(*, version_id: int) -> str:
    """Build and verify a version's compiled form in the sandbox and store it; return its
    ``compiled_status`` afterwards.

    Idempotent: a version that is not waiting for its compile (compiled already, not a tree
    ensemble, turned off at upload) is left as it is. A verified form is stored and every
    process re-resolves the version's routes on commit, so its organization's runners load the
    compiled form with their next request for it (a production version is loaded at once);
    a failed verification leaves it on scikit-learn with the reason.
    """
    version = ModelVersion.objects.select_related("registered_model").filter(id=version_id).first()
    if version is None or version.compiled_sha256 or version.compiled_reason != COMPILE_PENDING_REASON:
        return version.compiled_status if version is not None else "none"
    data, reason, figures = None, "", {}
    try:
        report = artifacts.compile_in_sandbox(version)
    except ModelhostError as exc:  # the sandbox's limits (time, memory) or a model that no longer loads
        reason = f"not compiled: {exc.detail}"
    else:
        data = report.get("compiled_artifact")
        found = report.get("compiled") or {}
        reason, figures = found.get("reason", ""), found.get("figures") or {}
    fields = artifacts.compiled_fields(version, data=data, reason=reason or "not compiled", figures=figures)
    with transaction.atomic():
        updated = ModelVersion.objects.filter(id=version_id, compiled_sha256="", compiled_reason=COMPILE_PENDING_REASON).update(
            **fields
        )
        if updated:
            model_id = version.registered_model_id
            transaction.on_commit(
                lambda: serving_changed.send(sender=ModelVersion, model_id=model_id, version_id=version_id, warm=True)
            )
    if not updated and fields["compiled_artifact"]:
        artifacts.delete_stored(fields["compiled_artifact"])  # another run stored its own first
    logger.info("version %s compiled: %s", version_id, fields["compiled_reason"])
    return ModelVersion.objects.get(id=version_id).compiled_status


def reverify_compiled_version(*, version: ModelVersion) -> dict:
    """Check the version's stored compiled form again (``artifacts.recheck_compiled``); when what
    serves it changed, every process re-resolves its routes. Returns the check's outcome."""
    outcome = artifacts.recheck_compiled(version)
    if outcome["changed"]:
        serving_changed.send(
            sender=ModelVersion, model_id=version.registered_model_id, version_id=version.id, warm=outcome["passed"]
        )
    return outcome


def note_runner_crash(*, version_id: int) -> None:
    """Count a runner that stopped while predicting this version (enough of them mark it failing)."""
    ModelVersion.objects.filter(id=version_id).update(runner_crashes=F("runner_crashes") + 1, runner_last_crash_at=timezone.now())


def max_upload_bytes() -> int:
    return settings.MAX_UPLOAD_BYTES
