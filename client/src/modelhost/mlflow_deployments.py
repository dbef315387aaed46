"""MLflow deployments target `modelhost` (the `mlflow.deployments` entry point of this package).

    mlflow deployments create -t modelhost -m models:/iris/1 --name iris
    mlflow deployments create -t modelhost:/acme -m runs:/<run id>/model --name iris -C promote=false

The target is `modelhost` (credentials and organization as `modelhost login` stored them, or
MODELHOST_URL / MODELHOST_API_KEY) or `modelhost:/<org>`. A deployment is a model of that
organization; its production version serves it. The model is fetched from MLflow here, on
the caller's side (so any registry the caller can read works, not only one the platform is
configured for), zipped as MLflow model folders are, and uploaded as a new version.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Any

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST

from modelhost.client import Client, rows_of
from modelhost.errors import ApiError, ModelhostError

CONFIG_KEYS = {"promote", "description", "org"}


def target_help() -> str:
    return """Deploy MLflow models to Modelhost.

Target URI: `modelhost` (the URL, credentials and organization `modelhost login` stored, or
MODELHOST_URL, MODELHOST_API_KEY and MODELHOST_ORG), or `modelhost:/<org>` for an organization.

A deployment is a Modelhost model: `create` makes it and uploads the MLflow model as version 1
(fetched from MLflow by this process, zipped, checked by the platform), `update` uploads a new
version, `delete` deletes the model, `predict` calls its /invocations endpoint.

Config (-C key=value):
  promote=true|false   make the new version production (default true: the deployment serves it)
  description=TEXT     the version's description
  org=SLUG             the organization (instead of the target URI's)
"""


def run_local(target, name, model_uri, flavor=None, config=None):
    raise MlflowException(
        "The modelhost target does not run models locally; `mlflow models serve -m MODEL_URI` does.", INVALID_PARAMETER_VALUE
    )


def _as_mlflow_error(error: ModelhostError) -> MlflowException:
    if isinstance(error, ApiError):
        code = RESOURCE_DOES_NOT_EXIST if error.status == 404 else INVALID_PARAMETER_VALUE
        details = "; ".join(line.strip() for line in error.lines())
        return MlflowException(f"Modelhost: {details}", code)
    return MlflowException(f"Modelhost: {error}", INVALID_PARAMETER_VALUE)


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise MlflowException(f"promote must be true or false, not {value!r}.", INVALID_PARAMETER_VALUE)


def zip_model_folder(folder: Path, destination: Path) -> Path:
    """The MLflow model folder as a zip with MLmodel at its root, as the platform takes it."""
    if not (folder / "MLmodel").is_file():
        raise MlflowException(f"{folder} is not an MLflow model folder (no MLmodel file).", INVALID_PARAMETER_VALUE)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return destination


class ModelhostDeploymentClient(BaseDeploymentClient):
    """Deployments on Modelhost: one per model of the target's organization."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        _, _, org = target_uri.partition(":")
        self.org = org.strip("/") or None
        try:
            self.client = Client(org=self.org)
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None

    def _config(self, config: dict | None) -> dict:
        config = dict(config or {})
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise MlflowException(
                f"Unknown config: {', '.join(unknown)}; the modelhost target takes {', '.join(sorted(CONFIG_KEYS))}.",
                INVALID_PARAMETER_VALUE,
            )
        return config

    def _upload(self, name: str, model_uri: str, config: dict) -> dict:
        import mlflow.artifacts

        org = config.get("org") or self.org
        with tempfile.TemporaryDirectory(prefix="modelhost-mlflow-") as folder:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
            archive = zip_model_folder(local, Path(folder) / f"{name}.zip")
            version = self.client.upload_version(
                name, archive, org=org, description=config.get("description") or f"from MLflow {model_uri}"
            )
        if _truthy(config.get("promote", True)):
            version = self.client.promote(name, version["number"], org=org, reason=f"deployed from MLflow {model_uri}")
        return version

    def _describe(self, model: dict, version: dict | None = None) -> dict:
        described = {
            "name": model["name"],
            "model": model["full_name"],
            "production_version": model["production_version"],
            "endpoint": self.client.endpoint(model["full_name"]),
            "invocations": self.client.endpoint(model["full_name"]).removesuffix("/predict") + "/invocations",
        }
        if version is not None:
            described.update(version=version["number"], stage=version["stage"], flavor="python_function")
        return described

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        config = self._config(config)
        try:
            model, created = self.client.ensure_model(name, org=config.get("org"))
            if not created and model["production_version"] is not None:
                raise MlflowException(
                    f"The deployment {model['full_name']} exists (version {model['production_version']} serves it): use update.",
                    RESOURCE_ALREADY_EXISTS,
                )
            version = self._upload(name, model_uri, config)
            return self._describe(self.client.model(name, org=config.get("org")), version)
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        config = self._config(config)
        try:
            model = self.client.model(name, org=config.get("org"))
            if model_uri is None:
                return self._describe(model)
            version = self._upload(name, model_uri, config)
            return self._describe(self.client.model(name, org=config.get("org")), version)
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None

    def delete_deployment(self, name, config=None, endpoint=None):
        config = self._config(config)
        try:
            self.client.delete_model(name, org=config.get("org"))
        except ApiError as error:
            if error.status != 404:  # deleting what is gone is done, as MLflow asks
                raise _as_mlflow_error(error) from None
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None

    def list_deployments(self, endpoint=None):
        try:
            org = self.client.organization()
            return [self._describe(model) for model in self.client.models(org=org)]
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None

    def get_deployment(self, name, endpoint=None):
        try:
            return self._describe(self.client.model(name))
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """Score `inputs` (a DataFrame, an array, rows, or an MLflow scoring body) with the production version."""
        if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):
            split = inputs.to_dict(orient="split")
            body = {"dataframe_split": rows_of({"columns": split["columns"], "data": split["data"]})}
        elif isinstance(inputs, dict) and inputs.keys() & {"dataframe_split", "dataframe_records", "instances", "inputs"}:
            body = rows_of(inputs)
        else:
            body = {"inputs": rows_of(inputs)}
        try:
            path = self.client.endpoint(deployment_name).removeprefix(self.client.url).removesuffix("/predict") + "/invocations"
            response = self.client.request("POST", path, json=body)
        except ModelhostError as error:
            raise _as_mlflow_error(error) from None
        return PredictionsResponse(response.json())
