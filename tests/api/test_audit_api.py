"""Every access through the API leaves an AuditEvent, readable (by those allowed) as FHIR AuditEvents."""

from __future__ import annotations

from collections import Counter

import pytest


def _events(server, api, **params) -> list[dict]:
    server.gate.flush_audit()
    r = api.get("/fhir/AuditEvent", params={"_count": 500, **params})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["type"] == "searchset"
    return [e["resource"] for e in b["entry"]]


def _action(ev: dict) -> str:
    return ev["subtype"][0]["code"]


def _entities(ev: dict) -> list[str]:
    return [e["what"]["reference"] for e in ev.get("entity", []) if "what" in e]


@pytest.fixture()
def patient(api, uid) -> str:
    r = api.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Audit{uid}"}],
                                        "generalPractitioner": [{"reference": "Organization/practice-1"}]})
    assert r.status_code == 201
    return r.json()["id"]


def test_every_read_and_search_is_audited(server, api, patient):
    pid = patient
    obs = api.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "pulse"},
            "subject": {"reference": f"Patient/{pid}"},
        },
    )
    oid = obs.json()["id"]
    assert api.get(f"/fhir/Patient/{pid}").status_code == 200
    assert api.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert api.get(f"/fhir/Observation/{oid}").status_code == 200
    assert api.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).status_code == 200
    assert api.get(f"/fhir/Patient/{pid}/_history").status_code == 200
    assert api.get(f"/fhir/Patient/{pid}/$everything").status_code == 200

    events = _events(server, api, patient=pid)
    counts = Counter(_action(ev) for ev in events)
    assert counts == Counter(
        {"create": 2, "read": 2, "vread": 1, "search": 1, "history": 1, "everything": 1}
    ), counts
    assert all(ev["outcome"] == "0" for ev in events)
    assert all(ev["agent"][0]["who"]["display"] == "admin" for ev in events)
    read = next(ev for ev in events if _action(ev) == "read" and f"Patient/{pid}" in _entities(ev))
    assert read["action"] == "R"
    assert read["recorded"]
    search = next(ev for ev in events if _action(ev) == "search")
    assert any(
        f"subject=Patient%2F{pid}" in e.get("description", "") or f"Patient/{pid}" in e.get("description", "")
        for e in search["entity"]
    )
    assert f"Patient/{pid}" in _entities(search)
    # newest first
    recorded = [ev["recorded"] for ev in events]
    assert recorded == sorted(recorded, reverse=True)


def test_reading_the_audit_is_audited_too(server, api, patient):
    first = _events(server, api, patient=patient)
    second = _events(server, api, patient=patient)
    assert len(second) == len(first) + 1
    assert _action(second[0]) == "search" and "AuditEvent" in _entities(second[0])


def test_refused_access_is_audited(server, api, patient):
    with server.client("analyst") as analyst:
        r = analyst.get(f"/fhir/Patient/{patient}")
        assert r.status_code == 403
    refused = _events(server, api, patient=patient, outcome="8")
    assert len(refused) == 1
    ev = refused[0]
    assert ev["outcome"] == "8"
    assert _action(ev) == "read"
    assert ev["agent"][0]["who"]["display"] == "analyst"
    assert ev["agent"][0]["role"][0]["text"] == "analyst"
    assert "analyst" in ev["outcomeDesc"]
    assert f"Patient/{patient}" in _entities(ev)
    allowed = _events(server, api, patient=patient, outcome="0")
    assert all(e["outcome"] == "0" for e in allowed) and allowed


def test_failed_login_is_audited(server, api, uid):
    with server.client(None) as anon:
        assert (
            anon.get(f"/fhir/Patient/login-{uid}", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
    server.gate.flush_audit()
    events = _events(server, api, subtype="login", outcome="8", _count=50)
    assert any(f"/fhir/Patient/login-{uid}" in _entities(ev) for ev in events)


def test_audit_filters_by_agent_and_subtype(server, api, patient):
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Patient/{patient}").status_code == 200
    events = _events(server, api, patient=patient, agent="gp")
    assert [_action(ev) for ev in events] == ["read"]
    gp_ev = events[0]
    assert gp_ev["agent"][0]["who"]["reference"] == "Practitioner/gp-1"
    assert gp_ev["agent"][0]["location"]["reference"] == "Organization/practice-1"
    creates = _events(server, api, patient=patient, subtype="create")
    assert len(creates) == 1 and creates[0]["agent"][0]["who"]["display"] == "admin"


def test_audit_event_read_by_id_and_chain_fields(server, api, patient):
    ev = _events(server, api, patient=patient)[0]
    r = api.get(f"/fhir/AuditEvent/{ev['id']}")
    assert r.status_code == 200
    got = r.json()
    assert got["id"] == ev["id"]
    chain = {x["url"]: x for x in got["extension"][0]["extension"]}
    assert chain["sequence"]["valueInteger"] > 0
    assert len(chain["previousHash"]["valueString"]) == 64
    assert api.get("/fhir/AuditEvent/no-such-event").status_code == 404


def test_who_may_read_the_audit(server, api, uid):
    with server.client("gp") as gp:
        r = gp.get("/fhir/AuditEvent")
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    with server.client("analyst") as analyst:
        assert analyst.get("/fhir/AuditEvent").status_code == 403
    # a patient sees who looked at their own record, and nobody else's
    api.put(
        "/fhir/Patient/self-1",
        json={"resourceType": "Patient", "id": "self-1", "name": [{"family": "Self", "given": ["Pat"]}]},
    )
    with server.client("gp") as gp:
        gp.get("/fhir/Patient/self-1")
    server.gate.flush_audit()
    with server.client("pat") as pat:
        r = pat.get("/fhir/AuditEvent", params={"_count": 500})
        assert r.status_code == 200, r.text
        events = [e["resource"] for e in r.json()["entry"]]
        assert events
        assert any(ev["agent"][0]["who"]["display"] == "gp" for ev in events)
        for ev in events:
            refs = _entities(ev)
            assert (
                any("self-1" in ref for ref in refs)
                or ev["agent"][0]["who"].get("reference") == "Patient/self-1"
            ), ev
        assert pat.get("/fhir/AuditEvent", params={"patient": f"other-{uid}"}).status_code == 403
