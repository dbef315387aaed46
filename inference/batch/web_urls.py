from django.urls import path

from inference.batch import views

urlpatterns = [
    path("orgs/<slug:org>/batch-jobs/", views.organization_batch_jobs, name="org-batch-jobs"),
    path("models/<slug:org>/<slug:model>/batch-jobs/", views.model_batch_jobs, name="model-batch-jobs"),
    path("models/<slug:org>/<slug:model>/batch-jobs/<int:job_id>/", views.batch_job, name="batch-job"),
    path("models/<slug:org>/<slug:model>/batch-jobs/<int:job_id>/cancel/", views.batch_job_cancel, name="batch-job-cancel"),
]
