"""The care-processes worklist and the risk page in a real browser, as a GP and a practice nurse (who act on it),
and refused to a social worker and a patient (no clinical record access). Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest

from tests.browser.conftest import shot
from tests.browser.test_roles_crawl import login


@pytest.mark.parametrize("user", ["dr.gp", "nurse.practice"])
def test_clinicians_see_the_worklist(demo, page, user):
    login(page, demo.url, user)
    page.goto(f"{demo.url}/population/worklist")
    assert page.get_by_role("heading", name="Care processes due").is_visible()
    rows = page.locator("#worklist tbody tr")
    assert rows.count() > 0
    assert page.locator("#worklist").get_by_text("Overdue").first.is_visible()
    shot(page, f"population-worklist-{user}", full_page=True)
    page.get_by_label("Register").select_option("diabetes")
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    assert "register=diabetes" in page.url
    for text in page.locator("#worklist tbody tr td:last-child").all_inner_texts():
        assert "Diabetes" in text
    # a practice code that is not one: a clear message, and what was typed is kept
    page.get_by_label("Practice (ODS code)").fill("ZZ!!")
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    assert page.get_by_role("alert").is_visible()
    assert "ODS code" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Practice (ODS code)").input_value() == "ZZ!!"
    shot(page, f"population-worklist-bad-practice-{user}")


def test_gp_sees_the_risk_page(demo, page):
    login(page, demo.url, demo.user)
    page.goto(f"{demo.url}/patients/{demo.patient_id}/risk")
    assert page.locator("h1").inner_text().startswith("Risk and burden: ") and demo.family in page.locator("h1").inner_text()
    assert page.locator("[data-score=cms]").is_visible()
    assert page.locator("[data-score=efi]").is_visible()
    shot(page, "population-risk-page", full_page=True)


@pytest.mark.parametrize("user", ["social.worker", "patient"])
def test_worklist_refused_to_non_clinicians(demo, page, user):
    login(page, demo.url, user)
    response = page.goto(f"{demo.url}/population/worklist")
    assert response.status == 403
    assert page.locator("#worklist").count() == 0
    shot(page, f"population-worklist-refused-{user}")
