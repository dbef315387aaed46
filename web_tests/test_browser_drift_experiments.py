"""A data scientist's experiment, drift report and model delete in a real browser: start an
A/B test through the form, read its results, promote the winner, run a drift report and read
its bars and histograms, follow the typed values in Try it's snippets, delete the model.
Each new page passes axe-core, fits a 375 px phone, and is saved as a screenshot."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.principals import Caller
from accounts.tests.factories import PASSWORD
from analytics.services import drift as drift_services
from inference.models import Experiment
from registry import services as registry_services
from web_tests.test_browser import DESKTOP, check_page, confirm_dialog
from web_tests.test_drift_experiment_pages import served_in, served_with_drift

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PHONE_375 = {"width": 375, "height": 812}


def test_experiment_promote_drift_report_and_delete(browser, web, screenshots_dir, tenant_a, iris):
    v1, v2 = iris.versions.get(number=1), iris.versions.get(number=2)
    registry_services.set_stage(caller=Caller(user=tenant_a.user), version=v1, stage="production")
    served_with_drift(v1)
    context = browser.new_context(viewport=DESKTOP, base_url=web.url)
    page = context.new_page()
    page.goto("/login/")
    page.fill("#id_username", tenant_a.user.email)
    page.fill("#id_password", PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Your organizations")

    # Start an experiment from the model page's Experiments tab: production v1 is the control.
    page.goto("/models/acme/iris/")
    page.click("nav[aria-label=Model] >> text=Experiments")
    expect(page.locator("#id_variant_0_version")).to_have_value("1")
    expect(page.locator("#id_variant_1_version")).to_have_value("2")
    page.fill("#id_name", "v2 vs v1")
    page.fill("#id_variant_1_weight", "40")
    page.click("text=Start experiment")
    expect(page.locator("#error-variants")).to_contain_text("weights sum to 90")
    page.fill("#id_variant_1_weight", "50")
    page.fill("#id_min_samples", "20")
    page.click("text=Start experiment")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/experiments/\d+/$"))
    expect(page.locator(".messages")).to_contain_text("started: v1 50%, v2 50%")

    # Traffic and feedback arrive; the page shows them per variant with intervals.
    experiment = Experiment.objects.get()
    served_in(experiment, v1, "v1", units=60, right=30, feedback=50)
    served_in(experiment, v2, "v2", units=60, right=46, feedback=50)
    page.reload()
    expect(page.locator("#variant-1")).to_contain_text("60.0%")
    expect(page.locator("#variant-2")).to_contain_text("92.0%")
    expect(page.locator("#variant-2")).to_contain_text("Leader")
    expect(page.locator("figure.chart svg[aria-label^='Accuracy per variant']")).to_be_visible()
    check_page(page, screenshots_dir, "experiment")

    # Promote the winner, confirming the dialog; the model page shows the new production version.
    page.click("#variant-2 button:has-text('Promote this variant')")
    confirm_dialog(page, reason="92% vs 60%")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/$"))
    expect(page.locator(".messages")).to_contain_text("puts version 2 in production")
    expect(page.locator("#version-2 .badge")).to_have_text("Production")
    expect(page.locator("section[aria-labelledby=releases-title] tbody tr").first).to_contain_text("92% vs 60%")
    page.click("nav[aria-label=Model] >> text=Experiments")
    expect(page.locator(f"#experiment-{experiment.id}")).to_contain_text("Stopped")
    expect(page.locator(f"#experiment-{experiment.id}")).to_contain_text("v2")
    check_page(page, screenshots_dir, "experiments")

    # Run a drift report on version 1's last two hours: sepal length moved, and the experiment's
    # 60 identical rows moved every feature.
    page.click("nav[aria-label=Model] >> text=Drift")
    page.select_option("#id_version", "1")
    page.fill("#id_window_hours", "2")
    page.click("text=Run now")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/drift/\d+/$"))
    report_path = page.url.removeprefix(web.url)
    # The report waits for the worker; the page shows it pending, then its results without a reload.
    expect(page.locator("#verdict")).to_contain_text("Pending: the worker is comparing")
    check_page(page, screenshots_dir, "drift-report-pending")
    drift_services.compute_report(report_id=int(report_path.rstrip("/").rsplit("/", 1)[1]))
    expect(page.locator("#verdict")).to_contain_text("Drift: 4 of 4 features drifted")
    expect(page.locator("#feature-0")).to_contain_text("Drifted")
    expect(page.locator("svg[aria-label='PSI per feature'] text", has_text="drifted")).to_have_count(4)
    expect(page.locator("figure[id^=histogram-] svg")).to_have_count(4)
    page.click("#histogram-0 summary")
    expect(page.locator("#histogram-0 table tbody tr")).to_have_count(10)
    check_page(page, screenshots_dir, "drift-report")
    page.click("text=Drift reports")
    expect(page.locator("#drift-reports tbody tr")).to_have_count(1)
    check_page(page, screenshots_dir, "drift-reports")

    # At a phone's width every new page still fits.
    page.set_viewport_size(PHONE_375)
    for path, name in [
        ("/models/acme/iris/drift/", "drift-reports-phone"),
        (report_path, "drift-report-phone"),
        ("/models/acme/iris/experiments/", "experiments-phone"),
        (f"/models/acme/iris/experiments/{experiment.id}/", "experiment-phone"),
    ]:
        page.goto(path)
        check_page(page, screenshots_dir, name)

    # Try it: the snippets follow what is typed.
    page.set_viewport_size(DESKTOP)
    page.goto("/models/acme/iris/versions/2/try/")
    page.fill("#col-0", "6.75")
    expect(page.locator("#snippet-curl")).to_contain_text("[[6.75,")
    expect(page.locator("#snippet-mlflow")).to_contain_text("[[6.75,")

    # Delete the model after confirming; it is gone from the organization's list.
    page.goto("/models/acme/iris/")
    page.click("text=Delete iris")
    page.click("#confirm-dialog button[value=cancel]")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/$"))
    page.click("text=Delete iris")
    confirm_dialog(page)
    expect(page).to_have_url(re.compile(r"/orgs/acme/$"))
    expect(page.locator(".messages")).to_contain_text("Model acme/iris deleted.")
    expect(page.locator("#model-results")).not_to_contain_text("iris")
    context.close()
