"""OpenAPI descriptions of the platform's own authentication schemes (drf-spectacular)."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    """Views nest their `InputSerializer`/`OutputSerializer` (STYLE.md); name those components
    after the view, so `RegisterApi.InputSerializer` is `RegisterInput`, never a bare `Input`."""

    def get_serializer_name(self, serializer, direction):
        outer, _, inner = type(serializer).__qualname__.rpartition(".")
        if outer:
            return outer.removesuffix("Api") + inner.removesuffix("Serializer")
        return super().get_serializer_name(serializer, direction)


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key `mh_<prefix>_<secret>`; also accepted as `Authorization: Bearer <key>`.",
        }


class JwtScheme(SimpleJWTScheme):
    target_class = "accounts.authentication.JwtAuthentication"
    name = "jwtAuth"


def _json_body(schema: dict, example: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}


_PREDICT_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": {
            "description": "Rows: lists in signature order, or objects keyed by feature name; one object alone is one row.",
            "oneOf": [
                {"type": "array", "items": {"oneOf": [{"type": "array", "items": {}}, {"type": "object"}]}},
                {"type": "object"},
            ],
        },
        "parameters": {
            "type": "object",
            "properties": {
                "probabilities": {"type": "boolean", "default": False},
                "explain": {
                    "type": "boolean",
                    "default": False,
                    "description": "Per-row feature contributions and their base value (docs/explanations.md); "
                    "at most EXPLAIN_MAX_ROWS rows.",
                },
            },
        },
        "unit_id": {"type": "string", "description": "Sticky experiment assignment key (a user id, say)."},
    },
}
_PREDICT_RESPONSE = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "example": "prd_01JABCDEF0123456789ABCDEFG"},
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "variant": {"type": "string", "nullable": True},
        "predictions": {"type": "array", "items": {}},
        "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "classes": {"type": "array", "items": {}},
        "explainer": {
            "type": "object",
            "description": "With parameters.explain: the method (tree_shap, linear, sampling) and what `value` is.",
            "properties": {"method": {"type": "string"}, "output": {"type": "string"}},
        },
        "explanations": {
            "type": "array",
            "description": "With parameters.explain: one per row; base_value + sum(contributions) == value.",
            "items": {
                "type": "object",
                "properties": {
                    "class": {"description": "The predicted label whose output is explained (classifiers)"},
                    "base_value": {"type": "number"},
                    "value": {"type": "number"},
                    "contributions": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            },
        },
        "cache_hit": {"type": "boolean"},
        "latency_ms": {"type": "number"},
    },
}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def add_inference_paths(result, generator, request, public):
    """The hot-path endpoints are plain Django views; describe them here so the schema is whole."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = {
        "type": "object",
        "description": "application/problem+json (RFC 9457)",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "row": {"type": "integer"},
                        "column": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
    security = [{"ApiKey": []}, {"jwtAuth": []}]
    errors = {
        str(code): {"description": text, "content": {"application/problem+json": {"schema": _PROBLEM}}}
        for code, text in [
            (400, "Bad input, naming the row and column"),
            (401, "No or bad credentials"),
            (404, "No such model (or another organization's)"),
            (413, "Too large"),
            (422, "explanation_unavailable: parameters.explain asked of a model no explainer applies to"),
            (429, "Rate limit or quota"),
        ]
    }
    org_model = [
        {"name": "org", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    number = {"name": "number", "in": "path", "required": True, "schema": {"type": "integer"}}
    predict = {
        "tags": ["inference"],
        "security": security,
        "requestBody": _json_body(_PREDICT_REQUEST, {"inputs": [[5.1, 3.5, 1.4, 0.2]], "parameters": {"probabilities": True}}),
        "responses": {
            "200": {
                "description": "Predictions; headers X-Cache and Server-Timing",
                "content": {"application/json": {"schema": _PREDICT_RESPONSE}},
            },
            **errors,
        },
    }
    invocations = {
        "tags": ["inference"],
        "security": security,
        "description": (
            "MLflow scoring protocol: one of dataframe_split, dataframe_records, instances, inputs (JSON), or text/csv. "
            "Errors are {error_code, message}."
        ),
        "requestBody": _json_body({"type": "object"}, {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}),
        "responses": {
            "200": {
                "description": '{"predictions": [...]}',
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"predictions": {"type": "array", "items": {}}}}
                    }
                },
            }
        },
    }
    paths = result.setdefault("paths", {})
    paths["/api/v1/models/{org}/{model}/predict"] = {
        "post": {
            **predict,
            "operationId": "predict",
            "summary": "Predict with the production version or an experiment variant",
            "parameters": org_model,
        }
    }
    paths["/api/v1/models/{org}/{model}/versions/{number}/predict"] = {
        "post": {
            **predict,
            "operationId": "predict_version",
            "summary": "Predict with one version",
            "parameters": [*org_model, number],
        }
    }
    paths["/api/v1/models/{org}/{model}/invocations"] = {
        "post": {**invocations, "operationId": "invocations", "parameters": org_model}
    }
    paths["/api/v1/models/{org}/{model}/versions/{number}/invocations"] = {
        "post": {**invocations, "operationId": "invocations_version", "parameters": [*org_model, number]}
    }
    paths["/v2/models/{model}/infer"] = {
        "post": {
            "tags": ["inference"],
            "security": security,
            "operationId": "v2_infer",
            "summary": "Open Inference Protocol (KServe V2) infer; JSON tensors or the binary tensor data extension",
            "parameters": [org_model[1]],
            "requestBody": _json_body(
                {"type": "object"},
                {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]},
            ),
            "responses": {"200": {"description": "V2 infer response"}},
        }
    }
    return result
