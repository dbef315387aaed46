"""An owner mirrors production's traffic to a candidate from the Compare tab, in a real browser:
start the mirror through its form, read the report the worker accumulated from real predictions,
try to promote through the gate (refused, quoting the mirror), lower the bar and promote. The
page passes axe-core, fits a 375 px phone, and is saved as a screenshot."""

from __future__ import annotations

import random
import re

import pytest
from playwright.sync_api import expect

from accounts.tests.factories import PASSWORD
from analytics.services import mirrors
from analytics.tests import test_replays
from analytics.tests.test_mirrors import serve_all
from inference.models import Mirror
from registry.tests import factories as rf
from web_tests.test_browser import DESKTOP, check_page, confirm_dialog

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
iris_pair = test_replays.iris_pair  # the fixture: v1 (logistic regression) in production, v2 a stump
PHONE_375 = {"width": 375, "height": 812}


def test_mirror_a_candidate_read_its_report_and_promote_through_the_gate(browser, web, screenshots_dir, tenant_a, iris_pair):
    page = browser.new_context(viewport=DESKTOP, base_url=web.url).new_page()
    page.goto("/login/")
    page.fill("#id_username", tenant_a.user.email)
    page.fill("#id_password", PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Your organizations")

    page.goto("/models/acme/iris/")
    page.click("nav[aria-label=Model] >> text=Compare")
    expect(page.locator("#mirror-none")).to_have_text("No mirror yet.")
    page.fill("#id_mirror-percent", "80")
    page.click("text=Start mirroring")
    expect(page.locator("#error-mirror-percent")).to_contain_text("less than or equal to 50")
    page.fill("#id_mirror-percent", "50")
    page.click("text=Start mirroring")
    expect(page.locator(".messages")).to_contain_text("Mirroring 50% of production's requests to version 2")
    expect(page.locator("#mirror-report-empty")).to_be_visible()

    # Production serves 60 requests, about half of them sampled; the worker's run compares those.
    random.seed(5)
    x, _ = rf.iris_data()
    serve_all(tenant_a.key_client(), x[::5][:30].tolist() + x[1::5][:30].tolist())
    mirrors.mirror_once(mirror_id=Mirror.objects.get().id)
    page.reload()
    expect(page.locator("#mirror-agreement")).to_be_visible()
    expect(page.locator("#mirror-failed")).to_have_text("0 rows")
    expect(page.locator("#mirror-confusion")).to_be_visible()
    check_page(page, screenshots_dir, "compare-mirror")

    # The stump disagrees on most non-setosa rows: a 98 % bar refuses, quoting the mirror.
    page.click("#mirror-promote button")
    confirm_dialog(page)
    expect(page).to_have_url(re.compile(r"/models/acme/iris/compare/$"))
    expect(page.locator(".messages")).to_contain_text("Mirror #")
    expect(page.locator(".messages")).to_contain_text("below the 98.00% the promotion asks for")
    page.fill("#mirror-min-agreement", "0.3")
    page.click("#mirror-promote button")
    confirm_dialog(page, reason="mirror agrees on setosa")
    expect(page).to_have_url(re.compile(r"/models/acme/iris/$"))
    expect(page.locator("#version-2 .badge")).to_have_text("Production")

    page.set_viewport_size(PHONE_375)
    page.goto("/models/acme/iris/compare/")
    expect(page.locator("#mirror-status")).to_contain_text("production changed")
    check_page(page, screenshots_dir, "compare-mirror-phone")
