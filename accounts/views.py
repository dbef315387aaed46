"""Web pages for accounts: sign up, log in, password, organizations, members, API keys, audit.

Thin views: they parse a form, call one service or selector, and render. The page helpers
at the top (`render_page`, `organization_or_404`, `confirmation_page`, `show_errors`) are
shared by the registry and inference pages too.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.api import registration_links, registration_sent_message
from accounts.authentication import sign_in_lockout_message
from accounts.models import ROLE_RANK, Organization, Role, Scope
from accounts.principals import Caller
from platform_site.errors import ModelhostError, NotFound
from platform_site.errors import PermissionDenied as ModelhostPermissionDenied

CURRENT_ORG_SESSION_KEY = "current_org"

# ---------------------------------------------------------------------------- page helpers


def caller_of(request: HttpRequest) -> Caller:
    return Caller(user=request.user, ip_address=request.META.get("REMOTE_ADDR") or None)


def organization_or_404(request: HttpRequest, slug: str, *, min_role: str = Role.VIEWER) -> Organization:
    """The organization if the signed-in user may see it with `min_role`: 404 when not a
    member (exactly as when it does not exist), 403 when the role is too small."""
    try:
        organization = selectors.organization_for_caller(caller=caller_of(request), slug=slug, min_role=min_role)
    except NotFound:
        raise Http404("No such organization.") from None
    except ModelhostPermissionDenied as exc:
        raise DjangoPermissionDenied(exc.detail) from None
    request.session[CURRENT_ORG_SESSION_KEY] = organization.slug
    return organization


def may(organization: Organization, role: str) -> bool:
    """Whether the caller's role in `organization` (set by organization_or_404) reaches `role`."""
    return ROLE_RANK[Role(organization.caller_role)] >= ROLE_RANK[Role(role)]


def render_page(request: HttpRequest, template: str, context: dict[str, Any] | None = None, *, status: int = 200) -> HttpResponse:
    """Render with what the layout needs: the organization switcher's memberships."""
    context = dict(context or {})
    if request.user.is_authenticated:
        context.setdefault("nav_memberships", list(selectors.memberships_of_user(user=request.user)))
        context.setdefault("nav_current_org", request.session.get(CURRENT_ORG_SESSION_KEY, ""))
    return render(request, template, context, status=status)


def show_errors(
    form: forms.Form, exc: ModelhostError, *, field_map: dict[str, str] | None = None, default_field: str | None = None
) -> None:
    """Put a service's errors next to the form's fields; the rest go on top of the form, or,
    when the errors name only things outside the form (a file's columns), next to `default_field`."""
    items = exc.errors or [{"message": exc.detail}]
    placed = False
    for item in items:
        field = (field_map or {}).get(item.get("field"), item.get("field")) or item.get("column")
        if field in form.fields:
            form.add_error(field, item["message"])
            placed = True
    if not placed:
        form.add_error(default_field if exc.errors else None, exc.detail)


def is_confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirmed") == "yes"


def confirmation_page(
    request: HttpRequest,
    *,
    title: str,
    message: str,
    confirm_label: str,
    cancel_url: str,
    with_reason: bool = False,
    dismiss_label: str = "Cancel",
) -> HttpResponse:
    """Ask before a destructive action when the browser's dialog did not (no JavaScript).

    The page re-posts the same fields with `confirmed=yes`; nothing has changed yet.
    """
    fields = [
        (name, value)
        for name, values in request.POST.lists()
        if name not in ("csrfmiddlewaretoken", "confirmed", "reason")
        for value in values
    ]
    return render_page(
        request,
        "confirm.html",
        {
            "title": title,
            "message": message,
            "confirm_label": confirm_label,
            "cancel_url": cancel_url,
            "dismiss_label": dismiss_label,
            "fields": fields,
            "with_reason": with_reason,
            "reason": request.POST.get("reason", ""),
        },
    )


# ---------------------------------------------------------------------------- forms


class EmailLoginForm(AuthenticationForm):
    username = forms.EmailField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))


class SignupForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    name = forms.CharField(required=False, max_length=150, widget=forms.TextInput(attrs={"autocomplete": "name"}))
    organization = forms.CharField(required=False, max_length=150, help_text="Your first organization; you can add more later.")
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), help_text="At least 10 characters, not too common."
    )


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=150)
    slug = forms.CharField(required=False, max_length=50, help_text="Used in URLs; leave empty to derive it from the name.")


class RenameOrganizationForm(forms.Form):
    name = forms.CharField(max_length=150)


ROLE_CHOICES = [(role.value, role.label) for role in (Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER)]


class AddMemberForm(forms.Form):
    email = forms.EmailField(help_text="They need an account already.")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


SCOPE_HELP = "predict: call models; read: see models; write: upload and promote; admin: manage members and keys."


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “checkout service”.")
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[Scope.PREDICT], help_text=SCOPE_HELP
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional; the key stops working at the start of this day (UTC).",
    )


# ---------------------------------------------------------------------------- sign up, home, password


@login_required
def home(request: HttpRequest) -> HttpResponse:
    memberships = selectors.memberships_of_user(user=request.user)
    return render_page(request, "accounts/home.html", {"memberships": memberships, "org_form": OrganizationForm()})


def signup(request: HttpRequest) -> HttpResponse:
    """The sign-up form; a valid one answers "check your inbox" whether or not the address has an account."""
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            email = services.register_user(**form.cleaned_data, **registration_links(request))
        except ModelhostError as exc:
            show_errors(form, exc)
        else:
            return render_page(request, "accounts/signup_sent.html", {"message": registration_sent_message(email)})
    return render_page(request, "accounts/signup.html", {"form": form})


def signup_confirm(request: HttpRequest, token: str) -> HttpResponse:
    """The emailed link: a button (mail scanners follow links with GET, so only a POST makes the account)."""
    if request.method == "POST":
        try:
            user, organization = services.confirm_registration(token=token, ip_address=request.META.get("REMOTE_ADDR"))
        except ModelhostError as exc:
            return render_page(request, "accounts/signup_confirm.html", {"error": exc.detail}, status=exc.status)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        request.session[CURRENT_ORG_SESSION_KEY] = organization.slug
        messages.success(
            request, f"Welcome! Your organization {organization.name} is ready: create a model to upload your first version."
        )
        return redirect("org-home", org=organization.slug)
    return render_page(request, "accounts/signup_confirm.html", {})


def sign_in_locked_out(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """What a locked-out web or admin sign-in answers (django-axes calls it): the login page
    again, 429 with Retry-After, saying the same for existing and unknown accounts."""
    form = EmailLoginForm(request, data=request.POST or None)
    form.errors.clear()
    form.add_error(None, sign_in_lockout_message())
    response = render_page(request, "accounts/login.html", {"form": form, "next": request.POST.get("next", "")}, status=429)
    response["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return response


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("home")

    def form_valid(self, form):
        response = super().form_valid(form)
        # The API's refresh tokens end with the old password, as the other sessions do.
        services.revoke_refresh_tokens(user=form.user)
        messages.success(self.request, "Your password is changed; your other sessions and API tokens are signed out.")
        return response

    def render_to_response(self, context, **response_kwargs):
        return render_page(self.request, self.template_name, context)


# ---------------------------------------------------------------------------- organizations


@login_required
def organization_switch(request: HttpRequest) -> HttpResponse:
    """The switcher's target: `/orgs/?org=slug` goes to that organization's page."""
    slug = request.GET.get("org", "")
    if not slug:
        return redirect("home")
    organization = organization_or_404(request, slug)
    return redirect("org-home", org=organization.slug)


@login_required
@require_POST
def organization_create(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST)
    if form.is_valid():
        try:
            organization = services.create_organization(caller=caller_of(request), **form.cleaned_data)
        except ModelhostError as exc:
            show_errors(form, exc)
        else:
            request.session[CURRENT_ORG_SESSION_KEY] = organization.slug
            messages.success(request, f"Organization {organization.name} created.")
            return redirect("org-home", org=organization.slug)
    memberships = selectors.memberships_of_user(user=request.user)
    return render_page(request, "accounts/home.html", {"memberships": memberships, "org_form": form}, status=400)


@login_required
def organization_settings(request: HttpRequest, org: str) -> HttpResponse:
    organization = organization_or_404(request, org, min_role=Role.ADMIN)
    form = RenameOrganizationForm(request.POST or None, initial={"name": organization.name})
    if request.method == "POST" and form.is_valid():
        try:
            services.rename_organization(caller=caller_of(request), organization=organization, name=form.cleaned_data["name"])
        except ModelhostError as exc:
            show_errors(form, exc)
        else:
            messages.success(request, "The organization is renamed.")
            return redirect("org-settings", org=organization.slug)
    return render_page(
        request,
        "accounts/org_settings.html",
        {"organization": organization, "form": form, "tab": "settings"},
        status=400 if form.errors else 200,
    )


# ---------------------------------------------------------------------------- members


@login_required
def members(request: HttpRequest, org: str) -> HttpResponse:
    organization = organization_or_404(request, org)
    form = AddMemberForm(request.POST or None)
    if request.method == "POST":
        if not may(organization, Role.ADMIN):
            raise DjangoPermissionDenied("Managing members needs the admin or owner role.")
        if form.is_valid():
            try:
                membership = services.add_member(caller=caller_of(request), organization=organization, **form.cleaned_data)
            except ModelhostError as exc:
                show_errors(form, exc)
            else:
                messages.success(request, f"{membership.user.email} is now a {membership.get_role_display().lower()}.")
                return redirect("org-members", org=organization.slug)
    return render_page(
        request,
        "accounts/members.html",
        {
            "organization": organization,
            "memberships": selectors.members_of(organization=organization),
            "form": form,
            "role_choices": ROLE_CHOICES,
            "can_manage": may(organization, Role.ADMIN),
            "tab": "members",
        },
        status=400 if form.errors else 200,
    )


def _service_refusal(request: HttpRequest, exc: ModelhostError) -> None:
    if isinstance(exc, ModelhostPermissionDenied):
        raise DjangoPermissionDenied(exc.detail) from None
    messages.error(request, exc.detail)


@login_required
@require_POST
def member_role(request: HttpRequest, org: str, member_id: int) -> HttpResponse:
    organization = organization_or_404(request, org, min_role=Role.ADMIN)
    membership = _membership_or_404(organization, member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of viewer, member, admin or owner.")
        return redirect("org-members", org=organization.slug)
    role = form.cleaned_data["role"]
    if role == membership.role:
        return redirect("org-members", org=organization.slug)
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Change role",
            message=f"Make {membership.user.email} a {Role(role).label.lower()} (now {membership.get_role_display().lower()})?",
            confirm_label="Change role",
            cancel_url=reverse("org-members", args=[organization.slug]),
        )
    try:
        services.change_member_role(caller=caller_of(request), membership=membership, role=role)
    except ModelhostError as exc:
        _service_refusal(request, exc)
    else:
        messages.success(request, f"{membership.user.email} is now a {Role(role).label.lower()}.")
    return redirect("org-members", org=organization.slug)


@login_required
@require_POST
def member_remove(request: HttpRequest, org: str, member_id: int) -> HttpResponse:
    organization = organization_or_404(request, org)
    membership = _membership_or_404(organization, member_id)
    leaving = membership.user_id == request.user.pk
    if not leaving and not may(organization, Role.ADMIN):
        raise DjangoPermissionDenied("Managing members needs the admin or owner role.")
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Leave organization" if leaving else "Remove member",
            message=f"Leave {organization.name}? You lose access to its models and keys."
            if leaving
            else f"Remove {membership.user.email} from {organization.name}? They lose access at once.",
            confirm_label="Leave" if leaving else "Remove",
            cancel_url=reverse("org-members", args=[organization.slug]),
        )
    try:
        services.remove_member(caller=caller_of(request), membership=membership)
    except ModelhostError as exc:
        _service_refusal(request, exc)
        return redirect("org-members", org=organization.slug)
    if leaving:
        request.session.pop(CURRENT_ORG_SESSION_KEY, None)
        messages.success(request, f"You left {organization.name}.")
        return redirect("home")
    messages.success(request, f"{membership.user.email} was removed.")
    return redirect("org-members", org=organization.slug)


def _membership_or_404(organization: Organization, member_id: int):
    try:
        return selectors.membership_in(organization=organization, membership_id=member_id)
    except NotFound:
        raise Http404("No such member.") from None


# ---------------------------------------------------------------------------- API keys


def _expiry(day) -> datetime | None:
    return None if day is None else timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


@never_cache
@login_required
def api_keys(request: HttpRequest, org: str) -> HttpResponse:
    """List and create keys. A new key's secret is rendered once, in the POST's own answer
    (never stored, never cached), and cannot be shown again."""
    organization = organization_or_404(request, org)
    form = ApiKeyForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            key, plaintext = services.create_api_key(
                caller=caller_of(request),
                organization=organization,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_at=_expiry(form.cleaned_data["expires_on"]),
            )
        except ModelhostError as exc:
            if isinstance(exc, ModelhostPermissionDenied) and not may(organization, Role.MEMBER):
                raise DjangoPermissionDenied(exc.detail) from None
            show_errors(form, exc, field_map={"expires_at": "expires_on"})
        else:
            created = {"key": key, "plaintext": plaintext}
            form = ApiKeyForm()
    return render_page(
        request,
        "accounts/api_keys.html",
        {
            "organization": organization,
            "keys": selectors.api_keys_of(organization=organization),
            "form": form,
            "created": created,
            "can_create": may(organization, Role.MEMBER),
            "can_revoke_any": may(organization, Role.ADMIN),
            "cache_seconds": int(settings.API_KEY_CACHE_SECONDS),
            "now": timezone.now(),
            "tab": "keys",
        },
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, org: str, key_id: int) -> HttpResponse:
    organization = organization_or_404(request, org, min_role=Role.MEMBER)
    try:
        key = selectors.api_key_in(organization=organization, key_id=key_id)
    except NotFound:
        raise Http404("No such key.") from None
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Revoke API key",
            message=f"Revoke “{key.name}” (mh_{key.prefix}_…)? Programs using it stop working within "
            f"{int(settings.API_KEY_CACHE_SECONDS)} seconds. This cannot be undone.",
            confirm_label="Revoke key",
            cancel_url=reverse("org-api-keys", args=[organization.slug]),
        )
    try:
        services.revoke_api_key(caller=caller_of(request), key=key)
    except ModelhostError as exc:
        _service_refusal(request, exc)
    else:
        messages.success(request, f"The key “{key.name}” is revoked.")
    return redirect("org-api-keys", org=organization.slug)


# ---------------------------------------------------------------------------- audit log

AUDIT_PAGE_SIZE = 50


@login_required
def audit_log(request: HttpRequest, org: str) -> HttpResponse:
    organization = organization_or_404(request, org, min_role=Role.ADMIN)
    page = Paginator(selectors.audit_events_of(organization=organization), AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    return render_page(request, "accounts/audit_log.html", {"organization": organization, "page": page, "tab": "audit"})
