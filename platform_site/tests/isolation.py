"""The tenant-isolation harness: one line per tenant URL.

`world` holds tenant A's resources (ids, slugs); each endpoint's path is a template over it.
Tenant B, with a JWT and with an API key, must get exactly the 404 a missing resource gets,
and list endpoints must not mention anything of A's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: dict = field(default_factory=dict)
    # Resource paths answer 404; list paths answer 200 without A's data.
    is_list: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


# Placeholders: {org}, {member_id}, {key_id}, and more as apps add resources to `world`.
TENANT_ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/v1/orgs/{org}"),
    Endpoint("PATCH", "/api/v1/orgs/{org}", {"name": "stolen"}),
    Endpoint("GET", "/api/v1/orgs/{org}/members"),
    Endpoint("POST", "/api/v1/orgs/{org}/members", {"email": "owner@globex.example", "role": "admin"}),
    Endpoint("GET", "/api/v1/orgs/{org}/members/{member_id}"),
    Endpoint("PATCH", "/api/v1/orgs/{org}/members/{member_id}", {"role": "viewer"}),
    Endpoint("DELETE", "/api/v1/orgs/{org}/members/{member_id}"),
    Endpoint("GET", "/api/v1/orgs/{org}/api-keys"),
    Endpoint("POST", "/api/v1/orgs/{org}/api-keys", {"name": "x", "scopes": ["read"]}),
    Endpoint("GET", "/api/v1/orgs/{org}/api-keys/{key_id}"),
    Endpoint("DELETE", "/api/v1/orgs/{org}/api-keys/{key_id}"),
    Endpoint("GET", "/api/v1/orgs/{org}/audit-events"),
    Endpoint("GET", "/api/v1/orgs", is_list=True),
    Endpoint("GET", "/api/v1/me", is_list=True),
    # registry
    Endpoint("GET", "/api/v1/models", is_list=True),
    Endpoint("POST", "/api/v1/models", {"org": "{org}", "name": "stolen"}),
    Endpoint("GET", "/api/v1/models/{org}/{model}"),
    Endpoint("PATCH", "/api/v1/models/{org}/{model}", {"description": "stolen"}),
    Endpoint("DELETE", "/api/v1/models/{org}/{model}"),
    Endpoint("GET", "/api/v1/models/{org}/{model}/versions"),
    Endpoint("POST", "/api/v1/models/{org}/{model}/versions", {"description": "x"}),
    Endpoint("POST", "/api/v1/models/{org}/{model}/versions/import-mlflow", {"model_uri": "models:/x/1"}),
    Endpoint("GET", "/api/v1/models/{org}/{model}/versions/{version}"),
    Endpoint("POST", "/api/v1/models/{org}/{model}/versions/{version}/stage", {"stage": "archived"}),
    Endpoint("POST", "/api/v1/models/{org}/{model}/rollback"),
    Endpoint("GET", "/api/v1/models/{org}/{model}/releases"),
    # inference
    Endpoint("POST", "/api/v1/models/{org}/{model}/predict", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    Endpoint("POST", "/api/v1/models/{org}/{model}/versions/{version}/predict", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    Endpoint("POST", "/api/v1/models/{org}/{model}/invocations", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    Endpoint("POST", "/api/v1/models/{org}/{model}/versions/{version}/invocations", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    Endpoint("POST", "/api/v1/predictions/{prediction}/feedback", {"label": 0}),
    # batch jobs
    Endpoint("GET", "/api/v1/models/{org}/{model}/batch-jobs"),
    Endpoint("POST", "/api/v1/models/{org}/{model}/batch-jobs", {"probabilities": "true"}),
    Endpoint("GET", "/api/v1/batch-jobs", is_list=True),
    Endpoint("GET", "/api/v1/batch-jobs/{job}"),
    Endpoint("GET", "/api/v1/batch-jobs/{job}/result"),
    Endpoint("POST", "/api/v1/batch-jobs/{job}/cancel"),
    # experiments
    Endpoint("GET", "/api/v1/models/{org}/{model}/experiments"),
    Endpoint(
        "POST",
        "/api/v1/models/{org}/{model}/experiments",
        {"name": "x", "variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]},
    ),
    Endpoint("GET", "/api/v1/experiments/{experiment}"),
    Endpoint("POST", "/api/v1/experiments/{experiment}/stop"),
    Endpoint("POST", "/api/v1/experiments/{experiment}/promote", {"version": 1}),
    Endpoint("GET", "/api/v1/experiments/{experiment}/results"),
    # analytics
    Endpoint("GET", "/api/v1/models/{org}/{model}/usage"),
    Endpoint("GET", "/api/v1/models/{org}/{model}/quality"),
    Endpoint("GET", "/api/v1/models/{org}/{model}/drift-reports"),
    Endpoint("POST", "/api/v1/models/{org}/{model}/drift-reports", {"window_hours": 1}),
    Endpoint("GET", "/api/v1/drift-reports/{drift_report}"),
    Endpoint("GET", "/api/v1/models/{org}/{model}/replays"),
    Endpoint("GET", "/api/v1/models/{org}/{model}/versions/{version}/replays"),
    Endpoint("POST", "/api/v1/models/{org}/{model}/versions/{version}/replays", {"rows": 10}),
    Endpoint("GET", "/api/v1/models/{org}/{model}/versions/{version}/replays/{replay}"),
    Endpoint("GET", "/api/v1/orgs/{org}/alert-settings"),
    Endpoint("PATCH", "/api/v1/orgs/{org}/alert-settings", {"drift_webhook_url": "https://93.184.215.14/stolen"}),
]

# What stands in for each placeholder when asking for a resource that does not exist.
MISSING = {
    "org": "no-such-org",
    "member_id": 987654321,
    "key_id": 987654321,
    "model": "no-such-model",
    "version": 987654,
    "prediction": "prd_00000000000000000000000000",
    "job": 987654321,
    "experiment": 987654321,
    "drift_report": 987654321,
    "replay": 987654321,
}
