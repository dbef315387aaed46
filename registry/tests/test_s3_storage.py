"""MODEL_STORAGE=s3: artifacts go to S3-compatible object storage and serve from there.

The object store is moto's S3 server (a real HTTP S3 API on 127.0.0.1), since no S3 runs
here. Settings pick the storage at start, so the platform side runs in a child process.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platform_site.tests.processes import database_url, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def s3(tmp_path):
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket="models")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    yield endpoint, client
    server.terminate()
    server.wait(timeout=10)


SCRIPT = """
import json
from django.core.files.uploadedfile import SimpleUploadedFile
from accounts.models import Organization, User
from accounts.principals import Caller
from accounts import services as accounts_services
from registry import artifacts, services
from registry.tests import factories as f
user = User.objects.create_user(email="s3@example.com", password="x-long-password-1")
caller = Caller(user=user)
org = accounts_services.create_organization(caller=caller, name="S3 Org", slug="s3-org")
model = services.create_model(caller=caller, organization=org, name="iris")
version = services.upload_version(caller=caller, model=model, file=SimpleUploadedFile("m.joblib", f.joblib_bytes(f.iris_model())))
from registry.loaders.serving import load_serving_artifact
estimator = load_serving_artifact(data=artifacts.read_serving_artifact(version_id=version.id)[0])
print(json.dumps({"name": version.artifact.name, "serving": version.serving_artifact.name.rsplit("/", 1)[1],
                  "storage": type(version.artifact.storage).__name__,
                  "prediction": int(estimator.predict([f.IRIS_ROW])[0]), "local": str(artifacts.local_copy(version))}))
"""


@pytest.mark.django_db(transaction=True)
def test_versions_are_stored_in_and_served_from_s3(s3, tmp_path):
    endpoint, client = s3
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MODEL_STORAGE": "s3",
        "AWS_STORAGE_BUCKET_NAME": "models",
        "AWS_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_S3_REGION_NAME": "us-east-1",
        "ARTIFACT_CACHE_DIR": str(tmp_path / "artifact-cache"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["storage"] == "S3Storage"
    assert report["prediction"] == 0
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket="models")["Contents"])
    folder = report["name"].rsplit("/", 1)[0]
    # The tenant's file, and the serving artifact the upload sandbox wrote beside it.
    assert keys == sorted([report["name"], f"{folder}/{report['serving']}"])
    assert report["local"].startswith(str(tmp_path / "artifact-cache"))  # downloaded once for serving
