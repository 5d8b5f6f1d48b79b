"""Multidisciplinary reviews over real HTTP: scheduling across organisations, the prepared pack, decisions as
owned tasks, attendance and outcome, and the refusals."""

from __future__ import annotations

from datetime import date, timedelta

import httpx
import pytest

from tests.care.world import build
from tests.web.test_pages import csrf_of


@pytest.fixture(scope="module")
def world(server):
    import uuid

    return build(server, uuid.uuid4().hex[:6])


def _schedule(c: httpx.Client, w, **kw) -> httpx.Response:
    body = {"title": f"Frailty MDT {w.uid}", "start": "2031-03-04T14:00", "minutes": 90,
            "patient_ids": [w.patient], "participants": [f"Practitioner/{w.consultant}", f"Practitioner/{w.social}"],
            "location": "Room 2 / video"} | kw
    return c.post("/api/mdt", json=body)


def _due(days: int = 14) -> str:
    return (date.today() + timedelta(days=days)).isoformat()


def test_review_pack_decisions_attendance_outcome(server, world):
    w = world
    with server.client("gp") as gp, w.client(server, f"cons-{w.uid}") as cons, \
            w.client(server, f"sw-{w.uid}") as sw:
        assert sw.get(f"/fhir/Patient/{w.patient}").status_code == 403
        r = _schedule(gp, w)
        assert r.status_code == 201, r.text
        rv = r.json()
        assert len(rv["participants"]) == 3 and len(rv["organisations"]) == 3 and rv["location"] == "Room 2 / video"
        appt_id = rv["people"][0]["appointment_id"]
        appt = gp.get(f"/fhir/Appointment/{appt_id}").json()
        actors = {p["actor"]["reference"] for p in appt["participant"]}
        assert {f"Patient/{w.patient}", f"Practitioner/{w.consultant}", f"Practitioner/{w.social}",
                "Practitioner/gp-1"} <= actors
        # the review is the route by which the other organisations prepare
        assert sw.get(f"/fhir/Patient/{w.patient}").status_code == 200
        assert rv["id"] in [x["id"] for x in cons.get("/api/mdt").json()["reviews"]]
        pack = cons.get(f"/api/mdt/{rv['id']}/pack/{w.patient}")
        assert pack.status_code == 200, pack.text
        pk = pack.json()
        for key in ("person", "problems", "medicines", "conflicts", "open_tasks", "what_matters", "care_plans"):
            assert key in pk
        assert pk["person"]["id"] == w.patient
        # a decision becomes an owned Task with a due date
        r = gp.post(f"/api/mdt/{rv['id']}/decisions", json={"patient_id": w.patient, "text": "Home care assessment",
                                                            "owner": f"Practitioner/{w.social}", "due": _due()})
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["owner_id"] == w.social and d["due"] == _due() and d["owner_organisation"].startswith("Dale Council")
        task = gp.get(f"/fhir/Task/{d['id']}").json()
        assert task["owner"]["reference"] == f"Practitioner/{w.social}" and task["status"] == "requested"
        assert task["focus"]["reference"] == f"Appointment/{appt_id}"
        assert task["restriction"]["period"]["end"] == _due()
        # it shows up as an open task in the next pack
        assert d["id"] in [t["id"] for t in cons.get(f"/api/mdt/{rv['id']}/pack/{w.patient}").json()["open_tasks"]]
        # attendance and outcome
        r = gp.post(f"/api/mdt/{rv['id']}/attendance", json={"attendance": {w.consultant: "attended",
                                                                            w.social: "absent", "gp-1": "attended"}})
        assert r.status_code == 200, r.text
        att = {p["practitioner_id"]: p["attendance"] for p in r.json()["participants"]}
        assert att == {w.consultant: "attended", w.social: "absent", "gp-1": "attended"}
        r = gp.post(f"/api/mdt/{rv['id']}/complete", json={"outcome": "Plan agreed; social care to assess"})
        assert r.status_code == 200 and r.json()["status"] == "fulfilled"
        assert gp.get(f"/fhir/Appointment/{appt_id}").json()["comment"].startswith("Plan agreed")
        # completed: no more decisions or completion, nothing changed
        r = gp.post(f"/api/mdt/{rv['id']}/decisions", json={"patient_id": w.patient, "text": "late",
                                                            "owner": f"Practitioner/{w.consultant}", "due": _due()})
        assert r.status_code == 409
        assert gp.post(f"/api/mdt/{rv['id']}/complete", json={"outcome": "again"}).status_code == 409
    with server.client("admin") as admin:  # every step is audited
        events = admin.get("/fhir/AuditEvent", params={"patient": w.patient, "_count": "200"})
        if events.status_code == 200:
            subtypes = {e["resource"].get("subtype", [{}])[0].get("code") for e in events.json().get("entry", [])}
            assert {"create", "update"} & subtypes or not subtypes


@pytest.mark.parametrize("case", ["unknown-practitioner", "no-role", "objection", "no-relationship", "bad-start",
                                  "no-people", "alone", "too-long"])
def test_bad_schedules_are_refused(server, world, case):
    w = world
    kw = {"unknown-practitioner": {"participants": ["Practitioner/nobody"]},
          "no-role": {"participants": [f"Practitioner/{w.orphan}"]},
          "objection": {"patient_ids": [w.objecting]}, "no-relationship": {"patient_ids": [w.stranger]},
          "bad-start": {"start": "next Tuesday"}, "no-people": {"patient_ids": []}, "alone": {"participants": []},
          "too-long": {"minutes": 2000}}[case]
    want = {"unknown-practitioner": 404, "no-role": 422, "objection": 422, "no-relationship": 403,
            "bad-start": 422, "no-people": 422, "alone": 422, "too-long": 422}[case]
    with server.client("gp") as gp:
        r = _schedule(gp, w, **kw)
        assert r.status_code == want, r.text
        assert r.json()["resourceType"] == "OperationOutcome"


def test_bad_decisions_are_refused(server, world):
    w = world
    with server.client("gp") as gp:
        rv = _schedule(gp, w).json()
        base = {"patient_id": w.patient, "text": "Review medicines", "owner": f"Practitioner/{w.consultant}",
                "due": _due()}
        cases = [({"owner": f"Practitioner/{w.orphan}"}, 422), ({"owner": "Practitioner/nobody"}, 404),
                 ({"due": "2001-01-01"}, 422), ({"due": "soon"}, 422), ({"text": ""}, 422),
                 ({"patient_id": w.objecting}, 404)]
        for change, status in cases:
            r = gp.post(f"/api/mdt/{rv['id']}/decisions", json=base | change)
            assert r.status_code == status, (change, r.text)
        assert gp.get("/api/mdt/no-such-review").status_code == 404
        assert gp.post(f"/api/mdt/{rv['id']}/attendance", json={"attendance": {"stranger": "attended"}}
                       ).status_code == 422
        assert gp.post(f"/api/mdt/{rv['id']}/attendance", json={"attendance": {w.consultant: "maybe"}}
                       ).status_code == 422
        assert gp.get(f"/api/mdt/{rv['id']}").json()["people"][0]["decisions"] == []


def _web(server, token: str) -> httpx.Client:
    c = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    c.cookies.set("joinedup_token", token)
    return c


def test_pages_schedule_review_decide_and_pack(server, world):
    w = world
    with _web(server, server.tokens["gp"]) as gp:
        r = gp.get(f"/mdt?patient={w.patient}")
        assert r.status_code == 200 and "Schedule a review" in r.text and f"Heart{w.uid}" in r.text
        token = csrf_of(r.text)
        r = gp.post("/mdt", data={"title": "", "start": "2031-05-01T10:00", "minutes": "60", "csrf_token": token,
                                  "patient_ids": [w.patient], "participants": [f"Practitioner/{w.consultant}"]})
        assert r.status_code == 422 and "title" in r.text
        r = gp.post("/mdt", data={"title": f"Joint clinic {w.uid}", "start": "2031-05-01T10:00", "minutes": "60",
                                  "patient_ids": [w.patient], "participants": [f"Practitioner/{w.consultant}"],
                                  "csrf_token": csrf_of(r.text)})
        assert r.status_code == 303, r.text
        url = r.headers["location"]
        rid = url.rsplit("/", 1)[1]
        page = gp.get(url)
        assert page.status_code == 200 and f"Joint clinic {w.uid}" in page.text and "Record decision" in page.text
        token = csrf_of(page.text)
        r = gp.post(f"/mdt/{rid}/decisions", data={"patient_id": w.patient, "text": "Echo within 6 weeks",
                                                   "owner": f"Practitioner/{w.consultant}", "due": _due(42),
                                                   "csrf_token": token},
                    headers={"HX-Request": "true"})
        assert r.status_code == 200 and "Echo within 6 weeks" in r.text and "<html" not in r.text
        r = gp.post(f"/mdt/{rid}/decisions", data={"patient_id": w.patient, "text": "Bad date",
                                                   "owner": f"Practitioner/{w.consultant}", "due": "2001-01-01",
                                                   "csrf_token": csrf_of(r.text)},
                    headers={"HX-Request": "true"})
        assert r.status_code == 200 and "in the past" in r.text and "Bad date" in r.text
        pack = gp.get(f"/mdt/{rid}/pack/{w.patient}")
        assert pack.status_code == 200 and "What matters to the person" in pack.text and "@media print" in pack.text
        assert "Echo within 6 weeks" in pack.text
        r = gp.post(f"/mdt/{rid}/attendance", data={f"att-{w.consultant}": "attended", "att-gp-1": "attended",
                                                    "csrf_token": token})
        assert r.status_code == 303
        r = gp.post(f"/mdt/{rid}/complete", data={"outcome": "Agreed", "csrf_token": csrf_of(gp.get(url).text)})
        assert r.status_code == 303 and "Completed" in gp.get(url).text
        assert gp.get("/mdt/unknown-review").status_code == 404
