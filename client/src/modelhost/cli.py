"""The `modelhost` command: Click for the arguments, rich for tables and progress bars.

Every command takes `--json` (also accepted before the command name) to print the platform's
answer as JSON on stdout; progress and messages go to stderr. Exit codes: modelhost.errors.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modelhost import config
from modelhost.client import Client
from modelhost.errors import ApiError, JobFailed, ModelhostError, UsageError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Files up to this size are sent inline to the predict endpoint; larger ones become a batch job.
INLINE_FILE_BYTES = 256 * 1024


class Failed(click.ClickException):
    """A ModelhostError on its way out: printed (as JSON with --json) and ended with its exit code."""

    def __init__(self, error: ModelhostError, *, as_json: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.exit_code = error.exit_code
        self.as_json = as_json

    def show(self, file=None) -> None:
        error = self.error
        if self.as_json:
            body: dict[str, Any] = {"error": str(error), "exit_code": self.exit_code}
            if isinstance(error, ApiError):
                body.update(status=error.status, problem=error.problem)
            if isinstance(error, JobFailed):
                body["job"] = error.job
            click.echo(json.dumps(body, indent=2, default=str), err=True)
            return
        lines = error.lines() if isinstance(error, ApiError) else [str(error)]
        err.print(f"[bold red]Error:[/] {lines[0]}", markup=True, highlight=False)
        for line in lines[1:]:
            err.print(line, markup=False)
        if isinstance(error, ApiError) and error.retry_after:
            err.print(f"  retry after {error.retry_after} s", markup=False)
        if isinstance(error, ApiError) and error.status == 401:
            err.print("  Run `modelhost login` again, or check MODELHOST_API_KEY.", markup=False)


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModelhostError as error:
            raise Failed(error, as_json=_json_wanted(ctx)) from None


def _json_wanted(ctx: click.Context) -> bool:
    return bool(ctx.obj and ctx.obj.get("json"))


def _ask_for_json(ctx: click.Context, param, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["json"] = True


def json_option(function):
    """--json on a command: the same as before the command's name."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_ask_for_json,
        help="Print the platform's answer as JSON.",
    )(function)


def org_option(function):
    return click.option("--org", help="Organization (default: the one you logged in with, or your only one).")(function)


def emit(ctx: click.Context, data: Any, human) -> None:
    """Print `data` as JSON when asked, else call `human()` to print it for people."""
    if _json_wanted(ctx):
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human()


def client_for(ctx: click.Context) -> Client:
    if "client" not in ctx.obj:
        ctx.obj["client"] = ctx.with_resource(Client(ctx.obj["url"], org=ctx.obj["org"]))
    return ctx.obj["client"]


def _progress(ctx: click.Context, *columns) -> Progress:
    quiet = _json_wanted(ctx)
    return Progress(*columns, console=err, disable=bool(quiet), transient=False)


def upload_wrapper(ctx: click.Context):
    """A wrapper for Client uploads that shows a byte progress bar on stderr."""

    @contextlib.contextmanager
    def wrap(handle, size: int, name: str):
        columns = (
            TextColumn("Uploading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with _progress(ctx, *columns) as progress:
            with progress.wrap_file(handle, total=size, description=name) as reader:
                yield reader

    return wrap


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="MODELHOST_URL", help="The platform's URL (default: where you logged in). Env: MODELHOST_URL.")
@click.option("--org", "group_org", envvar="MODELHOST_ORG", help="Default organization. Env: MODELHOST_ORG.")
@click.option("--json", "as_json", is_flag=True, help="Print answers as JSON (every command also takes --json).")
@click.version_option(package_name="modelhost")
@click.pass_context
def cli(ctx: click.Context, url: str | None, group_org: str | None, as_json: bool) -> None:
    """Deploy scikit-learn models to Modelhost, replay traffic against a new version, promote
    and roll back, predict, watch usage and drift.

    \b
    Exit codes: 0 done; 1 other error; 2 wrong arguments; 3 not logged in, key or
    token refused, or not allowed; 4 not found; 5 request refused (bad input, a state
    conflict, too large: 400, 409, 413, 415); 6 model file refused at upload (422);
    7 rate limit or quota (429); 8 platform unreachable or unavailable; 9 batch job,
    replay or drift report failed or cancelled, or not done within --timeout.
    """
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, org=group_org)
    ctx.obj.setdefault("json", as_json)


def _subcommand_org(ctx: click.Context, org: str | None) -> None:
    if org:
        ctx.obj["org"] = org


# --- login -------------------------------------------------------------------------------


@cli.command()
@click.option("--url", "login_url", help="The platform's URL, e.g. https://modelhost.example.com.")
@click.option("--api-key", help="An API key (mh_...). Prompted for, hidden, when neither it nor --email is given.")
@click.option("--email", help="Sign in as a person instead: email and password give a JWT pair.")
@click.option("--password", help="With --email; prompted for, hidden, when left out.")
@org_option
@json_option
@click.pass_context
def login(ctx, login_url, api_key, email, password, org) -> None:
    """Check the credentials and store them (owner-only file) for the next commands."""
    url = (login_url or ctx.obj["url"] or click.prompt("Platform URL", default="http://127.0.0.1:8000")).rstrip("/")
    if email:
        password = password or click.prompt("Password", hide_input=True)
        tokens = Client.obtain_tokens(url, email=email, password=password)
        stored: dict[str, Any] = {"url": url, "email": email, "access": tokens["access"], "refresh": tokens["refresh"]}
    else:
        api_key = api_key or os.environ.get("MODELHOST_API_KEY") or click.prompt("API key", hide_input=True)
        stored = {"url": url, "api_key": api_key.strip()}
    # Check before storing: the credentials are saved only once the platform accepts them.
    previous = os.environ.pop("MODELHOST_API_KEY", None) if email else None
    try:
        saved_before = config.load_credentials()
        path = config.save_credentials(stored)
        try:
            me = Client(url, api_key=stored.get("api_key")).whoami()
        except ModelhostError:
            if saved_before:
                config.save_credentials(saved_before)
            else:
                config.delete_credentials()
            raise
    finally:
        if previous is not None:
            os.environ["MODELHOST_API_KEY"] = previous
    organizations = [o["slug"] for o in me["organizations"]]
    default_org = org or (organizations[0] if len(organizations) == 1 else None)
    if default_org:
        stored["org"] = default_org
        config.save_credentials(stored)
    who = me["user"]["email"] if "user" in me else f"API key {me['api_key']['prefix']} ({me['api_key']['name']})"
    emit(
        ctx,
        {"url": url, "credentials": str(path), "org": default_org, **me},
        lambda: out.print(
            f"Logged in to {url} as {who}; organizations: {', '.join(organizations) or 'none'}"
            f"{f'; default {default_org}' if default_org else ''}.\nCredentials stored in {path} (readable by you only)."
        ),
    )


@cli.command()
@json_option
@click.pass_context
def logout(ctx) -> None:
    """Forget the stored credentials (a JWT's refresh token is also ended on the platform)."""
    stored = config.load_credentials()
    if stored.get("refresh"):
        with contextlib.suppress(ModelhostError), Client(stored["url"]) as client:
            client._send("POST", "/api/v1/auth/logout", json={"refresh": stored["refresh"]})
    removed = config.delete_credentials()
    emit(ctx, {"logged_out": removed}, lambda: out.print("Logged out." if removed else "Not logged in."))


@cli.command()
@json_option
@click.pass_context
def whoami(ctx) -> None:
    """Who the credentials belong to, and their organizations."""
    client = client_for(ctx)
    me = client.whoami()

    def human():
        if "user" in me:
            out.print(f"{me['user']['email']} on {client.url}")
            for o in me["organizations"]:
                out.print(f"  {o['slug']}  {o.get('role') or ''}")
        else:
            key = me["api_key"]
            out.print(
                f"API key {key['prefix']} ({key['name']}) of {me['organizations'][0]['slug']} on {client.url}; scopes: "
                f"{', '.join(key['scopes'])}"
            )

    emit(ctx, {"url": client.url, **me}, human)


# --- registry ----------------------------------------------------------------------------


def _full_name(client: Client, name: str) -> str:
    return name if "/" in name else f"{client.organization()}/{name}"


def _curl_line(client: Client, name: str, version: dict) -> str:
    example = version.get("input_example")
    if isinstance(example, list) and example:
        row = example[0]
    elif isinstance(example, dict):
        row = example
    else:
        row = [0.0] * (version.get("n_features") or 1)
    body = json.dumps({"inputs": [row]}, separators=(",", ":"))
    return (
        f'curl -s {client.endpoint(name)} -H "Authorization: Bearer $MODELHOST_API_KEY" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="The model's name; created when it does not exist.")
@org_option
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Training rows (CSV) for drift reports and the signature.",
)
@click.option(
    "--example",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An input example (JSON): the rows the upload check predicts.",
)
@click.option("--description", default="", help="What this version is.")
@click.option("--metrics", help="Offline metrics as JSON, e.g. '{\"accuracy\": 0.97}'.")
@click.option("--promote", is_flag=True, help="Make the new version production.")
@json_option
@click.pass_context
def deploy(ctx, file, name, org, reference, example, description, metrics, promote) -> None:
    """Upload FILE (joblib, pickle, skops, or an MLflow model folder as .zip) as a new version."""
    _subcommand_org(ctx, org)
    client = client_for(ctx)
    try:
        metrics_value = json.loads(metrics) if metrics else None
    except ValueError as exc:
        raise UsageError(f"--metrics is not valid JSON: {exc}.") from None
    full = _full_name(client, name)
    _, created = client.ensure_model(full)
    if created and not _json_wanted(ctx):
        err.print(f"Created the model {full}.")
    version = client.upload_version(
        full,
        file,
        reference=reference,
        example=example,
        description=description,
        metrics=metrics_value,
        wrap_upload=upload_wrapper(ctx),
    )
    if promote:
        version = client.promote(full, version["number"], reason="deployed with modelhost deploy --promote")
    endpoint = client.endpoint(full)
    curl = _curl_line(client, full, version)

    def human():
        out.print(
            f"Version {version['number']} of {full}: {version['estimator_class'].rsplit('.', 1)[-1]} "
            f"({version['task'] or 'task unknown'}, "
            f"{version['n_features']} features, {version['format']}), checked and accepted."
        )
        for warning in version.get("warnings") or []:
            out.print(f"[yellow]warning[/]: {warning.get('message', warning)}", markup=True)
        if promote:
            out.print(f"Version {version['number']} is production.")
            out.print(f"Endpoint: {endpoint}")
            out.print(curl, markup=False)
        else:
            out.print(f"Stage: {version['stage']}. Make it production with: modelhost promote {full} {version['number']}")

    emit(
        ctx,
        {"model": full, "created": created, "promoted": promote, "version": version, "endpoint": endpoint, "curl": curl},
        human,
    )


def _table(*headers: str) -> Table:
    table = Table(show_edge=False, box=None, pad_edge=False)
    for header in headers:
        table.add_column(header)
    return table


@cli.command()
@org_option
@json_option
@click.pass_context
def models(ctx, org) -> None:
    """The models you can see."""
    found = client_for(ctx).models(org=org)
    table = _table("model", "production", "task", "updated")
    for m in found:
        table.add_row(m["full_name"], str(m["production_version"] or "-"), m["task"] or "", m["updated_at"][:19])
    emit(ctx, found, lambda: out.print(table) if found else out.print("No models yet: modelhost deploy model.joblib --name NAME"))


@cli.command()
@click.argument("model")
@org_option
@json_option
@click.pass_context
def versions(ctx, model, org) -> None:
    """MODEL's versions, newest first."""
    _subcommand_org(ctx, org)
    found = client_for(ctx).versions(model)
    table = _table("version", "stage", "estimator", "format", "sklearn", "created", "by")
    for v in found:
        table.add_row(
            str(v["number"]),
            v["stage"],
            v["estimator_class"],
            v["format"],
            v["sklearn_version"],
            v["created_at"][:19],
            v["created_by"] or "",
        )
    emit(ctx, found, lambda: out.print(table))


@cli.command()
@click.argument("model")
@org_option
@json_option
@click.pass_context
def releases(ctx, model, org) -> None:
    """MODEL's releases: which version became production, when, by whom, why."""
    _subcommand_org(ctx, org)
    found = client_for(ctx).releases(model)
    table = _table("release", "kind", "from", "to", "by", "when", "reason")
    for r in found:
        table.add_row(
            str(r["number"]),
            r["kind"],
            str(r["from_version"] or "-"),
            str(r["to_version"] or "-"),
            r["actor"] or r["actor_api_key"] or "",
            r["created_at"][:19],
            r["reason"],
        )
    emit(ctx, found, lambda: out.print(table))


@cli.command()
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--reason", default="", help="Why, for the release log.")
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=None,
    help="Promote only if the newest replay or live mirror of VERSION against production agrees on at least this share of rows.",
)
@org_option
@json_option
@click.pass_context
def promote(ctx, model, version, reason, min_agreement, org) -> None:
    """Make VERSION of MODEL production (a new release)."""
    _subcommand_org(ctx, org)
    client = client_for(ctx)
    require_replay = {"min_agreement": min_agreement} if min_agreement is not None else None
    answer = client.promote(model, version, reason=reason, require_replay=require_replay)
    emit(
        ctx,
        answer,
        lambda: out.print(f"Version {answer['number']} of {answer['model']} is production. Endpoint: {client.endpoint(model)}"),
    )


@cli.command()
@click.argument("model")
@click.option("--reason", default="", help="Why, for the release log.")
@org_option
@json_option
@click.pass_context
def rollback(ctx, model, reason, org) -> None:
    """Put MODEL's previous production version back in production (a new release)."""
    _subcommand_org(ctx, org)
    release = client_for(ctx).rollback(model, reason=reason)
    emit(
        ctx,
        release,
        lambda: out.print(
            f"Release {release['number']}: production is version {release['to_version']} again (was {release['from_version']})."
        ),
    )


# --- predictions -------------------------------------------------------------------------


def _number_or_text(value: str) -> Any:
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _rows_from_file(path: Path) -> list:
    """Rows of a small CSV (header row; numbers parsed, empty cells missing) or JSON lines file."""
    text = path.read_text()
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        return data["inputs"] if isinstance(data, dict) and "inputs" in data else data
    return [{key: _number_or_text(value) for key, value in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _show_predictions(answer: dict) -> None:
    out.print(
        f"{answer['model']} version {answer['version']}{' (' + answer['variant'] + ')' if answer.get('variant') else ''}, "
        f"{answer['latency_ms']} ms{', cached' if answer.get('cache_hit') else ''}; id {answer['id']}"
    )
    probabilities = answer.get("probabilities")
    classes = answer.get("classes")
    table = _table("row", "prediction", *([f"p({c})" for c in classes] if probabilities and classes else []))
    for index, prediction in enumerate(answer["predictions"]):
        extra = (
            [f"{p:.4f}" for p in probabilities[index]]
            if probabilities and classes and isinstance(probabilities[index], list)
            else []
        )
        table.add_row(str(index), json.dumps(prediction), *extra)
    out.print(table)


def _follow_job(ctx: click.Context, client: Client, job: dict) -> dict:
    """Wait for a batch job with a row progress bar; answers it, or raises JobFailed."""
    columns = (
        TextColumn("Batch job {task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:.0f}/{task.total} rows"),
        TimeRemainingColumn(),
    )
    with _progress(ctx, *columns) as progress:
        task = progress.add_task(f"{job['id']}", total=job.get("rows_total") or None)

        def update(current: dict) -> None:
            progress.update(
                task,
                total=current.get("rows_total") or None,
                completed=current.get("rows_done") or 0,
                description=f"{current['id']} {current['status']}",
            )

        return client.wait_for_job(job["id"], on_progress=update)


@cli.command()
@click.argument("model")
@click.option("--data", help="Rows as JSON: [[5.1, 3.5, 1.4, 0.2]], or objects keyed by feature name.")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV with a header (or JSON lines) of rows.",
)
@click.option("--version", type=click.IntRange(min=1), help="This version rather than production.")
@click.option("--probabilities", is_flag=True, help="Class probabilities too.")
@click.option(
    "--batch",
    "force_batch",
    is_flag=True,
    help=f"Score --file as a batch job even when small (files over {INLINE_FILE_BYTES // 1024} KiB always are).",
)
@click.option("--wait", is_flag=True, help="Wait for the batch job and download its result.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where --wait writes the result (default: FILE's name + .predictions).",
)
@org_option
@json_option
@click.pass_context
def predict(ctx, model, data, file, version, probabilities, force_batch, wait, output, org) -> None:
    """Predict rows with MODEL's production version (or --version)."""
    _subcommand_org(ctx, org)
    if (data is None) == (file is None):
        raise click.UsageError("Give the rows with exactly one of --data and --file.")
    client = client_for(ctx)
    if file is not None and (force_batch or file.stat().st_size > INLINE_FILE_BYTES):
        job = client.submit_batch(model, file, version=version, probabilities=probabilities, wrap_upload=upload_wrapper(ctx))
        if not wait:
            emit(
                ctx,
                job,
                lambda: out.print(
                    f"Batch job {job['id']} {job['status']} ({job['rows_total'] or '?'} rows). "
                    f"Follow it with: modelhost job {job['id']} --wait"
                ),
            )
            return
        job = _follow_job(ctx, client, job)
        target = output or file.with_name(f"{file.stem}.predictions{file.suffix or '.csv'}")
        client.download_result(job["id"], target)
        emit(
            ctx,
            {**job, "output": str(target)},
            lambda: out.print(f"Batch job {job['id']} succeeded: {job['rows_done']} rows written to {target}"),
        )
        return
    try:
        rows = json.loads(data) if data is not None else _rows_from_file(file)
    except ValueError as exc:
        raise UsageError(f"{'--data' if data is not None else str(file)} is not valid JSON: {exc}.") from None
    answer = client.predict_raw(model, rows, version=version, probabilities=probabilities)
    emit(ctx, answer, lambda: _show_predictions(answer))


@cli.command()
@click.argument("job_id", type=int)
@click.option("--wait", is_flag=True, help="Wait until it ends (with a progress bar) and download the result.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the result (default: batch-job-ID-result.csv).",
)
@json_option
@click.pass_context
def job(ctx, job_id, wait, output) -> None:
    """A batch job's state; with --wait, follow it to the end and download its result."""
    client = client_for(ctx)
    current = client.batch_job(job_id)
    if wait:
        current = _follow_job(ctx, client, current)
    if current["status"] == "succeeded" and (wait or output):
        target = output or Path(f"batch-job-{job_id}-result.{current['format']}")
        client.download_result(job_id, target)
        current = {**current, "output": str(target)}
    emit(
        ctx,
        current,
        lambda: out.print(
            f"Batch job {job_id}: {current['status']}, {current['rows_done']}/{current['rows_total'] or '?'} rows"
            + (f"; result in {current['output']}" if "output" in current else "")
            + (f"; {current['error']}" if current.get("error") else "")
        ),
    )


# --- monitoring --------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--granularity", type=click.Choice(["hour", "day"]), default="hour", show_default=True)
@click.option("--start", help="ISO date or time (default: the platform's, the last day or month).")
@click.option("--end", help="ISO date or time.")
@org_option
@json_option
@click.pass_context
def usage(ctx, model, granularity, start, end, org) -> None:
    """MODEL's requests, rows, errors, cache hits and latency per hour or day (from the worker's rollups)."""
    _subcommand_org(ctx, org)
    report = client_for(ctx).usage(model, start=start, end=end, granularity=granularity)

    def human():
        out.print(f"{report['model']} from {report['start']} to {report['end']}, per {report['granularity']}")
        if not report["buckets"]:
            out.print("No traffic in this window yet (rollups run every few minutes).")
            return
        table = _table("start", "requests", "rows", "errors", "cache hits", "p50 ms", "p95 ms", "p99 ms")
        for b in report["buckets"]:
            lat = b["latency_ms"]
            table.add_row(
                str(b["start"])[:19],
                str(b["requests"]),
                str(b["rows"]),
                str(b["errors"]),
                str(b["cache_hits"]),
                *(f"{lat[p]:.1f}" if lat[p] is not None else "-" for p in ("p50", "p95", "p99")),
            )
        out.print(table)

    emit(ctx, report, human)


@cli.command()
@click.argument("model")
@click.option("--run", "run_now", is_flag=True, help="Run a report now on the worker and wait for its verdict.")
@click.option("--version", type=click.IntRange(min=1), help="With --run: this version (default production).")
@click.option("--window-hours", type=click.IntRange(min=1), help="With --run: the window of served inputs.")
@click.option("--timeout", default=300.0, show_default=True, help="With --run: seconds to wait.")
@org_option
@json_option
@click.pass_context
def drift(ctx, model, run_now, version, window_hours, timeout, org) -> None:
    """MODEL's drift reports (newest first); --run asks for one now and shows its features."""
    _subcommand_org(ctx, org)
    client = client_for(ctx)
    if not run_now:
        reports = client.drift_reports(model)
        table = _table("report", "version", "status", "drift", "drifted features", "window end", "trigger")
        for r in reports:
            verdict = "-" if r["is_drift"] is None else ("yes" if r["is_drift"] else "no")
            table.add_row(
                str(r["id"]),
                str(r["version"]),
                r["status"],
                verdict,
                f"{r['drifted_features'] if r['drifted_features'] is not None else '-'}/{r['n_features'] or '-'}",
                str(r["window_end"])[:19],
                r["trigger"],
            )
        emit(
            ctx, reports, lambda: out.print(table) if reports else out.print("No drift reports yet: modelhost drift MODEL --run")
        )
        return
    report = client.request_drift_report(model, version=version, window_hours=window_hours)
    with err.status(f"Drift report {report['id']} {report['status']}...") if not _json_wanted(ctx) else contextlib.nullcontext():
        report = client.wait_for_drift_report(report["id"], timeout=timeout)

    def human():
        out.print(
            f"Drift report {report['id']}: {'DRIFT' if report['is_drift'] else 'no drift'} "
            f"({report['drifted_features']}/{report['n_features']} features drifted; {report['current_rows']} rows "
            f"served vs {report['reference_rows']} reference)"
        )
        table = _table("feature", "test", "statistic", "p-value", "PSI", "drifted")
        for feature in report.get("features") or []:
            table.add_row(
                feature["name"],
                feature["test"] or "-",
                _fmt(feature["statistic"]),
                _fmt(feature["p_value"]),
                _fmt(feature["psi"]),
                "yes" if feature["drifted"] else "no",
            )
        out.print(table)

    emit(ctx, report, human)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _share(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _show_replay(replay: dict) -> None:
    report = replay["report"]
    candidate = f"version {replay['version']}"
    out.print(
        f"Replay {replay['id']} of {replay['model']}: {candidate} against production (version {replay['baseline_version']}) "
        f"on {report['rows_total']} rows served, {report['rows_compared']} compared."
    )
    detail = report["agreement_detail"]
    if report["task"] == "classification":
        out.print(f"Agreement: {_share(report['agreement'])} ({detail['agreeing']} rows give the same label).")
    else:
        absolute = detail.get("absolute") or {}
        out.print(
            f"Agreement: {_share(report['agreement'])} (within {detail['rtol']:g} of production); differences: mean "
            f"{_fmt(detail.get('mean'))}, "
            f"absolute p50 {_fmt(absolute.get('p50'))}, p95 {_fmt(absolute.get('p95'))}, p99 {_fmt(absolute.get('p99'))}."
        )
    failures = report["failures"]
    out.print(
        f"Failed rows: {failures['candidate_only']} on {candidate} only, {failures['production_only']} on production "
        f"only, {failures['both']} on both."
    )
    for error in failures["first"].get("candidate_only") or []:
        out.print(f"  {error['prediction_id']}: {error['message']} ({error['code']})", markup=False)
    latency = report["latency"]
    if latency["production"]["per_1000_rows_ms"] is not None:
        out.print(
            f"Latency per 1000 rows: production {latency['production']['per_1000_rows_ms']:.1f} ms, {candidate} "
            f"{latency['candidate']['per_1000_rows_ms']:.1f} ms ({latency['ratio']:.2f}x)."
        )
    feedback = report.get("feedback")
    if feedback and feedback.get("rows"):
        metric = feedback["metric"]
        shown = _share if metric == "accuracy" else _fmt
        difference = feedback["difference"]
        out.print(
            f"On {feedback['rows']} rows with feedback, {metric}: production {shown(feedback['production']['value'])}, "
            f"{candidate} "
            f"{shown(feedback['candidate']['value'])}; difference {shown(difference['value'])} (p = "
            f"{_fmt(difference['p_value'])})."
        )


@cli.command()
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--last", type=click.IntRange(min=1), help="Replay production's newest N recorded rows (default: the platform's).")
@click.option("--window-hours", type=click.IntRange(min=1), help="Only rows served in the last this many hours.")
@click.option("--wait", is_flag=True, help="Follow the replay with a progress bar and print its report.")
@click.option("--timeout", default=600.0, show_default=True, help="With --wait: seconds to wait.")
@org_option
@json_option
@click.pass_context
def replay(ctx, model, version, last, window_hours, wait, timeout, org) -> None:
    """Replay the inputs MODEL's production served against VERSION, before promoting it."""
    _subcommand_org(ctx, org)
    client = client_for(ctx)
    started = client.replay(model, version, last=last, window_hours=window_hours)
    if not wait:
        emit(
            ctx,
            started,
            lambda: out.print(
                f"Replay {started['id']} of {started['model']} version {started['version']} {started['status']}. "
                f"Follow it with: modelhost replay-status {started['model']} {started['version']} {started['id']}"
            ),
        )
        return
    columns = (
        TextColumn("Replay {task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:.0f}/{task.total} rows"),
        TimeRemainingColumn(),
    )
    with _progress(ctx, *columns) as progress:
        task = progress.add_task(f"{started['id']}", total=started.get("rows_total") or None)

        def update(current: dict) -> None:
            progress.update(
                task,
                total=current.get("rows_total") or None,
                completed=current.get("rows_done") or 0,
                description=f"{current['id']} {current['status']}",
            )

        finished = client.wait_for_replay(model, version, started["id"], timeout=timeout, on_progress=update)
    emit(ctx, finished, lambda: _show_replay(finished))


@cli.command("replay-status")
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@click.argument("replay_id", type=click.IntRange(min=1))
@click.option("--wait", is_flag=True, help="Wait until it ends and print its report.")
@click.option("--timeout", default=600.0, show_default=True, help="With --wait: seconds to wait.")
@org_option
@json_option
@click.pass_context
def replay_status(ctx, model, version, replay_id, wait, timeout, org) -> None:
    """A replay's state and progress, and its report once done."""
    _subcommand_org(ctx, org)
    client = client_for(ctx)
    current = (
        client.wait_for_replay(model, version, replay_id, timeout=timeout)
        if wait
        else client.replay_of(model, version, replay_id)
    )

    def human():
        if current["status"] == "done":
            _show_replay(current)
        else:
            out.print(
                f"Replay {replay_id}: {current['status']}, {current['rows_done']}/{current['rows_total'] or '?'} rows"
                + (f"; {current['error']}" if current.get("error") else "")
            )

    emit(ctx, current, human)
    if current["status"] == "failed":
        raise JobFailed(f"Replay {replay_id} failed: {current.get('error') or 'no reason given'}", job=current)


def main() -> None:
    cli(obj={}, prog_name="modelhost")


if __name__ == "__main__":
    main()
