"""Where artifacts live: Django's storage API (a local folder, or S3 via django-storages)."""

from __future__ import annotations

from django.core.files.storage import Storage, storages


def model_storage() -> Storage:
    return storages["models"]
