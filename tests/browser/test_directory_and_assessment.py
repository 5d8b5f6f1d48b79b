"""In the browser: the services directory and "who can help" as a GP (the generated ICS's HealthcareServices), and
the integration self-assessment as a partnership board member (score, bad input kept, new round, printable report
with charts), with screenshots in test-artifacts/."""

from __future__ import annotations

import re
import uuid

from tests.browser.conftest import shot
from tests.browser.test_roles_crawl import login


def test_gp_finds_who_can_help_with_falls(demo, chromium):
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    login(page, demo.url, "dr.gp")
    page.get_by_role("link", name="Services directory").first.click()
    page.wait_for_url(re.compile(r".*/directory$"))
    page.get_by_label("What does the person need help with?").fill("falls")
    page.get_by_role("button", name="Find services").click()
    page.wait_for_url(re.compile(r".*/directory\?need=falls"))
    heading = page.get_by_role("heading", level=2).first.inner_text()
    assert re.match(r"\d+ services? for “falls”", heading), heading
    card = page.locator(".svc").filter(has=page.get_by_role("link", name="Falls and frailty clinic", exact=True)).first
    text = card.inner_text()
    assert "Two or more falls in the last 12 months" in text  # its referral criteria
    assert "within 5 working days" in text and "Advice and guidance offered" in text
    assert "Mon–Fri 08:30–17:00" in text and "phone: 01632 96" in text
    shot(page, "directory-falls-gp", full_page=True)
    # bad input: a clear message, what was typed kept, status 400
    resp = page.goto(f"{demo.url}/directory?need=%21%21%21")
    assert resp.status == 400
    assert page.get_by_role("alert").inner_text().startswith("'!!!' has no words to search for")
    assert page.get_by_label("What does the person need help with?").input_value() == "!!!"
    shot(page, "directory-bad-need")
    # from the person page: who can help with this person's needs
    page.goto(f"{demo.url}/patients/{demo.patient_id}")
    shot(page, "patient-page-gp", full_page=True)
    page.get_by_role("link", name="Who can help").click()
    page.wait_for_url(re.compile(rf".*/patients/{demo.patient_id}/who-can-help$"))
    assert page.get_by_role("heading", level=1).inner_text() == "Who can help with this person's needs?"
    page.get_by_label("Or search for one need").fill("falls")
    page.get_by_role("button", name="Find services").click()
    assert page.locator(".svc", has_text="Falls and frailty clinic").count() >= 1
    shot(page, "who-can-help-gp", full_page=True)
    ctx.close()


def test_board_scores_and_prints_the_report(demo, chromium):
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    login(page, demo.url, "board")
    page.wait_for_url(re.compile(r".*/assessment$"))  # the board's home
    assert page.get_by_role("heading", level=1).inner_text().startswith("Is our integration working?")
    item = page.locator("#checklist-coordination-of-care")
    assert "Live evidence from JoinedUp" in item.inner_text()
    assert "No measurable evidence" in page.locator("#selfie-leadership-governance").inner_text()
    # financing: the cost of care across settings (activity priced at national unit costs), every setting listed,
    # and what still rests on the board's own evidence (no payments or budgets in the record)
    financing = page.locator("#selfie-financing").inner_text()
    assert "Where the cost of care is spent, by setting" in financing
    assert "Cost of care per person by number of long-term conditions" in financing
    for setting in ("General practice", "Acute hospital", "Community health services", "Mental health services",
                    "Adult social care"):
        assert setting in financing
    assert "What the live evidence does not show" in financing and "not payments" in financing
    # a bad owner (too long) is refused and what was typed stays on the page
    item.get_by_label("Score").select_option("2")
    item.get_by_label("Evidence").fill("Key workers only in two PCNs")
    item.get_by_label("Owner").fill("x" * 201)
    item.get_by_role("button", name="Save score").click()
    item = page.locator("#checklist-coordination-of-care")
    assert "The owner is 201 characters long" in item.get_by_role("alert").inner_text()
    assert item.get_by_label("Evidence").input_value() == "Key workers only in two PCNs"
    item.get_by_label("Owner").fill("Director of integration")
    item.get_by_role("button", name="Save score").click()
    page.wait_for_url(re.compile(r".*/assessment#checklist-coordination-of-care$"))
    assert "Score 2 – Early" in page.locator("#checklist-coordination-of-care").inner_text()
    # a new round, a better score, and the change shown
    page.get_by_label("Start a new round (completes the open one)").fill(f"Round {uuid.uuid4().hex[:4]}")
    page.get_by_role("button", name="Start round").click()
    item = page.locator("#checklist-coordination-of-care")
    item.get_by_label("Score").select_option("4")
    item.get_by_role("button", name="Save score").click()
    page.wait_for_url(re.compile(r".*#checklist-coordination-of-care$"))
    assert "▲ up 2 since" in page.locator("#checklist-coordination-of-care").inner_text()
    shot(page, "assessment-board", full_page=True)
    page.locator("#checklist-coordination-of-care").scroll_into_view_if_needed()
    shot(page, "assessment-board-item")
    page.locator("#selfie-financing").scroll_into_view_if_needed()
    shot(page, "assessment-board-financing")
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "assessment-board-top")
    page.get_by_role("link", name="Printable board report").click()
    page.wait_for_url(re.compile(r".*/assessment/report$"))
    assert page.locator("svg.chart").count() == 3  # one chart per framework
    assert page.locator("svg.chart rect").count() >= 1
    page.emulate_media(media="print")
    assert not page.locator(".site-header").is_visible()
    shot(page, "assessment-report-print", full_page=True)
    shot(page, "assessment-report-print-top")
    page.locator("#selfie-financing").scroll_into_view_if_needed()
    shot(page, "assessment-report-print-financing")
    ctx.close()


def test_gp_and_patient_are_refused_the_assessment(demo, chromium):
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    login(page, demo.url, "dr.gp")
    resp = page.goto(f"{demo.url}/assessment")
    assert resp.status == 403
    assert "You do not have access to this page" in page.get_by_role("heading", level=1).inner_text()
    shot(page, "assessment-refused-gp")
    ctx.close()
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    login(page, demo.url, "patient")
    assert page.goto(f"{demo.url}/assessment").status == 403
    assert page.goto(f"{demo.url}/directory").status == 403  # the directory page is for professionals
    ctx.close()
