"""Create the benchmark's tenants, keys and models in Modelhost through its own services.

Run with the project's venv and the benchmark's environment (bench/harness.py does both):
    .venv/bin/python bench/seed_modelhost.py inference   # org "bench": iris + rf, one API key
    .venv/bin/python bench/seed_modelhost.py memory      # 10 orgs x 10 models, one key per org
    .venv/bin/python bench/seed_modelhost.py explain     # org "bench-explain": rf, linear, svc with reference data
Prints one JSON object on stdout: {"orgs": {slug: {"key": plaintext, "models": {name: {...}}}}}.

Models are uploaded through `registry.services.upload_version` (the real safe-upload path with
its sandbox check), compiled with `compile_version` (what the worker runs after an upload,
through the sandbox too) and promoted with `set_stage`, once: a rerun reuses a model whose
production version has the same sha256. Every run makes a fresh API key (only its hash is
stored) and revokes the previous bench keys. Rate limits are set to a very high number rather
than 0, so the limit script runs and the X-RateLimit headers are computed as in production,
but a bench never meets a 429.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_site.settings")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
django.setup()

from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts import services as account_services  # noqa: E402
from accounts.models import ApiKey, Membership, Organization, Role, User  # noqa: E402
from accounts.principals import Caller  # noqa: E402
from registry import services as registry_services  # noqa: E402
from registry.models import RegisteredModel  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / ".artifacts"
HIGH_LIMIT = 1_000_000_000  # per minute: counted and checked, never reached
BENCH_EMAIL = "bench@modelhost.local"
KEY_NAME = "bench key"


def _person() -> User:
    user = User.objects.filter(email=BENCH_EMAIL).first()
    if user is None:
        user = User.objects.create_user(email=BENCH_EMAIL, password="bench-password-not-secret-0123", name="Bench")
    return user


def _organization(caller: Caller, slug: str) -> Organization:
    org = Organization.objects.filter(slug=slug).first()
    if org is None:
        org = account_services.create_organization(caller=caller, name=slug, slug=slug)
    Membership.objects.get_or_create(user=caller.person, organization=org, defaults={"role": Role.OWNER})
    Organization.objects.filter(pk=org.pk).update(rate_limit_per_minute=HIGH_LIMIT, monthly_quota=0)
    return org


def _fresh_key(caller: Caller, org: Organization) -> str:
    ApiKey.objects.filter(organization=org, name=KEY_NAME, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key, plaintext = account_services.create_api_key(caller=caller, organization=org, name=KEY_NAME, scopes=["predict", "read"])
    ApiKey.objects.filter(pk=key.pk).update(rate_limit_per_minute=HIGH_LIMIT, monthly_quota=0)
    return plaintext


def _production_model(
    caller: Caller,
    org: Organization,
    name: str,
    artifact: Path,
    example: list,
    reference: bytes | None = None,
    *,
    use_compiled: bool = True,
) -> dict:
    data = artifact.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    model = RegisteredModel.objects.filter(organization=org, name=name, deleted_at__isnull=True).first()
    if model is None:
        model = registry_services.create_model(caller=caller, organization=org, name=name)
    current = model.production_version
    if current is None or current.sha256 != sha:
        upload = SimpleUploadedFile(f"{name}.joblib", data, content_type="application/octet-stream")
        reference_file = (
            SimpleUploadedFile("reference.csv", reference, content_type="text/csv") if reference is not None else None
        )
        version = registry_services.upload_version(
            caller=caller,
            model=model,
            file=upload,
            input_example=example,
            reference_data=reference_file,
            use_compiled=use_compiled,
        )
        # The compile a worker runs after an upload, run here: the benches start no worker, and
        # measure a tree ensemble served by its compiled form, as it is once the worker is done.
        if use_compiled:
            registry_services.compile_version(version_id=version.id)
        registry_services.set_stage(caller=caller, version=version, stage="production")
        model.refresh_from_db()
        current = model.production_version
    return {
        "version": current.number,
        "version_id": current.id,
        "cache_ttl": model.prediction_cache_ttl,
        "size_bytes": current.size_bytes,
        # What serves it in the runner ("onnx": the verified compiled form) and the figures of
        # the check that compared the compiled form with scikit-learn.
        "runtime": current.runtime,
        "runtime_reason": current.runtime_reason,
        "compiled_figures": current.compiled_figures,
    }


def seed_inference() -> dict:
    caller = Caller(user=_person(), ip_address="127.0.0.1")
    org = _organization(caller, "bench")
    models = {}
    for name in ("iris", "rf"):
        rows = json.loads((ARTIFACTS / f"{name}.rows.json").read_text())
        models[name] = _production_model(caller, org, name, ARTIFACTS / f"{name}.joblib", rows[:2])
    # The same forest served by scikit-learn (its compiled form turned off, as a user can).
    rows = json.loads((ARTIFACTS / "rf.rows.json").read_text())
    models["rf-sklearn"] = _production_model(caller, org, "rf-sklearn", ARTIFACTS / "rf.joblib", rows[:2], use_compiled=False)
    return {"orgs": {org.slug: {"key": _fresh_key(caller, org), "models": models}}}


def seed_memory(*, orgs: int = 10, per_org: int = 10) -> dict:
    """100 small models in 10 orgs, each a distinct artifact: even-numbered ones iris-sized
    LogisticRegressions (predicted in the web), odd-numbered ones 25-tree RandomForests
    (predicted in their organization's runner)."""
    import io

    import joblib
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    caller = Caller(user=_person(), ip_address="127.0.0.1")
    x, y = load_iris(return_X_y=True)
    example = x[:2].tolist()
    out: dict = {"orgs": {}}
    for o in range(orgs):
        org = _organization(caller, f"mem-{o:02d}")
        models = {}
        for m in range(per_org):
            name = f"model-{m:02d}"
            kind = "rf" if m % 2 else "lr"
            path = ARTIFACTS / "memory" / f"{org.slug}-{name}-{kind}.joblib"
            if not path.exists():
                # Distinct parameters per model: distinct files and hashes.
                if kind == "rf":
                    estimator = RandomForestClassifier(n_estimators=25, random_state=o * 100 + m).fit(x, y)
                else:
                    estimator = LogisticRegression(max_iter=1000, C=0.1 + o + m / 10).fit(x, y)
                buffer = io.BytesIO()
                joblib.dump(estimator, buffer)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(buffer.getvalue())
            models[name] = {**_production_model(caller, org, name, path, example), "kind": kind}
        out["orgs"][org.slug] = {"key": _fresh_key(caller, org), "models": models}
    return out


def seed_explain() -> dict:
    """Org "bench-explain": the inference bench's forest (100 trees, 20 features), a plain
    LogisticRegression (predicted in the web) and a scaled SVC pipeline (the sampling
    explainer), each with 500 rows of its training data as reference data."""
    import io

    import joblib
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    caller = Caller(user=_person(), ip_address="127.0.0.1")
    org = _organization(caller, "bench-explain")
    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=0)
    makers = {
        "rf": lambda: RandomForestClassifier(n_estimators=100, random_state=0),
        "linear": lambda: LogisticRegression(max_iter=1000),
        "svc": lambda: make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)),
    }
    reference = pd.DataFrame(x[:500], columns=[f"f{i}" for i in range(x.shape[1])]).to_csv(index=False).encode()
    models = {}
    for name, make in makers.items():
        path = ARTIFACTS / "explain" / f"{name}.joblib"
        if not path.exists():
            buffer = io.BytesIO()
            joblib.dump(make().fit(x, y), buffer)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer.getvalue())
        models[name] = _production_model(caller, org, name, path, x[:2].tolist(), reference=reference)
    rows = [[round(float(v), 4) for v in row] for row in x[500:1500]]
    return {"orgs": {org.slug: {"key": _fresh_key(caller, org), "models": models, "rows": rows}}}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "inference"
    result = {"inference": seed_inference, "memory": seed_memory, "explain": seed_explain}[which]()
    sys.stdout.write(json.dumps(result) + "\n")
