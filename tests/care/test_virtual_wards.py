"""Virtual wards over HTTP: wards with capacity, admission by the right person, readings and alerts, bad input."""

from __future__ import annotations

import pytest

from tests.care.test_notifications import World, client, drop_users, items, make_world, wait_for
from tests.web.test_pages import csrf_of


@pytest.fixture()
def world(server, uid) -> World:
    yield make_world(server.gate, uid)
    drop_users(server.gate, uid)


def make_ward(api, world, kind="acute", capacity=2):
    r = api.post("/api/virtual-wards", json={"name": f"{kind.title()} ward {world.uid}", "kind": kind,
                                             "capacity": capacity, "organization": world.hospital})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def ward(api, ward_id):
    return next(w for w in api.get("/api/virtual-wards").json()["wards"] if w["id"] == ward_id)


def test_setting_up_wards(api, server, world):
    wid = make_ward(api, world)
    w = ward(api, wid)
    assert w["kind"] == "acute" and w["capacity"] == 2 and w["occupied"] == 0 and w["free"] == 2
    with client(server, world.tokens["gp"]) as c:
        assert c.post("/api/virtual-wards", json={"name": "x", "kind": "acute", "capacity": 3,
                                                  "organization": world.hospital}).status_code == 403
    assert api.post("/api/virtual-wards", json={"name": "x", "kind": "cardiac", "capacity": 3,
                                                "organization": "o"}).status_code == 400
    assert api.post("/api/virtual-wards", json={"name": "x", "kind": "acute", "capacity": 0,
                                                "organization": "o"}).status_code == 400
    assert api.post("/api/virtual-wards", json={"kind": "acute"}).status_code == 400


def test_acute_admission_by_consultant_readings_alerts_and_discharge(api, server, world):
    wid = make_ward(api, world, capacity=1)
    with client(server, world.tokens["kw"]) as c:  # not a senior clinician
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient})
        assert r.status_code == 403 and "consultant" in r.json()["issue"][0]["diagnostics"]
    with client(server, world.tokens["cons"]) as c:
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient, "limits": {"spo2_min": 90}})
        assert r.status_code == 201, r.text
        episode = r.json()["id"]
        assert c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient}).status_code == 409
        assert ward(api, wid)["occupied"] == 1 and ward(api, wid)["free"] == 0
        # readings: bad units and impossible values are refused whole; nothing is written
        before = api.get("/fhir/Observation", params={"patient": world.patient, "_summary": "count"}).json()["total"]
        bad = c.post(f"/api/patients/{world.patient}/readings", json={"readings": [
            {"type": "heart-rate", "value": 80, "unit": "/min"}, {"type": "spo2", "value": 95, "unit": "mmHg"}]})
        assert bad.status_code == 422
        issue = bad.json()["issue"][0]
        assert issue["expression"] == ["readings[1].unit"] and "nothing was recorded" in issue["diagnostics"]
        assert c.post(f"/api/patients/{world.patient}/readings", json={"readings": [
            {"type": "spo2", "value": 930, "unit": "%"}]}).status_code == 422
        assert c.post(f"/api/patients/{world.patient}/readings", json={"readings": [
            {"type": "bp", "systolic": 120, "unit": "mmHg"}]}).status_code == 422
        assert c.post(f"/api/patients/{world.patient}/readings", json={"readings": []}).status_code == 422
        after = api.get("/fhir/Observation", params={"patient": world.patient, "_summary": "count"}).json()["total"]
        assert after == before
        ok = c.post(f"/api/patients/{world.patient}/readings", json={"readings": [
            {"type": "spo2", "value": 88, "unit": "%"}, {"type": "bp", "systolic": 128, "diastolic": 80,
                                                         "unit": "mm[Hg]"}]})
        assert ok.status_code == 201, ok.text
        assert ok.json()["recorded"] == 2 and ok.json()["alerts"] == ["SpO2 88% below agreed limit 90%"]
        got = wait_for(lambda: items(server, world, "cons", "monitoring-alert"))
        assert got and "SpO2 88%" in got[0]["detail"]
        review = c.get("/api/virtual-wards/review").json()["patients"]
        mine = next(p for p in review if p["patient"] == world.patient)
        assert mine["alerts"] and mine["latest"]["spo2"]["value"] == 88
        assert c.get(f"/api/virtual-wards/{wid}").json()["patients"][0]["episode"] == episode
        # the ward is full
        r2 = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": f"other-{world.uid}"})
        assert r2.status_code in (404, 403, 409)
        d = c.post(f"/api/virtual-wards/admissions/{episode}/discharge")
        assert d.status_code == 200 and d.json()["status"] == "finished"
        assert c.post(f"/api/virtual-wards/admissions/{episode}/discharge").status_code == 409
    assert ward(api, wid)["occupied"] == 0


def test_full_ward_is_refused(api, server, world, uid):
    wid = make_ward(api, world, capacity=1)
    other = make_world(server.gate, uid + "b")
    with client(server, world.tokens["cons"]) as c:
        assert c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient}).status_code == 201
    # a consultant caring for the second person finds the ward full
    with client(server, other.tokens["cons"]) as c:
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": other.patient})
        assert r.status_code == 409 and "full" in r.json()["issue"][0]["diagnostics"]
    drop_users(server.gate, uid + "b")


def test_preventive_admission_by_case_manager_and_case_finding(api, server, world):
    wid = make_ward(api, world, kind="preventive", capacity=5)
    api.post("/fhir/Condition", json={"resourceType": "Condition", "subject": {"reference": f"Patient/{world.patient}"},
                                      "code": {"text": "Frailty"}})
    with client(server, world.tokens["kw"]) as c:
        found = c.get("/api/virtual-wards/case-finding").json()
        mine = next(p for p in found["patients"] if p["patient"] == world.patient)
        assert mine["frailty"] and mine["score"] >= 3
    with client(server, world.tokens["cons"]) as c:  # preventive wards: the case manager decides
        assert c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient}).status_code == 403
    with client(server, world.tokens["out"]) as c:
        assert c.get("/api/virtual-wards/case-finding").json()["patients"] == [] or all(
            p["patient"] != world.patient for p in c.get("/api/virtual-wards/case-finding").json()["patients"])
    with client(server, world.tokens["kw"]) as c:
        r = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient, "reason": "Frailty"})
        assert r.status_code == 201, r.text
        assert r.json()["careManager"]["reference"] == f"Practitioner/{world.practitioners['kw']}"
        assert r.json()["meta"]["source"] == f"Organization/comm-{world.uid}"
        j = c.get(f"/api/patients/{world.patient}/journey").json()
        assert j["setting"] == "virtual-ward" and world.uid in j["where"]
        bad = c.post(f"/api/virtual-wards/{wid}/admissions", json={"patient": world.patient, "limits": {"spo2": 1}})
        assert bad.status_code == 422
    assert ward(api, wid)["occupied"] == 1


def test_ward_pages(api, server, world):
    wid = make_ward(api, world)
    with client(server, world.tokens["cons"]) as c:
        c.headers.pop("Authorization")
        c.cookies.set("joinedup_token", world.tokens["cons"])
        assert "Occupancy against capacity" in c.get("/wards").text
        token = csrf_of(c.get(f"/wards/{wid}").text)  # the ward page has the admit form
        r = c.post(f"/wards/{wid}/admit", data={"patient": world.patient, "spo2_min": "88", "csrf_token": token},
                   follow_redirects=True)
        assert r.status_code == 200 and "Ada Lovelace" in r.text
        assert "Ada Lovelace" in c.get("/wards/review").text
        bad = c.post(f"/wards/{wid}/admit", data={"patient": world.patient, "spo2_min": "low", "csrf_token": token})
        assert bad.status_code == 422 and "must be a number" in bad.text
