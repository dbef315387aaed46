"""Web pages for the registry: an organization's models, a model's versions and releases.

Uploads have two paths. With JavaScript, the page sends the form to the REST endpoint
`POST /api/v1/models/{org}/{model}/versions` with XMLHttpRequest (session + X-CSRFToken),
which reports upload progress; without it, the same form posts to `version_upload` here.
Both call `services.upload_version`.
"""

from __future__ import annotations

import math

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from accounts.models import Organization, Role
from accounts.selectors import for_organization
from accounts.views import caller_of, confirmation_page, is_confirmed, may, organization_or_404, render_page, show_errors
from platform_site.errors import ModelhostError, NotFound
from registry import selectors, services, signatures
from registry.models import RegisteredModel, Stage, Task

# ---------------------------------------------------------------------------- forms


class ModelForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Lowercase letters, digits, hyphens; used in the endpoint URL.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    task = forms.ChoiceField(
        required=False, choices=[("", "Detect from the first version")] + list(Task.choices), help_text="Optional."
    )


class VersionUploadForm(forms.Form):
    file = forms.FileField(
        label="Model file",
        help_text=(
            "joblib, pickle, skops, or an MLflow model folder as .zip. Checked in a sandbox: only scikit-learn classes load."
        ),
        widget=forms.ClearableFileInput(attrs={"accept": ".joblib,.pkl,.pickle,.skops,.zip"}),
    )
    reference_data = forms.FileField(
        required=False, label="Reference data (CSV)", help_text="Optional: training-like rows, for the signature and drift."
    )
    input_example = forms.CharField(
        required=False,
        label="Input example (JSON)",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text='Optional, e.g. [{"sepal_length": 5.1, …}] or [[5.1, 3.5, 1.4, 0.2]]; names the columns.',
    )
    metrics = forms.CharField(
        required=False,
        label="Metrics (JSON)",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
        help_text='Optional, e.g. {"accuracy": 0.97}.',
    )
    params = forms.CharField(
        required=False,
        label="Parameters (JSON)",
        widget=forms.TextInput(attrs={"spellcheck": "false"}),
        help_text='Optional, e.g. {"C": 1.0}.',
    )
    description = forms.CharField(required=False, max_length=2000, widget=forms.TextInput())


STAGE_ACTIONS = {
    Stage.PRODUCTION: (
        "Promote to production",
        "Promote version {n} of {model} to production? It starts serving every request to {model} at once.",
    ),
    Stage.STAGING: ("Move to staging", "Move version {n} of {model} to staging?"),
    Stage.ARCHIVED: ("Archive", "Archive version {n} of {model}?"),
}

# ---------------------------------------------------------------------------- read helpers


def model_or_404(request: HttpRequest, org: str, name: str, *, min_role: str = Role.VIEWER) -> RegisteredModel:
    organization = organization_or_404(request, org, min_role=min_role)
    try:
        model = selectors.model_in(organization=organization, name=name)
    except NotFound:
        raise Http404("No such model.") from None
    model.organization = organization  # carries caller_role for the template
    return model


def _models_of(organization: Organization, query: str):
    models = for_organization(selectors.live_models(), organization).order_by("name")
    return models.filter(name__icontains=query) if query else models


def _version_rows(model: RegisteredModel) -> list[dict]:
    rows = []
    for version in selectors.versions_of(model=model):
        rows.append(
            {
                "version": version,
                "is_production": version.pk == model.production_version_id,
                "sklearn_mismatch": bool(version.sklearn_version) and version.sklearn_version != version.serving_sklearn_version,
                "columns": version.signature.get("inputs", []),
                "actions": [
                    (stage, label)
                    for stage, (label, _) in STAGE_ACTIONS.items()
                    if stage != version.stage and not (stage == Stage.STAGING and version.stage == Stage.PRODUCTION)
                ],
            }
        )
    return rows


def _model_page(
    request: HttpRequest, model: RegisteredModel, *, upload_form: VersionUploadForm | None = None, status: int = 200
) -> HttpResponse:
    releases = list(selectors.releases_of(model=model))
    latest = releases[0] if releases else None
    return render_page(
        request,
        "registry/model_detail.html",
        {
            "organization": model.organization,
            "model": model,
            "rows": _version_rows(model),
            "releases": releases,
            "can_rollback": latest is not None and latest.from_version_id is not None,
            "rollback_target": latest.from_version if latest is not None else None,
            "can_write": may(model.organization, Role.MEMBER),
            "can_delete": may(model.organization, Role.ADMIN),
            "upload_form": upload_form or VersionUploadForm(),
            "max_upload_mb": services.max_upload_bytes() // (1024 * 1024),
            "tab": "models",
            "model_tab": "versions",
        },
        status=status,
    )


# ---------------------------------------------------------------------------- pages


@login_required
def model_list(request: HttpRequest, org: str) -> HttpResponse:
    """An organization's home: its models, searchable (htmx swaps just the results)."""
    organization = organization_or_404(request, org)
    query = request.GET.get("q", "").strip()
    context = {"organization": organization, "models": _models_of(organization, query), "query": query}
    if request.htmx and not request.htmx.history_restore_request:
        response = render_page(request, "registry/_model_results.html", context)
    else:
        context.update({"form": ModelForm(), "can_write": may(organization, Role.MEMBER), "tab": "models"})
        response = render_page(request, "registry/model_list.html", context)
    # The same URL answers a fragment to htmx and a page otherwise: caches must tell them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
@require_POST
def model_create(request: HttpRequest, org: str) -> HttpResponse:
    organization = organization_or_404(request, org, min_role=Role.MEMBER)
    form = ModelForm(request.POST)
    if form.is_valid():
        try:
            model = services.create_model(caller=caller_of(request), organization=organization, **form.cleaned_data)
        except ModelhostError as exc:
            show_errors(form, exc)
        else:
            messages.success(request, f"Model {model.full_name} created: upload its first version.")
            return redirect("model-detail", org=organization.slug, model=model.name)
    context = {
        "organization": organization,
        "models": _models_of(organization, ""),
        "query": "",
        "form": form,
        "can_write": True,
        "tab": "models",
    }
    return render_page(request, "registry/model_list.html", context, status=400)


@login_required
def model_detail(request: HttpRequest, org: str, model: str) -> HttpResponse:
    return _model_page(request, model_or_404(request, org, model))


@login_required
@require_POST
def version_upload(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """The upload form's target when JavaScript is off (with it, the REST endpoint is used)."""
    registered = model_or_404(request, org, model, min_role=Role.MEMBER)
    form = VersionUploadForm(request.POST, request.FILES)
    if form.is_valid():
        data = form.cleaned_data
        try:
            version = services.upload_version(
                caller=caller_of(request),
                model=registered,
                file=data["file"],
                reference_data=data["reference_data"],
                input_example=signatures.parse_json_field(data["input_example"], field="input_example"),
                metrics=signatures.parse_json_field(data["metrics"], field="metrics"),
                params=signatures.parse_json_field(data["params"], field="params"),
                description=data["description"],
            )
        except ModelhostError as exc:
            show_errors(form, exc, field_map={"signature": "input_example"})
        else:
            messages.success(request, f"Version {version.number} uploaded and checked.")
            return redirect("model-detail", org=org, model=model)
    return _model_page(request, registered, upload_form=form, status=400)


@login_required
@require_POST
def version_stage(request: HttpRequest, org: str, model: str, number: int) -> HttpResponse:
    registered = model_or_404(request, org, model, min_role=Role.MEMBER)
    try:
        version = selectors.version_of(model=registered, number=number)
    except NotFound:
        raise Http404("No such version.") from None
    stage = request.POST.get("stage", "")
    if stage not in STAGE_ACTIONS:
        messages.error(request, "Choose staging, production or archived.")
        return redirect("model-detail", org=org, model=model)
    label, question = STAGE_ACTIONS[stage]
    if not is_confirmed(request):
        message = question.format(n=number, model=registered.full_name)
        if version.pk == registered.production_version_id:
            message += " It is the production version: the model stops serving until another version is promoted."
        return confirmation_page(
            request,
            title=label,
            message=message,
            confirm_label=label,
            cancel_url=reverse("model-detail", args=[org, model]),
            with_reason=True,
        )
    # The Compare tab's promote buttons send min_agreement: promote only if the newest replay or mirror agrees enough.
    require_replay = None
    if request.POST.get("min_agreement"):
        try:
            min_agreement = float(request.POST["min_agreement"])
        except ValueError:
            min_agreement = math.nan
        if not 0 <= min_agreement <= 1:
            messages.error(request, "The agreement to require is a share from 0 to 1.")
            return redirect("model-detail", org=org, model=model)
        require_replay = {"min_agreement": min_agreement}
    try:
        services.set_stage(
            caller=caller_of(request),
            version=version,
            stage=stage,
            reason=request.POST.get("reason", "")[:500],
            require_replay=require_replay,
        )
    except ModelhostError as exc:
        messages.error(request, exc.detail)
        # Back to the replay or mirror the refusal quotes: a page of this model's Compare tab only.
        back = request.POST.get("back", "")
        if back.startswith(f"/models/{org}/{model}/compare/"):
            return redirect(back)
    else:
        messages.success(request, f"Version {number} is now {Stage(stage).label.lower()}.")
    return redirect("model-detail", org=org, model=model)


@login_required
@require_POST
def model_rollback(request: HttpRequest, org: str, model: str) -> HttpResponse:
    registered = model_or_404(request, org, model, min_role=Role.MEMBER)
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Roll back",
            message=f"Put the previous production version of {registered.full_name} back into production, as a new release?",
            confirm_label="Roll back",
            cancel_url=reverse("model-detail", args=[org, model]),
            with_reason=True,
        )
    try:
        release = services.rollback(caller=caller_of(request), model=registered, reason=request.POST.get("reason", "")[:500])
    except ModelhostError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(
            request, f"Rolled back: release {release.number} puts version {release.to_version.number} in production."
        )
    return redirect("model-detail", org=org, model=model)


@login_required
@require_POST
def model_delete(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """Soft delete (admins and owners, as the API's DELETE): the model stops serving and its name is freed."""
    registered = model_or_404(request, org, model, min_role=Role.ADMIN)
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Delete model",
            message=f"Delete {registered.full_name}? It stops serving at once and its name becomes free; its versions are kept "
            "for the audit log.",
            confirm_label="Delete model",
            cancel_url=reverse("model-detail", args=[org, model]),
        )
    services.delete_model(caller=caller_of(request), model=registered)
    messages.success(request, f"Model {registered.full_name} deleted.")
    return redirect("org-home", org=org)
