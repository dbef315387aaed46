"""Web pages for batch jobs: a model's jobs and the form to submit one, an organization's jobs,
and a job's page with a progress bar that htmx refreshes until the job ends.

The same services and selectors as the REST API, with the same rules: any member reads, the
member role submits and cancels, another organization's job is missing. The result is
downloaded from the API's own endpoint (`GET /api/v1/batch-jobs/{id}/result`) with the session.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from accounts.models import Role
from accounts.selectors import for_organization
from accounts.views import caller_of, confirmation_page, is_confirmed, may, organization_or_404, render_page, show_errors
from inference.batch import selectors, services
from inference.models import BatchJob
from platform_site.errors import ModelhostError, NotFound
from registry import selectors as registry_selectors
from registry.models import RegisteredModel
from registry.views import model_or_404

JOBS_PAGE_SIZE = 50


class BatchJobForm(forms.Form):
    file = forms.FileField(
        label="Rows file",
        help_text="CSV with a header row, or JSON lines (one object or list per line); gzip accepted. Columns as in the model's "
        "signature.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,.jsonl,.ndjson,.json,.txt,.gz"}),
    )
    version = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Version")
    probabilities = forms.BooleanField(required=False, label="Add a probability column per class")
    on_error = forms.ChoiceField(choices=BatchJob.OnError.choices, initial=BatchJob.OnError.FAIL, label="When a row is bad")

    def __init__(self, *args, model: RegisteredModel, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        production = model.production_version
        default = (
            f"The production version (v{production.number})" if production else "The production version (none yet: choose one)"
        )
        self.fields["version"].choices = [("", default)] + [
            (v.number, f"v{v.number} · {v.get_stage_display().lower()}") for v in registry_selectors.versions_of(model=model)
        ]


def _job_or_404(request: HttpRequest, org: str, model: str, job_id: int, *, min_role: str = Role.VIEWER) -> BatchJob:
    """The model's job if the caller may see it (404 otherwise, as for a missing job); 403 below `min_role`."""
    registered = model_or_404(request, org, model, min_role=min_role)
    try:
        job = selectors.job_for_caller(caller=caller_of(request), job_id=job_id)
    except NotFound:
        raise Http404("No such batch job.") from None
    if job.registered_model_id != registered.id:
        raise Http404("No such batch job.")
    job.registered_model = registered  # carries the organization with caller_role
    return job


def _page_of(request: HttpRequest, jobs):
    return Paginator(jobs, JOBS_PAGE_SIZE).get_page(request.GET.get("page"))


@login_required
def model_batch_jobs(request: HttpRequest, org: str, model: str) -> HttpResponse:
    """A model's jobs, newest first, and (for members) the form that submits one."""
    registered = model_or_404(request, org, model, min_role=Role.MEMBER if request.method == "POST" else Role.VIEWER)
    form = BatchJobForm(request.POST or None, request.FILES or None, model=registered)
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                submission = services.submit_job(
                    caller=caller_of(request),
                    model=registered,
                    upload=data["file"],
                    version_number=data["version"],
                    want_proba=data["probabilities"],
                    on_error=data["on_error"],
                )
            except ModelhostError as exc:
                show_errors(form, exc, default_field="file")
            else:
                job = submission.job
                messages.success(
                    request, f"Batch job {job.id} is queued: {job.input_filename or 'the file'} against v{job.version.number}."
                )
                return redirect("batch-job", org=org, model=model, job_id=job.id)
    return render_page(
        request,
        "inference/batch_jobs.html",
        {
            "organization": registered.organization,
            "model": registered,
            "page": _page_of(request, selectors.jobs_of_model(model=registered)),
            "form": form,
            "can_submit": may(registered.organization, Role.MEMBER),
            "max_file_mb": selectors.limits_for(organization=registered.organization).max_file_bytes // (1024 * 1024),
            "tab": "models",
            "model_tab": "batch",
        },
        status=400 if form.errors else 200,
    )


@login_required
def organization_batch_jobs(request: HttpRequest, org: str) -> HttpResponse:
    """Every job of the organization, newest first, whatever the model."""
    organization = organization_or_404(request, org)
    jobs = for_organization(selectors.jobs_for_caller(caller=caller_of(request)), organization)
    return render_page(
        request, "inference/org_batch_jobs.html", {"organization": organization, "page": _page_of(request, jobs), "tab": "batch"}
    )


@login_required
def batch_job(request: HttpRequest, org: str, model: str, job_id: int) -> HttpResponse:
    """The job's page; to htmx, only its status block, which stops asking once the job has ended."""
    job = _job_or_404(request, org, model, job_id)
    organization = job.registered_model.organization
    context = {
        "organization": organization,
        "model": job.registered_model,
        "job": job,
        "percent": round(job.progress * 100),
        "can_cancel": may(organization, Role.MEMBER) and not job.is_finished,
        "result_url": reverse("api-batch-job-result", args=[job.id]) if job.status == BatchJob.Status.SUCCEEDED else None,
        "poll_seconds": 1,
    }
    if request.htmx and not request.htmx.history_restore_request:
        response = render_page(request, "inference/_batch_job_status.html", context)
    else:
        context.update({"tab": "models", "model_tab": "batch"})
        response = render_page(request, "inference/batch_job.html", context)
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
@require_POST
def batch_job_cancel(request: HttpRequest, org: str, model: str, job_id: int) -> HttpResponse:
    job = _job_or_404(request, org, model, job_id, min_role=Role.MEMBER)
    back = reverse("batch-job", args=[org, model, job.id])
    if not is_confirmed(request):
        return confirmation_page(
            request,
            title="Cancel batch job",
            message=f"Cancel batch job {job.id} of {job.registered_model.full_name}? Rows not scored yet are dropped and there "
            "will be no result. This cannot be undone.",
            confirm_label="Cancel job",
            cancel_url=back,
            dismiss_label="Keep it running",
        )
    try:
        services.cancel_job(caller=caller_of(request), job=job)
    except ModelhostError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Batch job {job.id} is cancelled.")
    return redirect(back)
