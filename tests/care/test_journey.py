"""Journey tracker over HTTP and on the web: where the person is, since when, and what happens next."""

from __future__ import annotations

from datetime import timedelta

import pytest

from joinedup.governance.identity import SYSTEM
from tests.care.test_notifications import World, admission, client, drop_users, iso, make_world


@pytest.fixture()
def world(server, uid) -> World:
    yield make_world(server.gate, uid)
    drop_users(server.gate, uid)


def journey(server, world, who="gp"):
    with client(server, world.tokens[who]) as c:
        return c.get(f"/api/patients/{world.patient}/journey")


def test_at_home_since_last_discharge(server, world, api):
    end = iso(timedelta(days=-5))
    api.post("/fhir/Encounter", json=admission(world, status="finished", end=end))
    j = journey(server, world).json()
    assert j["where"] == "Home" and j["setting"] == "home" and j["since"] == end and j["days"] == 5
    assert j["next"] == []


def test_in_hospital_on_a_ward_with_next_steps(server, world, api):
    enc = admission(world)
    enc["period"]["end"] = iso(timedelta(days=3))  # planned discharge
    api.post("/fhir/Encounter", json=enc)
    api.post("/fhir/Appointment", json={
        "resourceType": "Appointment", "status": "booked", "description": "Heart failure clinic",
        "start": iso(timedelta(days=10)), "end": iso(timedelta(days=10, minutes=30)),
        "participant": [{"actor": {"reference": f"Patient/{world.patient}"}, "status": "accepted"}]})
    api.post("/fhir/ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "code": {"text": "Referral to falls clinic"},
        "subject": {"reference": f"Patient/{world.patient}"}, "authoredOn": iso(timedelta(days=-3))})
    api.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order", "description": "Arrange home oxygen",
        "for": {"reference": f"Patient/{world.patient}"}, "restriction": {"period": {"end": iso(timedelta(days=-1))}}})
    r = journey(server, world, "kw")
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["where"] == f"Hospital: Ward 7 ({world.uid})" and j["setting"] == "hospital"
    assert j["since"] == enc["period"]["start"]
    kinds = [n["kind"] for n in j["next"]]
    assert kinds[0] == "task" and j["next"][0]["overdue"] and j["overdue"] == 1
    assert kinds[1] == "planned-discharge"
    assert {"appointment", "referral"} <= set(kinds)
    assert next(n for n in j["next"] if n["kind"] == "appointment")["what"] == "Heart failure clinic"


def test_a_and_e_and_care_home(server, world, api):
    api.post("/fhir/EpisodeOfCare", json={
        "resourceType": "EpisodeOfCare", "status": "active", "type": [{"text": "Residential care placement"}],
        "patient": {"reference": f"Patient/{world.patient}"}, "period": {"start": "2025-01-10"},
        "managingOrganization": {"reference": f"Organization/{world.hospital}"}})
    j = journey(server, world).json()
    assert j["setting"] == "care-home" and j["since"] == "2025-01-10" and j["where"].startswith("Care home")
    api.post("/fhir/Encounter", json=admission(world, cls="EMER"))
    j = journey(server, world).json()
    assert j["setting"] == "a-and-e" and j["where"] == f"A&E: Ward 7 ({world.uid})"
    assert j["also"][0]["kind"] == "care-home"


def test_died(server, world, api):
    pat = api.get(f"/fhir/Patient/{world.patient}").json()
    pat.pop("meta")
    pat["deceasedDateTime"] = "2026-01-02T03:04:05Z"
    api.put(f"/fhir/Patient/{world.patient}", json=pat)
    j = journey(server, world).json()
    assert j["where"] == "Died" and j["since"] == "2026-01-02T03:04:05Z"


def test_refusals(server, world):
    assert journey(server, world, "out").status_code == 403
    with client(server, world.tokens["gp"]) as c:
        assert c.get("/api/patients/no-such-person/journey").status_code in (403, 404)
    with server.client(None) as c:
        assert c.get(f"/api/patients/{world.patient}/journey").status_code == 401


def test_journey_page_and_panel(server, world, api):
    api.post("/fhir/Encounter", json=admission(world))
    with client(server, world.tokens["gp"]) as c:
        c.cookies.set("joinedup_token", world.tokens["gp"])
        page = c.get(f"/patients/{world.patient}/journey")
        assert page.status_code == 200 and f"Hospital: Ward 7 ({world.uid})" in page.text
        panel = c.get(f"/patients/{world.patient}/journey/panel", headers={"HX-Request": "true"})
        assert panel.status_code == 200 and "<html" not in panel.text and "Where they are now" in panel.text
    with client(server, world.tokens["out"]) as c:
        refused = c.get(f"/patients/{world.patient}/journey")
        assert refused.status_code == 403 and "How to get access" in refused.text
    assert SYSTEM  # the integration account wrote the test data
