"""Reads for batch jobs: who may see or start them, the jobs themselves, the limits that apply."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import QuerySet

from accounts.models import ROLE_RANK, Organization, Role
from accounts.principals import ApiKeyPrincipal, Caller
from accounts.selectors import for_organization, organization_for_caller, organizations_for_caller, role_of
from inference.models import BatchJob, BatchLimits
from platform_site.errors import NotFound, PermissionDenied
from registry.models import RegisteredModel

ACTIVE = (BatchJob.Status.QUEUED, BatchJob.Status.RUNNING)


@dataclass(frozen=True)
class EffectiveLimits:
    max_concurrent_jobs: int
    max_file_bytes: int
    max_rows: int


def limits_for(*, organization: Organization) -> EffectiveLimits:
    """The organization's batch limits: its own where an operator set them, else the platform's."""
    own = BatchLimits.objects.filter(organization=organization).first()

    def pick(field: str, setting: str, default: int) -> int:
        value = getattr(own, field, None) if own is not None else None
        return int(value) if value is not None else int(getattr(settings, setting, default))

    return EffectiveLimits(
        max_concurrent_jobs=pick("max_concurrent_jobs", "BATCH_MAX_CONCURRENT_JOBS", 4),
        max_file_bytes=pick("max_file_bytes", "BATCH_MAX_FILE_BYTES", 1024 * 1024 * 1024),
        max_rows=pick("max_rows", "BATCH_MAX_ROWS", 10_000_000),
    )


def active_job_count(*, organization: Organization) -> int:
    return for_organization(BatchJob.objects, organization).filter(status__in=ACTIVE).count()


def _check_key_scope(key: ApiKeyPrincipal, *, write: bool) -> None:
    # A batch job is a prediction: programs start them with the same scope as /predict.
    if write and not key.has_scope("predict"):
        raise PermissionDenied("Starting or cancelling a batch job needs the 'predict' scope.")
    if not write and not (key.has_scope("predict") or key.has_scope("read")):
        raise PermissionDenied("Reading batch jobs needs the 'predict' or 'read' scope.")


def batch_organization(*, caller: Caller, slug: str, write: bool) -> Organization:
    """The organization `slug` if the caller may read (or, with `write`, start) its batch jobs.

    Not belonging answers NotFound, as for a missing organization. People need the member
    role to start or cancel a job and any role to read; keys need 'predict' (or 'read' to read).
    """
    if caller.api_key is not None:
        if caller.api_key.organization_slug != slug:
            raise NotFound()
        _check_key_scope(caller.api_key, write=write)
        return Organization.objects.get(id=caller.api_key.organization_id)
    return organization_for_caller(caller=caller, slug=slug, min_role=Role.MEMBER if write else Role.VIEWER)


def jobs_for_caller(*, caller: Caller) -> QuerySet:
    """Every job of the caller's organizations, newest first."""
    if caller.api_key is not None:
        _check_key_scope(caller.api_key, write=False)
    return _with_relations(BatchJob.objects.filter(organization__in=organizations_for_caller(caller=caller)))


def jobs_of_model(*, model: RegisteredModel) -> QuerySet:
    return _with_relations(for_organization(BatchJob.objects, model.organization).filter(registered_model=model))


def job_for_caller(*, caller: Caller, job_id: int, write: bool = False) -> BatchJob:
    """The job if it belongs to one of the caller's organizations (else NotFound, as if missing)."""
    job = (
        _with_relations(BatchJob.objects.filter(organization__in=organizations_for_caller(caller=caller)))
        .filter(id=job_id)
        .first()
    )
    if job is None:
        raise NotFound()
    if caller.api_key is not None:
        _check_key_scope(caller.api_key, write=write)
    elif write:
        role = role_of(caller=caller, organization=job.organization)
        if role is None or ROLE_RANK[Role(role)] < ROLE_RANK[Role.MEMBER]:
            raise PermissionDenied(f"This needs the member role; you are {role}.")
    return job


def _with_relations(queryset: QuerySet) -> QuerySet:
    return queryset.select_related("organization", "registered_model__organization", "version", "created_by")
