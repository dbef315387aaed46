from django.urls import path

from inference.batch import api

urlpatterns = [
    path("models/<slug:org>/<slug:model>/batch-jobs", api.ModelBatchJobListApi.as_view(), name="api-model-batch-jobs"),
    path("batch-jobs", api.BatchJobListApi.as_view(), name="api-batch-jobs"),
    path("batch-jobs/<int:job_id>", api.BatchJobDetailApi.as_view(), name="api-batch-job"),
    path("batch-jobs/<int:job_id>/result", api.BatchJobResultApi.as_view(), name="api-batch-job-result"),
    path("batch-jobs/<int:job_id>/cancel", api.BatchJobCancelApi.as_view(), name="api-batch-job-cancel"),
]
