"""The one status vocabulary over real HTTP: an answered advice request reads "Replied" in the referrals API, on
the referrals page and in the person's journey (API and page); an MDT tomorrow with attendance recorded is
"Booked" in the API and on its page; a person's correction request is a correction request in their journey."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.care.world import build
from tests.web.test_pages import browser


@pytest.fixture(scope="module")
def world(server):
    import uuid

    return build(server, uuid.uuid4().hex[:6])


def test_replied_reads_the_same_on_every_page_and_api(server, world):
    w = world
    with server.client("gp") as gp, w.client(server, f"cons-{w.uid}") as cons:
        a = gp.post("/api/advice", json={"patient_id": w.patient, "to": f"Practitioner/{w.consultant}",
                                         "text": "Advice please: ankle swelling on amlodipine",
                                         "reason": "Hypertension"}).json()
        assert cons.post(f"/api/advice/{a['id']}/reply", json={"text": "Switch to lisinopril"}).status_code == 200
        one = gp.get(f"/api/advice/{a['id']}").json()
        assert one["state_text"] == "Replied"
        journey = gp.get(f"/api/patients/{w.patient}/journey").json()
        item = next(n for n in journey["next"] if n["source"] == f"ServiceRequest/{a['id']}")
        assert item["status"] == "Replied"  # not "waiting (active)"
    with browser(server, "gp") as page_client:
        assert "Replied" in page_client.get("/referrals?box=outbox").text
        journey_page = page_client.get(f"/patients/{w.patient}/journey").text
        assert "Replied" in journey_page and "waiting (active)" not in journey_page


def test_mdt_tomorrow_with_attendance_is_booked(server, world):
    w = world
    start = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    with server.client("gp") as gp:
        rv = gp.post("/api/mdt", json={"title": f"Tomorrow {w.uid}", "start": start, "minutes": 60,
                                       "patient_ids": [w.patient],
                                       "participants": [f"Practitioner/{w.consultant}"]}).json()
        r = gp.post(f"/api/mdt/{rv['id']}/attendance",
                    json={"attendance": {w.consultant: "attended", "gp-1": "attended"}})
        assert r.status_code == 200, r.text
        got = gp.get(f"/api/mdt/{rv['id']}").json()
        assert got["state_text"] == "Booked" and got["state"] == "upcoming"
        listed = next(x for x in gp.get("/api/mdt").json()["reviews"] if x["id"] == rv["id"])
        assert listed["state_text"] == "Booked"


def test_a_correction_request_is_shown_as_one_in_the_journey(server, world):
    from joinedup.fhir import codes
    from joinedup.governance.identity import SYSTEM

    w = world
    server.gate.create(SYSTEM, {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [codes.CORRECTION_REQUEST], "text": codes.CORRECTION_REQUEST["display"]}],
        "subject": {"reference": f"Patient/{w.patient}"}, "sender": {"reference": f"Patient/{w.patient}"},
        "sent": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "payload": [{"contentString": "My penicillin allergy is wrong"}]})
    with server.client("gp") as gp:
        nxt = gp.get(f"/api/patients/{w.patient}/journey").json()["next"]
    kinds = {n["kind"]: n for n in nxt}
    assert "correction" in kinds and kinds["correction"]["what"] == "Correction request"
    assert not any(n["kind"] == "advice" and "Patient/" in (n["what"] or "") for n in nxt)
