"""A data scientist's day in a real browser (Debian's Chromium driven by Playwright) against
the live server and the real database: sign up, create a key, upload a joblib model (file
input, then drag-and-drop), try it, promote, roll back; then, with a real Celery worker and
beat, see the usage chart count the tries and score a file as a batch job. Every page passes
axe-core with no serious or critical violation, fits a phone's width, and is saved as a
screenshot."""

from __future__ import annotations

import base64
import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import redis
from axe_playwright_python.sync_playwright import Axe
from django.core import mail
from playwright.sync_api import Page, expect

from registry.tests.factories import IRIS_FEATURES, IRIS_ROW, iris_data, iris_model, joblib_bytes, upload_file

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-enough-passphrase-42"
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
_axe = Axe()
# The outermost elements that stick out of the window on the right, for the failure message.
WIDEST = """[...document.querySelectorAll("body *")]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
    && !(e.parentElement.getBoundingClientRect().right > window.innerWidth + 1))
  .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.className ? "." + e.className : ""))"""


def check_page(page: Page, folder, name: str) -> None:
    """A screenshot; axe-core finds nothing serious or critical; the page fits its width."""
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    results = _axe.run(page)
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{name}: " + "; ".join(f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}" for v in bad)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} is {overflow}px wider than the window, because of {page.evaluate(WIDEST)}"


def confirm_dialog(page: Page, reason: str | None = None) -> None:
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    if reason is not None:
        page.fill("#confirm-reason", reason)
    with page.expect_navigation():
        page.click("#confirm-ok")


def test_sign_up_upload_try_promote_and_roll_back(browser, web, screenshots_dir, tmp_path):
    model_file = tmp_path / "iris.joblib"
    model_file.write_bytes(joblib_bytes(iris_model()))
    example = json.dumps([dict(zip(IRIS_FEATURES, IRIS_ROW, strict=True))])
    context = browser.new_context(viewport=DESKTOP, base_url=web.url)
    page = context.new_page()

    # Sign up: the first organization opens, with no models yet.
    page.goto("/signup/")
    check_page(page, screenshots_dir, "signup")
    page.fill("#id_email", "ada@example.com")
    page.fill("#id_name", "Ada")
    page.fill("#id_organization", "Acme Lab")
    page.fill("#id_password", "short")
    page.click("button[type=submit].primary")
    expect(page.locator("#error-password")).to_contain_text("too short")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit].primary")
    expect(page.locator("#signup-sent")).to_contain_text("Check your inbox: we sent a message to ada@example.com.")
    check_page(page, screenshots_dir, "signup-sent")
    (message,) = mail.outbox  # the live server runs in this process: its email lands here
    page.goto(re.search(r"https?://[^/\s]+(/signup/confirm/\S+/)", message.body).group(1))
    check_page(page, screenshots_dir, "signup-confirm")
    page.click("text=Confirm and open Modelhost")
    expect(page).to_have_url(re.compile(r"/orgs/acme-lab/$"))
    page.fill("#id_name", "iris")
    page.fill("#id_description", "Iris flowers, logistic regression")
    check_page(page, screenshots_dir, "models")
    page.click("text=Create model")
    expect(page).to_have_url(re.compile(r"/models/acme-lab/iris/$"))

    # Upload through the page: XMLHttpRequest to the REST endpoint, with a progress bar.
    page.set_input_files("#id_file", str(model_file))
    page.fill("#id_input_example", example)
    page.fill("#id_metrics", '{"accuracy": 0.97}')
    page.click("#upload-submit")
    expect(page.locator("#upload-status")).to_have_text("Version 1 uploaded and checked.", timeout=30_000)
    expect(page.locator("#upload-bar")).to_have_attribute("value", "100")
    expect(page.locator("#version-1")).to_contain_text("LogisticRegression")
    expect(page.locator("#version-1")).to_contain_text("accuracy: 0.97")

    # A bad field comes back next to the field, from the API's problem+json.
    page.set_input_files("#id_file", str(model_file))
    page.fill("#id_metrics", '{"accuracy": "high"}')
    page.click("#upload-submit")
    expect(page.locator("#error-metrics")).to_have_text("expected a number")
    page.fill("#id_metrics", "")

    # Drag and drop the second version onto the drop zone.
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "application/octet-stream"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [base64.b64encode(model_file.read_bytes()).decode(), "iris-v2.joblib"],
    )
    expect(page.locator("#dropzone")).to_contain_text("Chosen: iris-v2.joblib")
    page.fill("#id_input_example", example)
    page.click("#upload-submit")
    expect(page.locator("#upload-status")).to_have_text("Version 2 uploaded and checked.", timeout=30_000)
    expect(page.locator("#version-2")).to_be_visible()

    # Create an API key; its secret is shown once.
    page.click("nav.tabs >> text=API keys")
    page.fill("#id_name", "notebook")
    page.fill("#id_expires_on", "2099-12-31")
    page.click("text=Create key")
    secret = page.input_value("#new-key")
    assert re.fullmatch(r"mh_[A-Za-z0-9]+_[A-Za-z0-9_-]+", secret), secret
    page.click("[data-copy='#new-key']")
    expect(page.locator("[data-copy='#new-key']")).to_contain_text("Copied")
    check_page(page, screenshots_dir, "api-keys")
    page.goto("/orgs/acme-lab/api-keys/")
    assert secret not in page.content()
    expect(page.locator("table")).to_contain_text("notebook")

    # Try version 1: the form is generated from the signature and prefilled from the example.
    page.goto("/models/acme-lab/iris/")
    page.click("#version-1 >> text=Try it")
    expect(page.locator("label[for=col-2]")).to_contain_text("petal_length")
    expect(page.locator("#col-0")).to_have_value("5.1")
    page.click("text=Predict")
    expect(page.locator("#try-result .prediction")).to_have_text("Prediction: 0")
    expect(page.locator("#try-result .bars li")).to_have_count(3)
    expect(page.locator("#try-result")).to_contain_text("miss")
    page.click("text=Predict")
    expect(page.locator("#try-result")).to_contain_text("hit")
    check_page(page, screenshots_dir, "try-it")
    # A bad value is named next to its field.
    page.fill("#col-3", "")
    page.click("text=Predict")
    expect(page.locator("#error-col-3")).not_to_be_empty()

    # Promote version 1 with the keyboard only: focus, Enter, the dialog, Enter.
    page.goto("/models/acme-lab/iris/")
    page.focus("#version-1 button:has-text('Promote')")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-ok")).to_be_focused()
    page.fill("#confirm-reason", "first release")
    page.focus("#confirm-ok")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("#version-1 .badge")).to_have_text("Production")

    # Cancelling the dialog changes nothing.
    page.click("#version-2 button:has-text('Promote')")
    page.click("#confirm-dialog button[value=cancel]")
    expect(page.locator("#version-2 .badge")).to_have_text("None")

    page.click("#version-2 button:has-text('Promote')")
    confirm_dialog(page, reason="better recall")
    expect(page.locator("#version-2 .badge")).to_have_text("Production")
    expect(page.locator("#version-1 .badge")).to_have_text("Archived")

    # Programs see the promotion with the key created above.
    def production_version() -> int:
        answer = context.request.post(
            f"{web.url}/api/v1/models/acme-lab/iris/predict", headers={"X-API-Key": secret}, data={"inputs": [IRIS_ROW]}
        )
        assert answer.status == 200, answer.text()
        return answer.json()["version"]

    assert production_version() == 2

    # Roll back: version 1 serves again, as release 3.
    page.click("text=Roll back to v1")
    confirm_dialog(page, reason="v2 regressed")
    expect(page.locator(".messages")).to_contain_text("version 1 in production")
    expect(page.locator("#version-1 .badge")).to_have_text("Production")
    releases = page.locator("section[aria-labelledby=releases-title] tbody tr")
    expect(releases).to_have_count(3)
    expect(releases.first).to_contain_text("Rollback")
    expect(releases.first).to_contain_text("v2 regressed")
    assert production_version() == 1
    check_page(page, screenshots_dir, "model")

    # Search swaps only the results (htmx) and keeps the query in the address bar.
    page.goto("/orgs/acme-lab/")
    page.fill("#model-search", "zz")
    expect(page.locator("#model-results")).to_contain_text("No model's name contains “zz”")
    page.fill("#model-search", "ir")
    expect(page.locator("#model-results a")).to_have_text("iris")
    expect(page).to_have_url(re.compile(r"\?q=ir$"))

    # The organization's other pages.
    for path, name in [
        ("/orgs/acme-lab/members/", "members"),
        ("/orgs/acme-lab/audit/", "audit-log"),
        ("/orgs/acme-lab/settings/", "settings"),
        ("/password/", "password"),
        ("/", "organizations"),
    ]:
        page.goto(path)
        check_page(page, screenshots_dir, name)
    expect(page.locator("table")).to_contain_text("Acme Lab")

    # At phone width the model and Try it pages still fit.
    page.set_viewport_size(PHONE)
    page.goto("/models/acme-lab/iris/")
    check_page(page, screenshots_dir, "model-phone")
    page.goto("/models/acme-lab/iris/versions/1/try/")
    check_page(page, screenshots_dir, "try-it-phone")
    context.close()


def test_log_in_out_and_not_found(browser, web, screenshots_dir, tenant_a):
    from accounts.tests.factories import PASSWORD as OWNER_PASSWORD

    context = browser.new_context(viewport=PHONE, base_url=web.url)
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    check_page(page, screenshots_dir, "login")
    page.fill("#id_username", "owner@acme.example")
    page.fill("#id_password", OWNER_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Your organizations")
    page.select_option("#org-switcher", "acme")
    page.click(".switcher button")
    expect(page).to_have_url(re.compile(r"/orgs/acme/$"))
    page.goto("/models/acme/missing/")
    expect(page.locator("h1")).to_have_text("Not found")
    check_page(page, screenshots_dir, "not-found")
    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/login/$"))
    context.close()


def test_try_it_answers_a_string_label_model_with_its_labels(browser, web, tenant_a):
    """A pipeline on a string column, fitted on "churn"/"stay": the form takes the string, the answer names the label."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from accounts.tests.factories import PASSWORD as OWNER_PASSWORD

    frame = pd.DataFrame({"plan": ["basic", "pro"] * 20, "visits": list(range(40))})
    label = np.where(frame["plan"] == "basic", "churn", "stay")
    columns = ColumnTransformer([("plan", OneHotEncoder(), ["plan"])], remainder="passthrough")
    model = Pipeline([("columns", columns), ("model", LogisticRegression(C=10.0))]).fit(frame, label)
    client = tenant_a.jwt_client()
    assert client.post("/api/v1/models", {"org": "acme", "name": "churn"}, format="json").status_code == 201
    example = json.dumps([{"plan": "basic", "visits": 3}])
    uploaded = client.post(
        "/api/v1/models/acme/churn/versions",
        {"file": upload_file(joblib_bytes(model), "churn.joblib"), "input_example": example},
        format="multipart",
    )
    assert uploaded.status_code == 201, uploaded.content

    context = browser.new_context(viewport=DESKTOP, base_url=web.url)
    page = context.new_page()
    page.goto("/login/")
    page.fill("#id_username", "owner@acme.example")
    page.fill("#id_password", OWNER_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Your organizations")
    page.goto("/models/acme/churn/versions/1/try/")
    expect(page.locator("#col-0")).to_have_value("basic")
    expect(page.locator("#col-0")).to_have_attribute("type", "text")
    page.click("text=Predict")
    expect(page.locator("#try-result .prediction")).to_have_text("Prediction: churn")
    expect(page.locator("#try-result .bars .bar-label")).to_have_text(["churn", "stay"])
    expect(page.locator("#try-result .bars .fill.top")).to_have_count(1)
    page.fill("#col-0", "pro")
    page.click("text=Predict")
    expect(page.locator("#try-result .prediction")).to_have_text("Prediction: stay")
    context.close()


def test_try_it_shows_each_features_contribution_as_a_chart(browser, web, screenshots_dir, tenant_a):
    """A forest's prediction explained by TreeSHAP in its runner; a linear model without
    reference data still answers, and says why it has no explanation."""
    from sklearn.ensemble import RandomForestClassifier

    from accounts.principals import Caller
    from accounts.tests.factories import PASSWORD as OWNER_PASSWORD
    from registry import artifacts, services
    from registry.models import ModelVersion
    from registry.tests.factories import create_version

    x, y = iris_data()
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(pd.DataFrame(x, columns=IRIS_FEATURES), y)
    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="forest")
    version = create_version(model, forest, promote=True)
    reference = artifacts.store_bytes(
        pd.DataFrame(x, columns=IRIS_FEATURES).to_csv(index=False).encode(), f"orgs/{model.organization_id}/reference-forest.csv"
    )
    ModelVersion.objects.filter(id=version.id).update(
        input_example=[dict(zip(IRIS_FEATURES, [6.7, 3.0, 5.2, 2.3], strict=True))], reference_data=reference
    )
    linear = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="plain")
    plain = create_version(linear, promote=True)
    ModelVersion.objects.filter(id=plain.id).update(input_example=[IRIS_ROW])

    context = browser.new_context(viewport=DESKTOP, base_url=web.url)
    page = context.new_page()
    page.goto("/login/")
    page.fill("#id_username", "owner@acme.example")
    page.fill("#id_password", OWNER_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Your organizations")
    page.goto("/models/acme/forest/versions/1/try/")
    expect(page.locator("#try-explain")).to_be_checked()
    page.click("button:has-text('Predict')")
    expect(page.locator("#try-result .prediction")).to_have_text("Prediction: 2")
    expect(page.locator("#explain-title")).to_have_text("Why: contributions to the probability of the predicted class")
    bars = page.locator("#try-result .contrib li")
    expect(bars).to_have_count(4)
    labels = page.locator("#try-result .contrib .bar-label").all_inner_texts()
    assert sorted(labels) == sorted(IRIS_FEATURES)
    values = [float(text) for text in page.locator("#try-result .contrib .bar-value").all_inner_texts()]
    assert [abs(v) for v in values] == sorted((abs(v) for v in values), reverse=True)  # largest first
    assert page.locator("#try-result .contrib .fill.up").count() + page.locator("#try-result .contrib .fill.down").count() == 4
    summary = page.locator("#explain-sum").inner_text()
    match = re.fullmatch(r"Base value (-?[0-9.]+) \+ contributions = (-?[0-9.]+) \(tree shap\)\.", summary)
    assert match, summary
    probability = forest.predict_proba(pd.DataFrame([[6.7, 3.0, 5.2, 2.3]], columns=IRIS_FEATURES))[0, 2]
    assert abs(float(match.group(2)) - probability) < 1e-3
    assert abs(float(match.group(1)) + sum(values) - probability) < 5e-3  # the figures shown are rounded to 3 places
    check_page(page, screenshots_dir, "try-it-explained")

    page.goto("/models/acme/forest/")  # the model page loads the production version's global importance
    expect(page.locator("#importance .importance li")).to_have_count(4)
    expect(page.locator("#importance")).to_contain_text("over 100 rows of its reference data (tree shap explainer)")
    assert page.locator("#importance .bar-label").first.inner_text() in ("petal_length", "petal_width")
    check_page(page, screenshots_dir, "model-importance")

    page.goto("/models/acme/plain/versions/1/try/")  # a linear model without reference data: not offered, and why
    expect(page.locator("#try-explain")).to_be_disabled()
    expect(page.locator("#try-explain")).not_to_be_checked()
    expect(page.locator("#try-explain-why")).to_have_text(
        "This version has no reference data to compare with: upload one with reference_data to explain it."
    )
    page.click("button:has-text('Predict')")
    expect(page.locator("#try-result .prediction")).to_have_text("Prediction: 0")
    expect(page.locator("#try-result .facts")).to_be_visible()
    expect(page.locator("#try-result .contrib")).to_have_count(0)
    expect(page.locator("#try-explain-note")).to_have_count(0)

    # A model shap's TreeExplainer refuses (multiclass gradient boosting) and no reference data:
    # offered, refused with 422, answered without it, and the reason shown.
    from sklearn.ensemble import GradientBoostingClassifier

    boosted = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="boosted")
    version = create_version(boosted, GradientBoostingClassifier(n_estimators=5, random_state=0).fit(x, y), promote=True)
    ModelVersion.objects.filter(id=version.id).update(input_example=[IRIS_ROW])
    page.goto("/models/acme/boosted/versions/1/try/")
    expect(page.locator("#try-explain")).to_be_checked()
    page.click("button:has-text('Predict')")
    expect(page.locator("#try-result .prediction")).to_have_text("Prediction: 0")
    expect(page.locator("#try-explain-note")).to_have_text(
        "No explanation: The sampling explainer compares each row with the version's reference data, and this version has none: "
        "upload the version again with reference_data (a CSV of training-like rows)."
    )
    context.close()


# ---------------------------------------------------------------------------- with real workers


@pytest.fixture
def workers(django_db_setup):
    """Real Celery processes on the test database. Beat drains the prediction stream every half
    second and rolls usage up every second (production: 2 s and 5 min); the rest waits an hour."""
    from platform_site.tests.workers import WorkerPool, publishing_to, worker_broker_url

    broker = worker_broker_url()
    redis.Redis.from_url(broker).flushdb()
    hour = "3600"
    pool = WorkerPool(
        broker=broker,
        env={
            "RECORD_DRAIN_SECONDS": "0.5",
            "ANALYTICS_ROLLUP_SECONDS": "1",
            "ANALYTICS_QUALITY_SECONDS": hour,
            "ANALYTICS_DRIFT_SCHEDULE_SECONDS": hour,
            "ANALYTICS_PRUNE_SECONDS": hour,
            "BATCH_REQUEUE_SECONDS": hour,
        },
    )
    try:
        with publishing_to(broker):
            yield pool
    finally:
        pool.stop()  # before the test database is dropped: the workers hold connections to it
        redis.Redis.from_url(broker).flushdb()


@pytest.fixture
def iris_in_production(tenant_a):
    from accounts.principals import Caller
    from registry import services
    from registry.models import ModelVersion
    from registry.tests.factories import create_version

    model = services.create_model(caller=Caller(user=tenant_a.user), organization=tenant_a.organization, name="iris")
    version = create_version(model, promote=True)
    ModelVersion.objects.filter(id=version.id).update(input_example=[IRIS_ROW])
    return model


def reload_until(page: Page, locator: str, text: str, *, timeout: float = 20) -> None:
    """Reload until `locator` reads `text` (figures that the worker's next rollup brings)."""
    deadline = time.monotonic() + timeout
    while page.locator(locator).inner_text().strip() != text:
        assert time.monotonic() < deadline, f"{locator} still reads {page.locator(locator).inner_text()!r}, not {text!r}"
        time.sleep(0.3)
        page.reload()


def test_usage_counts_the_tries_and_a_batch_job_runs_on_a_worker(
    browser, web, screenshots_dir, tenant_a, iris_in_production, workers, settings, tmp_path
):
    from accounts.tests.factories import PASSWORD as OWNER_PASSWORD

    settings.BATCH_CHUNK_ROWS = 40  # five chunks for the 200 rows below
    (ingest_and_rollup,) = workers.start("analytics", queues="default,analytics,ingest")
    workers.start_beat()
    rows = np.round(iris_data()[0][::3][:50].repeat(4, axis=0), 2)  # 200 rows
    rows_file = tmp_path / "flowers.csv"
    pd.DataFrame(rows, columns=IRIS_FEATURES).to_csv(rows_file, index=False)
    context = browser.new_context(viewport=DESKTOP, base_url=web.url, accept_downloads=True)
    page = context.new_page()
    page.goto("/login/")
    page.fill("#id_username", "owner@acme.example")
    page.fill("#id_password", OWNER_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Your organizations")

    # Try the model twice: a miss, then a hit from the prediction cache.
    page.goto("/models/acme/iris/versions/1/try/")
    page.click("text=Predict")
    expect(page.locator("#try-result")).to_contain_text("miss")
    page.click("text=Predict")
    expect(page.locator("#try-result")).to_contain_text("hit")

    # The usage page counts both once the worker has drained the records and rolled them up.
    page.goto("/models/acme/iris/")
    page.click("nav.subtabs >> text=Usage")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/usage/$"))
    ingest_and_rollup.wait_ready()
    reload_until(page, "#usage-totals div:first-child dd", "2")
    expect(page.locator("#usage-totals")).to_contain_text("Cache hit rate50%")
    expect(page.locator("#chart-traffic svg desc")).to_contain_text("2 requests and 0 errors in all")
    expect(page.locator("#chart-traffic svg polyline, #chart-traffic svg circle").first).to_be_visible()
    expect(page.locator("#usage-table tbody tr")).to_have_count(1)
    check_page(page, screenshots_dir, "usage")

    # Submit a file as a batch job; no worker takes batch tasks yet, so it waits, queued.
    page.click("nav.subtabs >> text=Batch jobs")
    expect(page.locator("#no-batch-jobs")).to_be_visible()
    page.click("#batch-form button[type=submit]")
    expect(page.locator("#error-file")).to_have_text("This field is required.")
    page.set_input_files("#id_file", str(rows_file))
    page.check("#id_probabilities")
    check_page(page, screenshots_dir, "batch-jobs")
    page.click("#batch-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/batch-jobs/\d+/$"))
    expect(page.locator("#job-summary")).to_contain_text("Queued")
    expect(page.locator("#job-progress")).to_have_attribute("value", "0")

    # Cancel asks first; keeping it running changes nothing.
    page.click("#job-status button:has-text('Cancel job')")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-message")).to_contain_text("Rows not scored yet are dropped")
    page.click("#confirm-dialog button:has-text('Keep it running')")
    expect(page.locator("#confirm-dialog")).to_be_hidden()

    # A batch worker starts: the page follows the job by itself to 100 %, then stops asking.
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if request.headers.get("hx-request") else None)
    workers.ensure("batch", queues="batch")
    expect(page.locator("#job-summary")).to_contain_text("Succeeded", timeout=30_000)
    expect(page.locator("#job-progress")).to_have_attribute("value", "100")
    expect(page.locator("#job-percent")).to_have_text("100%")
    expect(page.locator("#job-summary")).to_contain_text("200 of 200 rows done")
    expect(page.locator("#job-status button:has-text('Cancel job')")).to_have_count(0)
    assert polls, "the status block was never refreshed"
    seen = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == seen, "the page still polls a finished job"

    with page.expect_download() as download:
        page.click("#job-download")
    result = pd.read_csv(download.value.path())
    assert len(result) == 200
    assert list(result.columns) == [*IRIS_FEATURES, "prediction", "probability_0", "probability_1", "probability_2"]
    np.testing.assert_allclose(result[IRIS_FEATURES].to_numpy(), rows)
    np.testing.assert_array_equal(result["prediction"].to_numpy(), iris_model().predict(rows))
    check_page(page, screenshots_dir, "batch-job")

    page.click("nav.tabs >> text=Batch jobs")
    expect(page).to_have_url(re.compile(r"/orgs/acme/batch-jobs/$"))
    expect(page.locator("#batch-jobs tbody tr")).to_have_count(1)
    expect(page.locator("#batch-jobs tbody tr")).to_contain_text("Succeeded")
    check_page(page, screenshots_dir, "org-batch-jobs")

    # The job's rows are usage too: the next rollup adds them.
    page.goto("/models/acme/iris/usage/")
    reload_until(page, "#usage-totals div:nth-child(2) dd", "202")
    job_url = page.url.replace("/usage/", "/batch-jobs/")

    # At a small phone's width the new pages still fit.
    page.set_viewport_size(SMALL_PHONE)
    check_page(page, screenshots_dir, "usage-phone")
    page.goto(job_url)
    check_page(page, screenshots_dir, "batch-jobs-phone")
    page.click("#batch-jobs tbody a")
    check_page(page, screenshots_dir, "batch-job-phone")
    context.close()
