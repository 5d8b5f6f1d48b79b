"""Care team and key worker over HTTP: one named key worker, explicit audited handover, refusals."""

from __future__ import annotations

import pytest

from joinedup.care.plans import team
from joinedup.governance.accounts import get_user
from tests.care.test_plans import CareWorld, build_world


@pytest.fixture()
def world(server, uid) -> CareWorld:
    return build_world(server, uid, conditions=False)


def test_key_worker_is_named(server, world):
    with world.client(server, f"nurse-{world.uid}") as c:
        r = c.get(f"/api/patients/{world.patient}/key-worker")
        assert r.status_code == 200, r.text
        kw = r.json()["key_worker"]
        assert kw["practitioner_id"] == world.kw and kw["name"] == f"Kim Keyworker{world.uid}"
        assert kw["organization_id"] == world.community
        members = c.get(f"/api/patients/{world.patient}/care-team").json()["members"]
        assert {m["practitioner_id"] for m in members} == {world.kw, world.nurse, world.cons}
    # the function the record and web layers call
    who = get_user(server.gate, f"cons-{world.uid}")
    assert team.key_worker(gate=server.gate, who=who, patient_id=world.patient)["practitioner_id"] == world.kw


def test_handover_is_explicit_recorded_and_audited(server, world):
    url = f"/api/patients/{world.patient}/key-worker/handover"
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.post(url, json={"to_practitioner": world.nurse, "to_organization": world.community,
                              "reason": "Kim is moving to the north locality"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["key_worker"]["practitioner_id"] == world.nurse
        (h,) = body["handovers"]
        assert h["from"]["reference"] == f"Practitioner/{world.kw}"
        assert h["to"]["reference"] == f"Practitioner/{world.nurse}"
        assert h["reason"] == "Kim is moving to the north locality" and h["by"]
        assert world.kw in {m["practitioner_id"] for m in body["former_members"]}
    with world.client(server, f"cons-{world.uid}") as c:
        assert c.get(f"/api/patients/{world.patient}/key-worker").json()["key_worker"]["practitioner_id"] == world.nurse
    server.gate.flush_audit()
    with server.client("admin") as c:
        r = c.get("/fhir/AuditEvent", params={"subtype": "key-worker-handover", "patient": world.patient})
        assert r.status_code == 200
        events = r.json().get("entry") or []
        assert any("north locality" in (e["resource"].get("outcomeDesc") or "") for e in events)


def test_handover_refusals(server, world):
    url = f"/api/patients/{world.patient}/key-worker/handover"
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.post(url, json={"to_practitioner": world.nurse, "to_organization": world.community, "reason": "  "})
        assert r.status_code == 422 and "reason" in r.text
        r = c.post(url, json={"to_practitioner": f"ghost-{world.uid}", "to_organization": world.community,
                              "reason": "x"})
        assert r.status_code == 422 and "not in the directory" in r.text
        r = c.post(url, json={"to_practitioner": world.kw, "to_organization": world.community, "reason": "x"})
        assert r.status_code == 409 and "already" in r.text
        r = c.post(url, json={"to_practitioner": world.nurse, "to_organization": world.hospital, "reason": "x"})
        assert r.status_code == 422 and "does not work for" in r.text
        r = c.post(url, json={"to_practitioner": world.nurse})
        assert r.status_code == 400
        # nothing changed
        assert c.get(f"/api/patients/{world.patient}/key-worker").json()["key_worker"]["practitioner_id"] == world.kw
    with world.client(server, f"far-{world.uid}") as c:
        r = c.post(url, json={"to_practitioner": world.far, "to_organization": world.far_org, "reason": "mine now"})
        assert r.status_code == 403


def test_handover_page(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        c.cookies.set("joinedup_token", world.tokens[f"kw-{world.uid}"])
        page = c.get(f"/patients/{world.patient}/key-worker/handover")
        assert page.status_code == 200 and "Hand over the key worker role" in page.text
        bad = c.post(f"/patients/{world.patient}/key-worker/handover",
                     data={"owner": f"{world.cons}|{world.hospital}", "reason": ""}, follow_redirects=False)
        assert bad.status_code == 422 and "reason is required" in bad.text
        ok = c.post(f"/patients/{world.patient}/key-worker/handover",
                    data={"owner": f"{world.cons}|{world.hospital}", "reason": "Hospital-led care for now"},
                    follow_redirects=False)
        assert ok.status_code == 303
        plan = c.get(ok.headers["location"])
        assert f"Colin Consultant{world.uid}" in plan.text and "Hospital-led care for now" in plan.text
