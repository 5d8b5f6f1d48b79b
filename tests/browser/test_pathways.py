"""In the browser: the pathways page (process map as SVG, variants, gaps, guideline timing) as an ICS analyst and as a
partnership board member on the generated ICS, a bad period kept on the page, and the page refused to a patient;
screenshots in test-artifacts/."""

from __future__ import annotations

import re

from tests.browser.conftest import shot
from tests.browser.test_roles_crawl import login

GAPS = ("Discharged without a follow-up contact within 7 days", "Advice requests without a reply within the promised time",
        "Referrals without a response within the promised time", "Tasks overdue between organisations")


def _context(chromium):
    return chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")


def test_analyst_sees_the_process_map_variants_and_gaps(demo, chromium):
    ctx = _context(chromium)
    page = ctx.new_page()
    login(page, demo.url, "analyst")
    page.get_by_role("link", name="Pathways", exact=True).first.click()
    page.wait_for_url(re.compile(r".*/pathways$"))
    assert page.get_by_role("heading", level=1).inner_text() == "Pathways across settings"
    period = page.locator("#period-line").inner_text()
    assert re.match(r"Period: \d{1,2} \w+ \d{4} to \d{1,2} \w+ \d{4}", period), period
    svg = page.locator("svg.process-map")
    assert svg.count() == 1 and "Process map" in svg.locator("title").first.text_content()
    # every step box says how often it happened; arrows for the commonest transitions
    assert svg.locator("rect").count() >= 3 and svg.locator("path[marker-end]").count() >= 1
    assert "Hospital admission" in svg.text_content() and "Hospital discharge" in svg.text_content()
    rows = page.locator("#transitions tbody tr")
    assert rows.count() >= 1
    first = rows.first.locator("td").all_inner_texts()
    assert re.fullmatch(r"[\d,]+", first[2]) and re.fullmatch(r"[\d.]+|–", first[3])
    assert page.locator("#variants tbody tr").count() >= 1
    gap_titles = page.locator("#gaps tbody tr strong").all_inner_texts()
    assert tuple(gap_titles) == GAPS
    # each figure with its definition and source; unverified guideline timing said to be so
    assert "Source:" in page.locator("#gap-discharge-without-follow-up").inner_text()
    copd = page.locator("#guideline-copd-exacerbation-review-2-weeks").inner_text()
    assert "unverified" in copd and "NG115" in copd
    assert "NG27" in page.locator("#guideline-discharge-contact-72h").inner_text()
    assert "shown as 'fewer than 8'" in page.locator("#suppression").inner_text()
    # the published counts (waits in days and shares are not counts: a median wait of 5 days is shown as 5)
    cells = " ".join(page.locator("#gaps td.count, #guidelines td.count, #transitions td.count").all_inner_texts())
    assert not re.search(r"(?<![\d,.])[1-7](?![\d,.%])", cells), cells  # no count from 1 to 7 is published
    shot(page, "pathways-analyst", full_page=True)
    # a bad period: a clear message, what was typed kept, status 400
    resp = page.goto(f"{demo.url}/pathways?from=2026-13-01&to=")
    assert resp.status == 400
    assert "'2026-13-01' is not a date" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("From").input_value() == "2026-13-01"
    shot(page, "pathways-bad-period")
    ctx.close()


def test_board_member_sees_the_page_and_a_patient_is_refused(demo, chromium):
    ctx = _context(chromium)
    page = ctx.new_page()
    login(page, demo.url, "board")
    page.get_by_role("link", name="Pathways", exact=True).first.click()
    page.wait_for_url(re.compile(r".*/pathways$"))
    assert page.locator("svg.process-map").count() == 1
    assert tuple(page.locator("#gaps tbody tr strong").all_inner_texts()) == GAPS
    shot(page, "pathways-board", full_page=True)
    ctx.close()
    ctx = _context(chromium)
    page = ctx.new_page()
    login(page, demo.url, "patient")
    assert page.get_by_role("link", name="Pathways", exact=True).count() == 0
    resp = page.goto(f"{demo.url}/pathways")
    assert resp.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "You do not have access to this page"
    shot(page, "pathways-patient-refused")
    ctx.close()
