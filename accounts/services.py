"""Writes and rules for accounts: registration, organizations, memberships, API keys, audit."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify
from redis.exceptions import RedisError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken, TokenError

from accounts import selectors
from accounts.authentication import forget_cached_keys
from accounts.keys import generate_key, hash_key
from accounts.models import ROLE_RANK, ApiKey, AuditEvent, Membership, Organization, PendingRegistration, Role, Scope, User
from accounts.principals import Caller
from platform_site.errors import Conflict, InvalidInput, PermissionDenied, ServiceUnavailable, Unauthenticated

RESERVED_SLUGS = {"api", "admin", "static", "v2", "new", "me", "orgs", "models", "login", "logout", "signup"}


def record_audit_event(
    *,
    organization: Organization,
    caller: Caller | None,
    action: str,
    target: Any = None,
    data: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        organization=organization,
        actor=caller.person if caller else None,
        actor_api_key_id=caller.api_key.id if caller and caller.api_key else None,
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        data=data or {},
        ip_address=caller.ip_address if caller else None,
    )


def _check_password(password: str, *, user: User | None = None, field: str = "password") -> None:
    try:
        validate_password(password, user=user)
    except DjangoValidationError as exc:
        raise InvalidInput(
            "The password is too weak: " + " ".join(exc.messages),
            errors=[{"field": field, "message": message} for message in exc.messages],
        ) from None


def _unique_slug(base: str) -> str:
    base = (slugify(base) or "org")[:40].strip("-") or "org"
    if base in RESERVED_SLUGS:
        base = f"{base}-org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _check_slug(slug: str) -> None:
    if slug != slugify(slug) or not slug or len(slug) > 50:
        raise InvalidInput(
            f"'{slug}' is not a valid organization slug: use lowercase letters, digits and hyphens.",
            errors=[{"field": "slug", "message": "use lowercase letters, digits and hyphens (at most 50)"}],
        )
    if slug in RESERVED_SLUGS:
        raise InvalidInput(f"'{slug}' is reserved.", errors=[{"field": "slug", "message": "this slug is reserved"}])
    if Organization.objects.filter(slug=slug).exists():
        raise Conflict(f"The organization slug '{slug}' is taken.", errors=[{"field": "slug", "message": "already taken"}])


@transaction.atomic
def register_user(
    *, email: str, password: str, name: str = "", organization: str = "", link_for: Callable[[str], str], login_url: str
) -> str:
    """Ask for an account: email the address a confirmation link, or, when it already has an
    account, a note saying so. Returns the normalized email.

    The caller learns nothing about which happened: both paths check the password, hash it,
    and send one message (at most one per address per REGISTRATION_EMAIL_INTERVAL_SECONDS,
    so the form cannot flood an inbox). The account is made only by `confirm_registration`.
    """
    email = User.objects.normalize_email(email.strip()).lower()
    _check_password(password, user=User(email=email, name=name))
    hashed = make_password(password)  # on both paths: a taken address answers no faster
    if not _may_email(email):
        return email
    if User.objects.filter(email__iexact=email).exists():
        _send(
            to=email,
            subject="You already have a Modelhost account",
            body=(
                f"Someone, probably you, tried to sign up for Modelhost with {email}, which already has an account.\n\n"
                f"Log in at {login_url}\n\nIf it was not you, you can ignore this message: nothing has changed."
            ),
        )
        return email
    token = secrets.token_urlsafe(32)
    PendingRegistration.objects.create(
        email=email, name=name, organization=organization, password=hashed, token_hash=hashlib.sha256(token.encode()).hexdigest()
    )
    _send(
        to=email,
        subject="Confirm your Modelhost account",
        body=(
            f"Open this link to finish signing up for Modelhost with {email}:\n\n{link_for(token)}\n\n"
            f"It works for {settings.REGISTRATION_CONFIRM_HOURS} hours. If you did not sign up, ignore this message: "
            f"no account is made without it."
        ),
    )
    return email


def _may_email(email: str) -> bool:
    key = "registration-mail:" + hashlib.sha256(email.encode()).hexdigest()
    try:
        return cache.add(key, 1, timeout=settings.REGISTRATION_EMAIL_INTERVAL_SECONDS)
    except RedisError:  # Redis down: send, rather than lock everyone out of signing up
        return True


def _send(*, to: str, subject: str, body: str) -> None:
    try:
        send_mail(subject, body, None, [to])
    except OSError as exc:  # SMTP refused or unreachable
        raise ServiceUnavailable("The confirmation email could not be sent; try again in a few minutes.") from exc


def confirm_registration(*, token: str, ip_address: str | None = None) -> tuple[User, Organization]:
    """Make the account and its first organization from a sign-up's emailed token (once)."""
    oldest = timezone.now() - timedelta(hours=settings.REGISTRATION_CONFIRM_HOURS)
    pending = PendingRegistration.objects.filter(
        token_hash=hashlib.sha256(token.encode()).hexdigest(), created_at__gte=oldest
    ).first()
    if pending is None:
        raise InvalidInput(
            "This confirmation link is not valid or has expired; sign up again to get a new one.",
            errors=[{"field": "token", "message": "not valid or expired"}],
        )
    try:
        with transaction.atomic():
            PendingRegistration.objects.filter(email__iexact=pending.email).delete()
            user = User.objects.create(email=pending.email, name=pending.name, password=pending.password)
    except IntegrityError:  # the address was confirmed through another link meanwhile
        raise Conflict(
            f"The account of {pending.email} is already confirmed; log in.",
            errors=[{"field": "token", "message": "already used"}],
        ) from None
    org_name = pending.organization.strip() or (f"{pending.name}'s organization" if pending.name else pending.email.split("@")[0])
    org = create_organization(caller=Caller(user=user, ip_address=ip_address), name=org_name)
    return user, org


def revoke_refresh_tokens(*, user: User) -> int:
    """Blacklist every unexpired refresh token of `user`; returns how many were live.

    Access tokens already issued live out ACCESS_TOKEN_LIFETIME, except after a password
    change (CHECK_REVOKE_TOKEN ties them to the password hash).
    """
    live = OutstandingToken.objects.filter(user=user, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True)
    # ignore_conflicts: a refresh racing this may blacklist the same token first.
    return len(BlacklistedToken.objects.bulk_create([BlacklistedToken(token=token) for token in live], ignore_conflicts=True))


def log_out_refresh_token(*, refresh: str, everywhere: bool = False) -> None:
    """Blacklist a refresh token (and, `everywhere`, every other one of its user).

    Holding a valid refresh token is the authority: it could mint access tokens anyway.
    """
    try:
        token = RefreshToken(refresh)
    except TokenError as exc:
        raise Unauthenticated(f"The refresh token is not valid: {exc}.") from None
    token.blacklist()
    if everywhere:
        user = User.objects.filter(pk=token.payload.get(jwt_settings.USER_ID_CLAIM)).first()
        if user is not None:
            revoke_refresh_tokens(user=user)


@transaction.atomic
def change_password(*, user: User, old_password: str, new_password: str) -> User:
    """Set a new password after checking the old one; ends every refresh token of the user."""
    if not user.check_password(old_password):
        raise InvalidInput("The current password is not correct.", errors=[{"field": "old_password", "message": "not correct"}])
    _check_password(new_password, user=user, field="new_password")
    user.set_password(new_password)
    user.save(update_fields=["password"])
    revoke_refresh_tokens(user=user)
    return user


@transaction.atomic
def create_organization(*, caller: Caller, name: str, slug: str = "") -> Organization:
    if caller.person is None:
        raise PermissionDenied("Organizations are created by people, not API keys.")
    name = name.strip()
    if not name:
        raise InvalidInput("The organization needs a name.", errors=[{"field": "name", "message": "required"}])
    if slug:
        _check_slug(slug)
    else:
        slug = _unique_slug(name)
    org = Organization.objects.create(slug=slug, name=name)
    membership = Membership.objects.create(user=caller.person, organization=org, role=Role.OWNER)
    record_audit_event(organization=org, caller=caller, action="organization.created", target=org, data={"name": name})
    record_audit_event(
        organization=org,
        caller=caller,
        action="member.added",
        target=membership,
        data={"email": caller.person.email, "role": Role.OWNER},
    )
    return org


@transaction.atomic
def rename_organization(*, caller: Caller, organization: Organization, name: str) -> Organization:
    name = name.strip()
    if not name:
        raise InvalidInput("The organization needs a name.", errors=[{"field": "name", "message": "required"}])
    old = organization.name
    organization.name = name
    organization.save(update_fields=["name"])
    record_audit_event(
        organization=organization,
        caller=caller,
        action="organization.renamed",
        target=organization,
        data={"from": old, "to": name},
    )
    return organization


def _caller_rank(*, caller: Caller, organization: Organization) -> int:
    if caller.api_key is not None:
        return ROLE_RANK[Role.ADMIN] if caller.api_key.has_scope("admin") else 0
    role = selectors.role_of(caller=caller, organization=organization)
    return ROLE_RANK[Role(role)] if role else 0


def _require_may_manage(*, caller: Caller, organization: Organization, role: str) -> None:
    """Admins manage members up to admin; only owners grant, change or remove owner."""
    rank = _caller_rank(caller=caller, organization=organization)
    if rank < ROLE_RANK[Role.ADMIN]:
        raise PermissionDenied("Managing members needs the admin or owner role.")
    if role == Role.OWNER and rank < ROLE_RANK[Role.OWNER]:
        raise PermissionDenied("Only an owner can add, change or remove an owner.")


def _check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput(
            f"'{role}' is not a role; choose one of owner, admin, member, viewer.",
            errors=[{"field": "role", "message": "choose one of owner, admin, member, viewer"}],
        ) from None


@transaction.atomic
def add_member(*, caller: Caller, organization: Organization, email: str, role: str) -> Membership:
    role = _check_role(role)
    _require_may_manage(caller=caller, organization=organization, role=role)
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        raise InvalidInput(
            f"No account uses the email {email}; ask them to register first.",
            errors=[{"field": "email", "message": "no account with this email"}],
        )
    if Membership.objects.filter(user=user, organization=organization).exists():
        raise Conflict(f"{user.email} is already a member.", errors=[{"field": "email", "message": "already a member"}])
    membership = Membership.objects.create(user=user, organization=organization, role=role)
    record_audit_event(
        organization=organization,
        caller=caller,
        action="member.added",
        target=membership,
        data={"email": user.email, "role": role},
    )
    return membership


@transaction.atomic
def change_member_role(*, caller: Caller, membership: Membership, role: str) -> Membership:
    role = _check_role(role)
    organization = membership.organization
    # Changing an owner, or making someone owner, both need an owner.
    _require_may_manage(
        caller=caller, organization=organization, role=Role.OWNER if Role.OWNER in (role, membership.role) else role
    )
    # Lock the organization's owner rows so two demotions cannot both pass the last-owner check.
    owners = list(
        Membership.objects.select_for_update().filter(organization=organization, role=Role.OWNER).values_list("id", flat=True)
    )
    if membership.role == Role.OWNER and role != Role.OWNER and owners == [membership.id]:
        raise Conflict("The last owner cannot be demoted; make someone else owner first.")
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    record_audit_event(
        organization=organization,
        caller=caller,
        action="member.role_changed",
        target=membership,
        data={"email": membership.user.email, "from": old, "to": role},
    )
    return membership


@transaction.atomic
def remove_member(*, caller: Caller, membership: Membership) -> None:
    organization = membership.organization
    leaving_self = caller.person is not None and caller.person.pk == membership.user_id
    if not leaving_self:
        _require_may_manage(caller=caller, organization=organization, role=membership.role)
    owners = list(
        Membership.objects.select_for_update().filter(organization=organization, role=Role.OWNER).values_list("id", flat=True)
    )
    if membership.role == Role.OWNER and owners == [membership.id]:
        raise Conflict("The last owner cannot leave or be removed; make someone else owner first.")
    record_audit_event(
        organization=organization,
        caller=caller,
        action="member.left" if leaving_self else "member.removed",
        target=membership,
        data={"email": membership.user.email, "role": membership.role},
    )
    membership.delete()


def _check_scopes(scopes: list[str]) -> list[str]:
    valid = {choice.value for choice in Scope}
    if not scopes:
        raise InvalidInput(
            "Choose at least one scope.",
            errors=[{"field": "scopes", "message": "choose at least one of predict, read, write, admin"}],
        )
    unknown = [scope for scope in scopes if scope not in valid]
    if unknown:
        raise InvalidInput(
            f"Unknown scope(s): {', '.join(map(str, unknown))}; choose from predict, read, write, admin.",
            errors=[{"field": "scopes", "message": f"unknown scope {scope}"} for scope in unknown],
        )
    return sorted(set(scopes))


@transaction.atomic
def create_api_key(
    *, caller: Caller, organization: Organization, name: str, scopes: list[str], expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns it and its plaintext, which is never shown again."""
    scopes = _check_scopes(scopes)
    rank = _caller_rank(caller=caller, organization=organization)
    if rank < ROLE_RANK[Role.MEMBER]:
        raise PermissionDenied("Creating API keys needs the member role or higher; viewers cannot.")
    if Scope.ADMIN in scopes and rank < ROLE_RANK[Role.ADMIN]:
        raise PermissionDenied("Only admins and owners can create keys with the admin scope.")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput(
            "expires_at must be in the future.", errors=[{"field": "expires_at", "message": "must be in the future"}]
        )
    name = name.strip()
    if not name:
        raise InvalidInput("The key needs a name.", errors=[{"field": "name", "message": "required"}])
    prefix, plaintext = generate_key()
    key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=prefix,
        hashed_key=hash_key(plaintext),
        scopes=scopes,
        expires_at=expires_at,
        created_by=caller.person,
    )
    record_audit_event(
        organization=organization,
        caller=caller,
        action="api_key.created",
        target=key,
        data={"name": name, "prefix": prefix, "scopes": scopes, "expires_at": expires_at.isoformat() if expires_at else None},
    )
    return key, plaintext


@transaction.atomic
def revoke_api_key(*, caller: Caller, key: ApiKey) -> ApiKey:
    """Revoke a key. This process forgets it now; the others within API_KEY_CACHE_SECONDS."""
    organization = key.organization
    rank = _caller_rank(caller=caller, organization=organization)
    own_key = caller.person is not None and key.created_by_id == caller.person.pk
    if rank < ROLE_RANK[Role.ADMIN] and not (own_key and rank >= ROLE_RANK[Role.MEMBER]):
        raise PermissionDenied("Members revoke their own keys; revoking others' needs admin.")
    if key.revoked_at is not None:
        raise Conflict(f"The key mh_{key.prefix}_… was already revoked.")
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    record_audit_event(
        organization=organization,
        caller=caller,
        action="api_key.revoked",
        target=key,
        data={"name": key.name, "prefix": key.prefix},
    )
    # Forget now and again after commit, so no request in between re-caches the live key.
    forget_cached_keys()
    transaction.on_commit(forget_cached_keys)
    return key
