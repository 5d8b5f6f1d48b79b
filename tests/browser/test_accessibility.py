"""Accessibility stays (part 11 of issue 13): axe-core (WCAG 2.1 A and AA rules, vendored in tests/data/axe-core/)
finds no violation on the pages of any demo role. The crawl of tests/browser/test_roles_crawl.py runs axe on each
shape of page it reaches for the roles it crawls; this module crawls the demo roles that crawl leaves out, and
checks the pages and states a crawl of links does not reach: pages past the crawl's budget, error pages (the
styled 404, refusals with and without emergency access), forms sent back with their errors, and the person page
on a phone (390 x 844)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.browser.axe import assert_accessible, describe, violations
from tests.browser.conftest import shot
from tests.browser.test_roles_crawl import crawl, login

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


def test_the_check_finds_what_it_should(page):
    """The vendored axe runs and reports: a page with an unlabelled field, an image without alternative text, grey
    on grey, no title and a label on an element that cannot carry one."""
    page.set_content("<html><body><main><img src='data:,'><input type='text'>"
                     "<p style='color:#777;background:#888'>faint</p><div aria-label='x'>y</div></main></body></html>")
    ids = {v["id"] for v in violations(page)}
    assert {"image-alt", "label", "color-contrast", "document-title", "html-has-lang",
            "aria-prohibited-attr (needs review)"} <= ids, ids


@pytest.mark.parametrize("user", ["nurse.practice", "nurse.specialist", "board", "records.manager", "carer"])
def test_roles_the_crawl_leaves_out(demo, page, user):
    """The other demo roles (make demo creates them too): every page they reach works and passes axe."""
    login(page, demo.url, user)
    page.goto(demo.url + "/")
    start = page.url.removeprefix(demo.url)
    seen = crawl(page, demo.url, start)
    assert len(seen) >= 2, f"{user} reached only {list(seen)}"


@pytest.fixture(scope="module")
def unrelated(demo) -> str:
    """A person with no care relationship to anyone: professionals are refused (and offered emergency access)."""
    from joinedup.governance.identity import SYSTEM

    pid = f"a11y-{uuid.uuid4().hex[:8]}"
    demo.gate.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "birthDate": "1950-02-03",
                                              "gender": "male", "name": [{"family": "Unlinked", "given": ["Alan"]}]})
    return pid


def _check_all(page, base: str, paths: list[str]) -> list[str]:
    problems = []
    for path in paths:
        resp = page.goto(base + path)
        page.wait_for_load_state("networkidle")
        if (found := violations(page)):
            problems.append(describe(found, f"{path} ({resp.status if resp else '?'})"))
    return problems


def test_person_pages_past_the_crawl_budget(demo, page):
    """Every view of one person and the worklists, as the professional who looks after them."""
    login(page, demo.url, demo.user)
    pid = demo.patient_id
    paths = [f"/patients/{pid}", f"/patients/{pid}?all=1", f"/patients/{pid}?setting=Hospital",
             f"/patients/{pid}/journey", f"/patients/{pid}/risk", f"/patients/{pid}/medicines-safety",
             f"/patients/{pid}/care-plan", f"/patients/{pid}/who-can-help", f"/patients/{pid}/key-worker/handover",
             "/population/worklist", "/wards", f"/referrals/new?patient={pid}", f"/mdt?patient={pid}"]
    problems = _check_all(page, demo.url, paths)
    # a ward's page and a stay on it, when the demo has one
    page.goto(demo.url + "/wards")
    ward = page.locator("main a[href^='/wards/']:not([href*='case-finding']):not([href*='review'])")
    if ward.count():
        page.goto(demo.url + ward.first.get_attribute("href"))
        problems += _check_all(page, demo.url, [page.url.removeprefix(demo.url)])
    assert not problems, "\n".join(problems)


def test_advice_thread_and_mdt_review_pages(demo, page):
    """An advice request and an MDT review made through their forms, then their pages (thread, review, pack)."""
    from joinedup.governance.accounts import get_user

    other = next(get_user(demo.gate, u) for u in ("dr.consultant", "nurse.community", "key.worker", "dr.gp")
                 if u != demo.user and get_user(demo.gate, u).practitioner_id)
    login(page, demo.url, demo.user)
    page.goto(f"{demo.url}/referrals/new?patient={demo.patient_id}")
    page.select_option("#to", f"Practitioner/{other.practitioner_id}")
    page.fill("#reason", "Medicines review")
    page.fill("#text", "Advice please: two prescribers disagree about the dose.")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#state")
    assert_accessible(page, "advice thread")
    page.goto(f"{demo.url}/mdt?patient={demo.patient_id}")
    page.fill("#title", "Accessibility check clinic")
    page.fill("#start", "2031-07-01T14:00")
    page.select_option("#participants", [f"Practitioner/{other.practitioner_id}"])
    page.click("text=Schedule the review")
    page.wait_for_selector("text=Participants and attendance")
    assert_accessible(page, "MDT review")
    pack = page.locator(f"a[href*='/pack/{demo.patient_id}']")
    if pack.count():
        page.goto(demo.url + pack.first.get_attribute("href"))
        assert_accessible(page, "MDT pack")


def test_error_pages(demo, page, unrelated):
    """The styled 404, the refusal between roles, the refusal offering emergency access, a bad link."""
    problems = []
    login(page, demo.url, "dr.gp")
    problems += _check_all(page, demo.url, ["/no-such-page", "/patients/x/not-a-view", f"/patients/{unrelated}",
                                            "/launch?nhs=12345", "/launch?nhs=9999999999", "/privacy/audit"])
    # emergency access with too short a reason: the refusal page again, with what went wrong
    page.goto(f"{demo.url}/patients/{unrelated}")
    assert page.get_by_role("heading", name="Emergency access (break glass)").is_visible()
    page.select_option("#bg-category", index=1)
    page.fill("#bg-reason", "short")
    page.evaluate("() => document.querySelector('#bg-reason').removeAttribute('minlength')")
    page.click("text=Use emergency access")
    page.wait_for_load_state()
    if (found := violations(page)):
        problems.append(describe(found, "break-glass refused"))
    shot(page, "a11y-break-glass-refused")
    page.context.clear_cookies()
    login(page, demo.url, "patient")
    problems += _check_all(page, demo.url, ["/mdt", "/no-such-page", "/privacy"])
    page.context.clear_cookies()
    login(page, demo.url, "analyst")
    problems += _check_all(page, demo.url, ["/privacy/audit", f"/patients/{demo.patient_id}"])
    assert not problems, "\n".join(problems)


def test_forms_with_errors(demo, page):
    """Forms sent back with what went wrong: the log-in, the search, a referral with nothing filled in."""
    page.goto(f"{demo.url}/login")
    page.get_by_label("User name").fill("dr.gp")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert "do not match" in page.locator("main").inner_text()
    assert_accessible(page, "log-in refused")
    login(page, demo.url, demo.user)
    problems = _check_all(page, demo.url, ["/patients/search?q=1234567890", "/patients/search?q=",
                                           "/patients/search?q=zzzzqqqq"])
    page.goto(f"{demo.url}/referrals/new?patient={demo.patient_id}")
    page.evaluate("() => document.querySelectorAll('[required]').forEach(e => e.removeAttribute('required'))")
    page.click("form.card button[type=submit]")
    page.wait_for_load_state()
    if (found := violations(page)):
        problems.append(describe(found, "referral form with errors"))
    shot(page, "a11y-referral-errors", full_page=True)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("user", ["professional", "patient"])
def test_person_page_on_a_phone(demo, chromium, user):
    context = chromium.new_context(viewport=PHONE, locale="en-GB", is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(15000)
    try:
        login(page, demo.url, demo.user if user == "professional" else "patient")
        if user == "professional":
            page.goto(f"{demo.url}/patients/{demo.patient_id}")
        else:
            page.goto(demo.url + "/")
            assert re.search(r"/patients/[^/]+$", page.url)
        page.wait_for_load_state("networkidle")
        shot(page, f"a11y-phone-{user}")
        assert_accessible(page, f"person page on a phone ({user})")
        page.goto(demo.url + "/")
        assert_accessible(page, f"home on a phone ({user})")
    finally:
        context.close()
