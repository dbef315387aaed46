from django.contrib import admin

from registry.models import ModelVersion, RegisteredModel, Release


class VersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    fields = ["number", "stage", "format", "estimator_class", "sklearn_version", "sha256", "created_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["__str__", "task", "production_version", "created_at", "deleted_at"]
    list_filter = ["task", "deleted_at", "organization"]
    search_fields = ["name", "organization__slug", "description"]
    readonly_fields = ["production_version", "created_at", "updated_at", "created_by"]
    inlines = [VersionInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "stage",
        "format",
        "estimator_class",
        "task",
        "sklearn_version",
        "serving_sklearn_version",
        "created_at",
    ]
    list_filter = ["stage", "format", "task", "sklearn_version"]
    search_fields = ["registered_model__name", "registered_model__organization__slug", "sha256", "estimator_class"]
    # Versions are immutable: operators read them here and change stages through releases.
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Release)
class ReleaseAdmin(admin.ModelAdmin):
    list_display = ["registered_model", "number", "kind", "from_version", "to_version", "actor", "created_at"]
    list_filter = ["kind", "created_at"]
    search_fields = ["registered_model__name", "registered_model__organization__slug", "reason"]
    readonly_fields = [f.name for f in Release._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
