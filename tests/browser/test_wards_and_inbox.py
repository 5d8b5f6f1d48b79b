"""Browser: the journey panel on the person's page, the notifications inbox with its unread count and settings,
and the virtual ward pages (list with occupancy, admit form, review list)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import shot
from tests.care.test_notifications import admission, make_world, wait_for

pytestmark = pytest.mark.browser


def _login(page, url, user, password):
    page.goto(f"{url}/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_journey_inbox_and_wards(server, page, uid):
    from joinedup.governance.accounts import add_user
    from joinedup.governance.identity import SYSTEM

    gate = server.gate
    w = make_world(gate, uid)
    add_user(gate, name=f"webcons.{uid}", role="consultant", practitioner=w.practitioners["cons"],
             organization=w.hospital, password="pw-cons", replace=True, display="Dr Webb")
    enc = gate.create(SYSTEM, admission(w))
    ward = gate.create(SYSTEM, {
        "resourceType": "HealthcareService", "name": f"Hospital at home {uid}", "active": True,
        "meta": {"tag": [{"system": "https://joinedup.example/fhir/CodeSystem/virtual-ward", "code": "acute"}]},
        "providedBy": {"reference": f"Organization/{w.hospital}"},
        "extension": [{"url": "https://joinedup.example/fhir/StructureDefinition/virtual-ward-capacity",
                       "valueInteger": 4}]})
    from joinedup.care.notifications.service import notifier_for

    wait_for(lambda: notifier_for(gate).flush(5))
    _login(page, server.url, f"webcons.{uid}", "pw-cons")
    # the unread count in the header, and the inbox
    page.wait_for_selector(".inbox-count")
    assert int(page.inner_text(".inbox-count")) >= 1
    page.click("text=Notifications")
    page.wait_for_selector("h1:has-text('Notifications')")
    row = page.locator("tr", has_text=f"Lovelace{uid}").first
    assert "Admitted to hospital" in row.inner_text() and f"Ward 7 ({uid})" in row.inner_text()
    shot(page, "inbox")
    row.locator("button", has_text="Mark read").click()
    page.wait_for_selector("h1:has-text('Notifications')")
    page.click("text=Choose which notifications you get")
    page.uncheck("#ev-care-plan-change")
    page.click("button:has-text('Save choices')")
    page.wait_for_selector("text=Your choices have been saved.")
    assert not page.is_checked("#ev-care-plan-change") and page.is_checked("#ev-admission")
    shot(page, "inbox-settings")
    # the journey panel on the person's page
    page.goto(f"{server.url}/patients/{w.patient}")
    page.wait_for_selector("#journey h2:has-text('Where they are now')")
    assert f"Hospital: Ward 7 ({uid})" in page.inner_text("#journey")
    shot(page, "journey-panel")
    # virtual wards: list with occupancy, admit with an agreed limit, then the review list
    page.goto(f"{server.url}/wards")
    page.click(f"text=Hospital at home {uid}")
    page.fill("#patient", w.patient)
    page.fill("#spo2_min", "88")
    page.click("button:has-text('Admit')")
    page.wait_for_selector("text=Admitted.")
    assert f"Lovelace{uid}" in page.inner_text("table")
    shot(page, "ward", full_page=True)
    page.goto(f"{server.url}/wards")
    assert "1" in page.locator("tr", has_text=f"Hospital at home {uid}").inner_text()
    shot(page, "wards")
    page.goto(f"{server.url}/wards/review")
    assert f"Lovelace{uid}" in page.inner_text("main")
    shot(page, "ward-review")
    # tablet width still shows the inbox table
    page.set_viewport_size({"width": 800, "height": 1000})
    page.goto(f"{server.url}/inbox")
    assert page.locator("table.inbox").is_visible()
    shot(page, "inbox-tablet")
    assert enc.id and ward.id
