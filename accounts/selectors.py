"""Reads for accounts, and the one place a caller's organization is resolved and checked."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import ROLE_RANK, ApiKey, AuditEvent, Membership, Organization, Role
from accounts.principals import Caller
from platform_site.errors import NotFound, PermissionDenied

# The API key scope that stands in for each role when a program calls.
SCOPE_FOR_ROLE = {Role.VIEWER: "read", Role.MEMBER: "write", Role.ADMIN: "admin", Role.OWNER: None}


def for_organization(queryset: QuerySet, organization: Organization) -> QuerySet:
    """Filter any tenant-owned queryset to one organization.

    Each tenant model names its path to the organization in `TENANT_PATH`
    (e.g. `registered_model__organization`); the default is `organization`.
    """
    path = getattr(queryset.model, "TENANT_PATH", "organization")
    return queryset.filter(**{path: organization})


def role_of(*, caller: Caller, organization: Organization) -> str | None:
    if caller.api_key is not None:
        return None
    membership = Membership.objects.filter(user=caller.user, organization=organization).only("role").first()
    return membership.role if membership else None


def organization_for_caller(*, caller: Caller, slug: str, min_role: str = Role.VIEWER) -> Organization:
    """The organization `slug` if the caller belongs to it with at least `min_role`.

    Not belonging answers NotFound, exactly like a missing organization; belonging with
    too small a role (or a key without the scope) answers PermissionDenied.
    """
    if caller.api_key is not None:
        if caller.api_key.organization_slug != slug:
            raise NotFound()
        scope = SCOPE_FOR_ROLE[Role(min_role)]
        if scope is None or not caller.api_key.has_scope(scope):
            raise PermissionDenied(f"This API key lacks the '{scope or 'owner'}' scope needed here.")
        return Organization.objects.get(id=caller.api_key.organization_id)
    if caller.user is None or not caller.user.is_authenticated:
        raise NotFound()
    membership = Membership.objects.select_related("organization").filter(user=caller.user, organization__slug=slug).first()
    if membership is None:
        raise NotFound()
    if ROLE_RANK[Role(membership.role)] < ROLE_RANK[Role(min_role)]:
        raise PermissionDenied(f"This needs the {min_role} role; you are {membership.role}.")
    organization = membership.organization
    organization.caller_role = membership.role
    return organization


def organizations_for_caller(*, caller: Caller, min_role: str | None = None) -> QuerySet:
    """The organizations the caller belongs to.

    With `min_role`, the rule of `organization_for_caller` applies to lists too: a person's
    organizations are those where their role reaches it, and an API key without the scope
    that stands in for it is PermissionDenied (a list must not show what a read refuses).
    """
    if caller.api_key is not None:
        if min_role is not None:
            scope = SCOPE_FOR_ROLE[Role(min_role)]
            if scope is None or not caller.api_key.has_scope(scope):
                raise PermissionDenied(f"This API key lacks the '{scope or 'owner'}' scope needed here.")
        return Organization.objects.filter(id=caller.api_key.organization_id)
    memberships = Membership.objects.filter(user=caller.user)
    if min_role is not None:
        memberships = memberships.filter(role__in=[role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[Role(min_role)]])
    return Organization.objects.filter(id__in=memberships.values("organization_id"))


def memberships_of_user(*, user) -> QuerySet:
    return Membership.objects.filter(user=user).select_related("organization").order_by("organization__slug")


def members_of(*, organization: Organization) -> QuerySet:
    return for_organization(Membership.objects.select_related("user"), organization).order_by("created_at", "id")


def membership_in(*, organization: Organization, membership_id: int) -> Membership:
    membership = members_of(organization=organization).filter(id=membership_id).first()
    if membership is None:
        raise NotFound()
    return membership


def api_keys_of(*, organization: Organization) -> QuerySet:
    return for_organization(ApiKey.objects.select_related("created_by"), organization)


def api_key_in(*, organization: Organization, key_id: int) -> ApiKey:
    key = api_keys_of(organization=organization).filter(id=key_id).first()
    if key is None:
        raise NotFound()
    return key


def audit_events_of(*, organization: Organization) -> QuerySet:
    return for_organization(AuditEvent.objects.select_related("actor", "actor_api_key"), organization)


def owner_count(*, organization: Organization) -> int:
    return for_organization(Membership.objects, organization).filter(role=Role.OWNER).count()
