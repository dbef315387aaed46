from django.contrib import admin, messages

from accounts.principals import Caller
from inference.models import BatchChunk, BatchJob, BatchLimits, Mirror


class BatchChunkInline(admin.TabularInline):
    model = BatchChunk
    extra = 0
    fields = ["index", "first_row", "rows", "is_done", "rows_failed", "attempts", "worker", "started_at", "finished_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "organization",
        "registered_model",
        "version",
        "status",
        "rows_done",
        "rows_total",
        "rows_failed",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "input_format", "on_error", "webhook_status", "organization"]
    search_fields = ["id", "organization__slug", "registered_model__name", "input_filename"]
    readonly_fields = [field.name for field in BatchJob._meta.fields if field.name != "webhook_secret"]
    exclude = ["webhook_secret"]
    inlines = [BatchChunkInline]
    actions = ["cancel_jobs"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Cancel the selected queued or running jobs")
    def cancel_jobs(self, request, queryset) -> None:
        from inference.batch import services

        cancelled = 0
        for job in queryset.filter(status__in=[BatchJob.Status.QUEUED, BatchJob.Status.RUNNING]):
            services.cancel_job(caller=Caller(user=request.user), job=job)
            cancelled += 1
        self.message_user(request, f"Cancelled {cancelled} job(s).", messages.SUCCESS)


@admin.register(BatchLimits)
class BatchLimitsAdmin(admin.ModelAdmin):
    list_display = ["organization", "max_concurrent_jobs", "max_file_bytes", "max_rows"]
    search_fields = ["organization__slug"]


@admin.register(Mirror)
class MirrorAdmin(admin.ModelAdmin):
    """Live mirrors, read-only (owners start and stop them); the stop action for an operator who
    must free a runner from a candidate."""

    list_display = [
        "id",
        "registered_model",
        "version",
        "baseline_version",
        "fraction",
        "max_rows_per_hour",
        "status",
        "created_at",
        "stopped_at",
    ]
    list_filter = ["status"]
    search_fields = ["registered_model__organization__slug", "registered_model__name"]
    readonly_fields = [field.name for field in Mirror._meta.fields]
    actions = ["stop_mirrors"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Stop the selected running mirrors")
    def stop_mirrors(self, request, queryset) -> None:
        from inference.mirrors import services

        stopped = 0
        for mirror in queryset.filter(status=Mirror.Status.RUNNING).select_related("registered_model"):
            services.stop_mirror(caller=Caller(user=request.user), model=mirror.registered_model, reason="stopped by an operator")
            stopped += 1
        self.message_user(request, f"Stopped {stopped} mirror(s).", messages.SUCCESS)
