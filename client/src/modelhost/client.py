"""`Client`: the platform's REST API (docs: /api/docs/) as Python calls, for notebooks and the CLI.

Credentials come from, in order: the arguments, MODELHOST_URL / MODELHOST_API_KEY, and what
`modelhost login` stored. Stored credentials are only ever sent to the URL they were stored
for. Errors are `ApiError`s carrying the platform's problem+json body.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from modelhost import config
from modelhost.errors import ApiError, ConnectionFailed, JobFailed, NotLoggedIn, UsageError

__all__ = ["Client", "refresh_margin_seconds"]

API = "/api/v1"
# An access token this close to its expiry is refreshed before a request rather than after a 401:
# an upload's body cannot be sent twice.
refresh_margin_seconds = 60
FINISHED = {"succeeded", "failed", "cancelled"}
# The end states of replays and drift reports (both computed on the worker).
DONE, FAILED = "done", "failed"

# Wraps an open file in one that reports progress as it is read (the CLI passes rich's).
UploadWrapper = Callable[[BinaryIO, int, str], contextlib.AbstractContextManager]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelhost")
    except PackageNotFoundError:
        return "0"


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (the platform verifies; this only schedules a refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """JSON-ready: NaN becomes null (a missing value), numpy scalars become Python numbers."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # a numpy scalar
        return _plain(value.item())
    return value


def rows_of(data: Any) -> Any:
    """`inputs` for the predict endpoint from a DataFrame (rows keyed by column), an array or lists."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return _plain(data.to_dict(orient="records"))
    if hasattr(data, "tolist"):  # a numpy array
        return _plain(data.tolist())
    return _plain(data)


class Client:
    """One platform, one set of credentials.

    `Client()` uses what `modelhost login` stored (or MODELHOST_URL / MODELHOST_API_KEY);
    `Client("https://modelhost.example", api_key="mh_...")` names them. `org` is the
    organization used for model names given without one ("iris" rather than "acme/iris").
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        org: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        stored = config.load_credentials()
        self.url = (url or os.environ.get("MODELHOST_URL") or stored.get("url") or "").rstrip("/")
        if not self.url:
            raise NotLoggedIn("No platform URL: run `modelhost login` or set MODELHOST_URL.")
        self._stored = stored if stored.get("url", "").rstrip("/") == self.url else {}
        self.api_key = api_key or os.environ.get("MODELHOST_API_KEY") or self._stored.get("api_key")
        self.org = org or os.environ.get("MODELHOST_ORG") or self._stored.get("org")
        self._me: dict | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers={"User-Agent": f"modelhost-client/{_version()}"})

    # --- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _authorization(self) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        access = self._stored.get("access")
        if not access:
            raise NotLoggedIn(f"Not logged in to {self.url}: run `modelhost login` or set MODELHOST_API_KEY.")
        expiry = _jwt_expiry(access)
        if expiry is not None and expiry - time.time() < refresh_margin_seconds:
            access = self._refresh_tokens()
        return {"Authorization": f"Bearer {access}"}

    def _refresh_tokens(self) -> str:
        """A new access token from the stored refresh token; both are replaced (a refresh token works once)."""
        refresh = self._stored.get("refresh")
        if not refresh:
            raise NotLoggedIn("The session has expired: run `modelhost login` again.")
        response = self._send("POST", f"{API}/auth/token/refresh", json={"refresh": refresh})
        if response.status_code == 401:
            raise NotLoggedIn("The session has expired or was ended: run `modelhost login` again.")
        self._raise_for_problem(response)
        tokens = response.json()
        self._stored = {**self._stored, "access": tokens["access"], "refresh": tokens.get("refresh", refresh)}
        config.save_credentials(self._stored)
        return tokens["access"]

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ConnectionFailed(f"{self.url} did not answer {method} {path} in time ({exc.__class__.__name__}).") from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"Cannot reach {self.url}: {exc}.") from None

    def _raise_for_problem(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            problem = response.json()
            if not isinstance(problem, dict):
                raise ValueError
        except ValueError:
            text = response.text.strip()
            problem = {"detail": text[:500] or response.reason_phrase}
        raise ApiError(
            status=response.status_code,
            problem=problem,
            method=response.request.method,
            url=str(response.request.url),
            retry_after=response.headers.get("Retry-After"),
        )

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One authenticated call to `path` (under the platform's URL); an error answer raises ApiError."""
        headers = {**kwargs.pop("headers", {}), **self._authorization()}
        response = self._send(method, path, headers=headers, **kwargs)
        self._raise_for_problem(response)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def _all_pages(self, path: str, params: dict | None = None) -> list[dict]:
        """Every item of a paginated list (`{count, next, results}`), following `next`."""
        items: list[dict] = []
        params = {**(params or {}), "limit": 500, "offset": 0}
        while True:
            page = self._json("GET", path, params=params)
            items.extend(page["results"])
            if not page.get("next") or not page["results"]:
                return items
            params["offset"] += len(page["results"])

    # --- who and where -------------------------------------------------------------------

    @staticmethod
    def obtain_tokens(url: str, *, email: str, password: str, timeout: float = 30.0) -> dict[str, str]:
        """`{access, refresh}` for a person, from POST /api/v1/auth/token."""
        client = Client.__new__(Client)
        client.url = url.rstrip("/")
        client._http = httpx.Client(base_url=client.url, timeout=timeout)
        try:
            response = client._send("POST", f"{API}/auth/token", json={"email": email, "password": password})
            client._raise_for_problem(response)
            return response.json()
        finally:
            client.close()

    def whoami(self) -> dict:
        """The caller: a user and their organizations with roles, or an API key with its scopes and organization."""
        if self._me is None:
            self._me = self._json("GET", f"{API}/me")
        return self._me

    def organization(self, org: str | None = None) -> str:
        """The organization to work in: `org`, the client's, or the caller's only one."""
        if org or self.org:
            return org or self.org
        organizations = [o["slug"] for o in self.whoami()["organizations"]]
        if len(organizations) == 1:
            return organizations[0]
        if not organizations:
            raise UsageError("You belong to no organization yet: create one in the web UI or with POST /api/v1/orgs.")
        raise UsageError(
            f"You belong to several organizations ({', '.join(organizations)}): name one with --org, or the model as org/name."
        )

    def _model_path(self, name: str, org: str | None = None) -> str:
        if "/" in name:
            org, name = name.split("/", 1)
        return f"{API}/models/{self.organization(org)}/{name}"

    def endpoint(self, name: str, *, org: str | None = None) -> str:
        """The native predict URL of a model's production version."""
        return f"{self.url}{self._model_path(name, org)}/predict"

    # --- registry ------------------------------------------------------------------------

    def models(self, *, org: str | None = None) -> list[dict]:
        return self._all_pages(f"{API}/models", {"org": org} if org else None)

    def model(self, name: str, *, org: str | None = None) -> dict:
        return self._json("GET", self._model_path(name, org))

    def create_model(self, name: str, *, org: str | None = None, description: str = "") -> dict:
        if "/" in name:
            org, name = name.split("/", 1)
        return self._json("POST", f"{API}/models", json={"org": self.organization(org), "name": name, "description": description})

    def ensure_model(self, name: str, *, org: str | None = None) -> tuple[dict, bool]:
        """The model, created when it does not exist yet; the flag says whether it was created."""
        try:
            return self.model(name, org=org), False
        except ApiError as exc:
            if exc.status != 404:
                raise
        return self.create_model(name, org=org), True

    def versions(self, name: str, *, org: str | None = None) -> list[dict]:
        return self._all_pages(f"{self._model_path(name, org)}/versions")

    def version(self, name: str, number: int, *, org: str | None = None) -> dict:
        return self._json("GET", f"{self._model_path(name, org)}/versions/{int(number)}")

    def releases(self, name: str, *, org: str | None = None) -> list[dict]:
        return self._all_pages(f"{self._model_path(name, org)}/releases")

    def set_stage(
        self, name: str, number: int, stage: str, *, org: str | None = None, reason: str = "", require_replay: dict | None = None
    ) -> dict:
        path = f"{self._model_path(name, org)}/versions/{int(number)}/stage"
        body: dict = {"stage": stage, "reason": reason}
        if require_replay is not None:
            body["require_replay"] = require_replay
        return self._json("POST", path, json=body)

    def promote(
        self, name: str, number: int, *, org: str | None = None, reason: str = "", require_replay: dict | None = None
    ) -> dict:
        """Make version `number` production (a new release); answers the version.

        `require_replay={"min_agreement": 0.98}` (optionally "min_rows") promotes only when the newest
        replay or live mirror of the version against production agrees that much; otherwise the
        platform answers 409, quoting it (raised as the client's conflict error).
        """
        return self.set_stage(name, number, "production", org=org, reason=reason, require_replay=require_replay)

    def rollback(self, name: str, *, org: str | None = None, reason: str = "") -> dict:
        """Production goes back to the previous production version; answers the new release."""
        return self._json("POST", f"{self._model_path(name, org)}/rollback", json={"reason": reason})

    def delete_model(self, name: str, *, org: str | None = None) -> None:
        self.request("DELETE", self._model_path(name, org))

    def upload_version(
        self,
        name: str,
        path: str | os.PathLike,
        *,
        org: str | None = None,
        reference: str | os.PathLike | None = None,
        example: Any = None,
        description: str = "",
        metrics: dict | None = None,
        params: dict | None = None,
        wrap_upload: UploadWrapper | None = None,
    ) -> dict:
        """Upload a model file as a new version; the platform checks it before answering (422 when it refuses)."""
        path = Path(path)
        data: dict[str, str] = {}
        if description:
            data["description"] = description
        if metrics:
            data["metrics"] = json.dumps(_plain(metrics))
        if params:
            data["params"] = json.dumps(_plain(params))
        if example is not None:
            data["input_example"] = (
                Path(example).read_text() if isinstance(example, (str, os.PathLike)) else json.dumps(rows_of(example))
            )
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(path.open("rb"))
            if wrap_upload is not None:
                handle = stack.enter_context(wrap_upload(handle, path.stat().st_size, path.name))
            files: dict[str, tuple] = {"file": (path.name, handle, "application/octet-stream")}
            if reference is not None:
                if hasattr(reference, "to_csv"):
                    files["reference_data"] = ("reference.csv", reference.to_csv(index=False).encode(), "text/csv")
                else:
                    files["reference_data"] = (Path(reference).name, stack.enter_context(Path(reference).open("rb")), "text/csv")
            return self._json("POST", f"{self._model_path(name, org)}/versions", data=data, files=files)

    def deploy(
        self,
        model: Any,
        *,
        name: str,
        org: str | None = None,
        reference: Any = None,
        example: Any = None,
        promote: bool = False,
        description: str = "",
        metrics: dict | None = None,
        params: dict | None = None,
        serializer: str = "joblib",
        wrap_upload: UploadWrapper | None = None,
    ) -> dict:
        """Upload a model file or an in-memory estimator as a new version of `name` (created if needed).

        An estimator is saved with joblib (or skops: `serializer="skops"`) to a temporary file
        first. With `promote`, the new version becomes production. Answers the version.
        """
        self.ensure_model(name, org=org)
        with _model_file(model, serializer=serializer) as path:
            version = self.upload_version(
                name,
                path,
                org=org,
                reference=reference,
                example=example,
                description=description,
                metrics=metrics,
                params=params,
                wrap_upload=wrap_upload,
            )
        if promote:
            version = self.promote(name, version["number"], org=org, reason="deployed with modelhost deploy --promote")
        return version

    # --- predictions ---------------------------------------------------------------------

    def predict_raw(
        self, name: str, data: Any, *, org: str | None = None, version: int | None = None, probabilities: bool = False
    ) -> dict:
        """The platform's whole answer: predictions, probabilities, version, prediction id, cache flag."""
        path = self._model_path(name, org) + (f"/versions/{int(version)}" if version else "") + "/predict"
        body: dict[str, Any] = {"inputs": rows_of(data)}
        if probabilities:
            body["parameters"] = {"probabilities": True}
        return self._json("POST", path, json=body)

    def predict(self, name: str, data: Any, *, org: str | None = None, version: int | None = None):
        """Predictions for rows (a DataFrame, a 2-D array or lists of rows) as a numpy array."""
        import numpy as np

        return np.asarray(self.predict_raw(name, data, org=org, version=version)["predictions"])

    def predict_proba(self, name: str, data: Any, *, org: str | None = None, version: int | None = None):
        """Class probabilities for rows, one column per class in the model's `classes` order."""
        import numpy as np

        answer = self.predict_raw(name, data, org=org, version=version, probabilities=True)
        if "probabilities" not in answer:
            raise UsageError(f"{answer['model']} version {answer['version']} gives no probabilities.")
        return np.asarray(answer["probabilities"])

    # --- batch jobs ----------------------------------------------------------------------

    def submit_batch(
        self,
        name: str,
        path: str | os.PathLike,
        *,
        org: str | None = None,
        version: int | None = None,
        probabilities: bool = False,
        wrap_upload: UploadWrapper | None = None,
    ) -> dict:
        """Score a CSV (with a header) or JSON lines file on the worker pool; answers the queued job."""
        path = Path(path)
        data = {"probabilities": "true" if probabilities else "false"}
        if version:
            data["version"] = str(int(version))
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(path.open("rb"))
            if wrap_upload is not None:
                handle = stack.enter_context(wrap_upload(handle, path.stat().st_size, path.name))
            return self._json("POST", f"{self._model_path(name, org)}/batch-jobs", data=data, files={"file": (path.name, handle)})

    def batch_job(self, job_id: int) -> dict:
        return self._json("GET", f"{API}/batch-jobs/{int(job_id)}")

    def wait_for_job(
        self,
        job_id: int,
        *,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll the job until it ends; answers it when it succeeded, raises JobFailed otherwise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.batch_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINISHED:
                if job["status"] != "succeeded":
                    raise JobFailed(f"Batch job {job_id} {job['status']}: {job.get('error') or 'no reason given'}", job=job)
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise JobFailed(f"Batch job {job_id} is still {job['status']} after {timeout:g} s.", job=job)
            time.sleep(poll_seconds)

    def download_result(self, job_id: int, destination: str | os.PathLike) -> Path:
        """Write the job's result file (input rows in order, with the predictions) to `destination`."""
        destination = Path(destination)
        with self._http.stream("GET", f"{API}/batch-jobs/{int(job_id)}/result", headers=self._authorization()) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for_problem(response)
            partial = destination.with_name(destination.name + ".part")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(1024 * 1024):
                    out.write(chunk)
            partial.replace(destination)
        return destination

    # --- monitoring ----------------------------------------------------------------------

    def usage(
        self, name: str, *, org: str | None = None, start: str | None = None, end: str | None = None, granularity: str = "hour"
    ) -> dict:
        params = {"granularity": granularity, **({"start": start} if start else {}), **({"end": end} if end else {})}
        return self._json("GET", f"{self._model_path(name, org)}/usage", params=params)

    def drift_reports(self, name: str, *, org: str | None = None) -> list[dict]:
        return self._all_pages(f"{self._model_path(name, org)}/drift-reports")

    def drift_report(self, report_id: int) -> dict:
        return self._json("GET", f"{API}/drift-reports/{int(report_id)}")

    def request_drift_report(
        self, name: str, *, org: str | None = None, version: int | None = None, window_hours: int | None = None
    ) -> dict:
        """Queue a drift report; answers it `pending` (poll `drift_report(id)` until `done` or `failed`)."""
        body = {key: value for key, value in (("version", version), ("window_hours", window_hours)) if value is not None}
        return self._json("POST", f"{self._model_path(name, org)}/drift-reports", json=body)

    def wait_for_drift_report(self, report_id: int, *, poll_seconds: float = 1.0, timeout: float | None = None) -> dict:
        """Poll the report until it is done; answers it, or raises JobFailed when it failed or `timeout` passed."""
        return _poll(
            lambda: self.drift_report(report_id), what=f"Drift report {report_id}", poll_seconds=poll_seconds, timeout=timeout
        )

    # --- replays -------------------------------------------------------------------------

    def replay(
        self,
        name: str,
        version: int,
        *,
        org: str | None = None,
        last: int | None = None,
        window_hours: int | None = None,
        wait: bool = False,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict:
        """Replay the inputs production served against `version` on the worker, and compare the answers.

        `last` rows (production's newest; default the platform's) or those of the last
        `window_hours`. Answers the replay `pending`; with `wait`, polls it (`on_progress` sees
        each state) and answers it `done`, with its `report`, or raises JobFailed.
        """
        body = {key: value for key, value in (("rows", last), ("window_hours", window_hours)) if value is not None}
        replay = self._json("POST", f"{self._model_path(name, org)}/versions/{int(version)}/replays", json=body)
        if not wait:
            return replay
        return self.wait_for_replay(
            name, version, replay["id"], org=org, poll_seconds=poll_seconds, timeout=timeout, on_progress=on_progress
        )

    def replay_of(self, name: str, version: int, replay_id: int, *, org: str | None = None) -> dict:
        """One replay of `version`: its status and progress, and its report once done."""
        return self._json("GET", f"{self._model_path(name, org)}/versions/{int(version)}/replays/{int(replay_id)}")

    def replays(self, name: str, *, org: str | None = None, version: int | None = None) -> list[dict]:
        """The model's replays (or one version's), newest first, without their reports."""
        path = self._model_path(name, org) + (f"/versions/{int(version)}" if version else "") + "/replays"
        return self._all_pages(path)

    def wait_for_replay(
        self,
        name: str,
        version: int,
        replay_id: int,
        *,
        org: str | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll the replay until it is done; answers it, or raises JobFailed when it failed or `timeout` passed."""
        return _poll(
            lambda: self.replay_of(name, version, replay_id, org=org),
            what=f"Replay {replay_id}",
            poll_seconds=poll_seconds,
            timeout=timeout,
            on_progress=on_progress,
        )


def _poll(
    fetch: Callable[[], dict],
    *,
    what: str,
    poll_seconds: float,
    timeout: float | None,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Fetch a worker's task (a replay, a drift report) until its status is done or failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = fetch()
        if on_progress is not None:
            on_progress(current)
        if current["status"] == DONE:
            return current
        if current["status"] == FAILED:
            raise JobFailed(f"{what} failed: {current.get('error') or 'no reason given'}", job=current)
        if deadline is not None and time.monotonic() > deadline:
            raise JobFailed(f"{what} is still {current['status']} after {timeout:g} s.", job=current)
        time.sleep(poll_seconds)


@contextlib.contextmanager
def _model_file(model: Any, *, serializer: str) -> Iterator[Path]:
    """A path to upload: the given file, or an estimator saved to a temporary one."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"{path} is not a file.")
        yield path
        return
    if serializer not in ("joblib", "skops"):
        raise UsageError(f"serializer must be 'joblib' or 'skops', not {serializer!r}.")
    with tempfile.TemporaryDirectory(prefix="modelhost-") as folder:
        path = Path(folder) / f"model.{serializer}"
        try:
            if serializer == "skops":
                import skops.io

                skops.io.dump(model, path)
            else:
                import joblib

                joblib.dump(model, path)
        except ImportError as exc:
            raise UsageError(f"Saving an estimator needs {exc.name}: pip install {exc.name}") from None
        yield path
