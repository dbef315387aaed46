"""Serializer base classes shared by every app's API."""
from __future__ import annotations

from rest_framework import serializers


class NamedSerializer(serializers.Serializer):
    """Nested `InputSerializer`/`OutputSerializer` classes get a schema name from their view:
    `RegisterApi.InputSerializer` is `RegisterInput` in the OpenAPI components."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        outer, _, inner = cls.__qualname__.rpartition(".")
        if outer:
            meta = getattr(cls, "Meta", type("Meta", (), {}))
            meta.ref_name = outer.removesuffix("Api") + inner.removesuffix("Serializer")
            cls.Meta = meta


class StrictSerializer(NamedSerializer):
    """An input serializer that names unknown fields instead of silently dropping them."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
