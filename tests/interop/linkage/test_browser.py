"""The clerical review page in a real browser (headless Debian chromium): the privacy officer sees each pair side
by side with its match probability and weight and the fields that agree or differ, and accepts or rejects it;
a GP and a patient are refused the page."""

from __future__ import annotations

import re

from tests.browser.conftest import shot
from tests.interop.linkage.conftest import queue_pair, second_registration


def login(page, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda u: "/login" not in u)


def test_privacy_officer_reviews_pairs(page, population, model_file):
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.linkage import service

    first = queue_pair(population, model_file)
    second = queue_pair(population, model_file)
    login(page, population.url, "po-linkage", "po-linkage-pw")
    page.get_by_role("link", name="Record linkage review", exact=True).click()
    page.wait_for_url(re.compile(r".*/linkage/review$"))
    card = page.locator("article", has=page.locator(f"form[action='/linkage/review/{first}']"))
    text = card.inner_text()
    assert "match probability" in text.lower() and "match weight" in text.lower()
    for label in ("First name", "Surname", "Date of birth", "Sex", "Postcode", "Address"):
        assert card.get_by_role("rowheader", name=label).count() == 1
    assert card.locator("text=agrees").count() + card.locator("text=differs").count() >= 1
    shot(page, "linkage-review-privacy-officer", full_page=True)

    # no choice made: the page says so and keeps the note typed
    card.get_by_label("Note (optional)").fill("checked the address history")
    card.get_by_role("button", name="Record decision").click()
    err = page.get_by_role("alert")
    assert "Choose accept or reject" in err.inner_text()
    card = page.locator("article", has=page.locator(f"form[action='/linkage/review/{first}']"))
    assert card.get_by_label("Note (optional)").input_value() == "checked the address history"

    card.get_by_label("Yes: accept and link the records").check()
    card.get_by_role("button", name="Record decision").click()
    page.wait_for_url(re.compile(r".*done=accepted"))
    assert "was accepted" in page.get_by_role("status").inner_text()
    card = page.locator("article", has=page.locator(f"form[action='/linkage/review/{second}']"))
    card.get_by_label("No: reject (never proposed again)").check()
    card.get_by_role("button", name="Record decision").click()
    page.wait_for_url(re.compile(r".*done=rejected"))
    states = {q["id"]: q["status"] for q in service.review_queue(population.gate, SYSTEM, status="all")}
    assert states[first] == "approved" and states[second] == "rejected"
    page.goto(f"{population.url}/linkage/review?status=all")
    assert page.locator(f"form[action='/linkage/review/{first}']").count() == 0
    shot(page, "linkage-review-decided", full_page=True)


def test_gp_and_patient_are_refused(page, population, server):
    for user in ("gp", "pat"):
        login(page, population.url, user, f"{user}-pw")
        resp = page.goto(f"{population.url}/linkage/review")
        assert resp.status == 403
        assert "refused" in page.locator("main").inner_text().lower()
        assert page.get_by_role("link", name="Record linkage review", exact=True).count() == 0
        shot(page, f"linkage-review-refused-{user}")
        page.context.clear_cookies()


def test_a_possible_duplicate_registration_is_shown_with_its_caution(page, population, model_file):
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.linkage import service

    doc, known, other = second_registration(population)
    service.run(population.gate, SYSTEM, path=model_file, organisation=other)
    request = next(q["id"] for q in service.review_queue(population.gate, SYSTEM)
                   if {q["patient"], q["other_patient"]} == {f"Patient/{doc['id']}", f"Patient/{known['id']}"})
    login(page, population.url, "po-linkage", "po-linkage-pw")
    page.goto(f"{population.url}/linkage/review")
    card = page.locator("article", has=page.locator(f"form[action='/linkage/review/{request}']"))
    caution = card.get_by_role("note")
    assert "registered with one practice at a time" in caution.inner_text()
    assert "duplicate registration" in caution.inner_text()
    card.scroll_into_view_if_needed()
    shot(page, "linkage-review-two-registrations")
