"""Over real HTTP: refused entries never leak through _include, _revinclude, $everything, _history, totals or
bulk export; consent is honoured; break-glass is explained, time-limited, shown and reviewed; patients see who
looked."""

from __future__ import annotations

import pytest

from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM, PRIVATE_TAG_CODE, PRIVATE_TAG_SYSTEM

CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
ACTOR_ROLE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}


def _ids(bundle: dict, mode: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if "resource" in e and (mode is None or e.get("search", {}).get("mode") == mode)}


@pytest.fixture()
def users(server, uid) -> dict:
    """A consultant at a hospital, a privacy officer and a patient user for this test's person."""
    gate = server.gate
    # fixed names (redefined for each test): the user list stays short
    names = {"consultant": "lb-cons", "officer": "lb-po", "person": "lb-person", "social": "lb-sw"}
    add_user(gate, name=names["consultant"], role="consultant", practitioner=f"c-{uid[:6]}",
             organization=f"h-{uid[:6]}", replace=True)
    add_user(gate, name=names["social"], role="social-worker", practitioner=f"s-{uid[:6]}",
             organization=f"la-{uid[:6]}", replace=True)
    add_user(gate, name=names["officer"], role="privacy-officer", replace=True)
    add_user(gate, name=names["person"], role="patient", patient=f"pp-{uid[:6]}", replace=True)
    server.tokens.update({k: issue_token(gate, v) for k, v in names.items()})
    yield names
    _deactivate(server, list(names.values()))


def _deactivate(server, names: list[str]) -> None:
    """Retire this module's users afterwards, so other tests' user listings stay as they expect."""
    from joinedup.store import schema

    u = schema.app_user
    with server.gate.store_for_tests.writing() as conn:
        conn.execute(u.update().where(u.c.name.in_(names)).values(active=False))


@pytest.fixture()
def record(api, uid) -> dict:
    """A person registered at practice-1 (the gp user's) with shared, sealed and private entries."""
    pid = f"pp-{uid[:6]}"
    sys = f"https://joinedup.example/test/leaks/{uid}"
    api.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                          "identifier": [{"system": sys, "value": "p"}],
                                          "generalPractitioner": [{"reference": "Organization/practice-1"}]})

    def obs(oid: str, source: str, **meta) -> str:
        body = {"resourceType": "Observation", "id": oid, "status": "final", "meta": {"source": source, **meta},
                "identifier": [{"system": sys, "value": oid}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "subject": {"reference": f"Patient/{pid}"}}
        assert api.put(f"/fhir/Observation/{oid}", json=body).status_code in (200, 201)
        return oid

    ids = {
        "pid": pid, "sys": sys,
        "shared": obs(f"shared-{uid}", f"Organization/h-{uid[:6]}"),
        "gp_own": obs(f"gpown-{uid}", "Organization/practice-1"),
        "sealed": obs(f"sealed-{uid}", f"Organization/h-{uid[:6]}", security=[{"system": CONF, "code": "R"}]),
        "private": obs(f"private-{uid}", f"Organization/h-{uid[:6]}",
                       tag=[{"system": PRIVATE_TAG_SYSTEM, "code": PRIVATE_TAG_CODE}]),
    }
    return ids


HIDDEN = ("sealed", "private")


def test_sealed_and_private_never_leak_to_another_organisation(server, users, record):
    pid = record["pid"]
    with server.client("gp") as gp:
        # direct reads: refused with the reason
        for key in HIDDEN:
            r = gp.get(f"/fhir/Observation/{record[key]}")
            assert r.status_code == 403 and "recorded it" in r.json()["issue"][0]["diagnostics"]
            assert gp.get(f"/fhir/Observation/{record[key]}/_history/1").status_code == 403
            assert gp.get(f"/fhir/Observation/{record[key]}/_history").status_code == 403
        visible = {record["shared"], record["gp_own"]}
        # search, paging and totals
        b = gp.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
        assert _ids(b) == visible and b["total"] == 2
        assert gp.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_summary": "count"}
                      ).json()["total"] == 2
        assert gp.get("/fhir/Observation", params={"identifier": f"{record['sys']}|", "_total": "accurate",
                                                   "_count": 1}).json()["total"] == 2
        pages = set()
        url = f"/fhir/Observation?subject=Patient/{pid}&_count=1"
        while url:
            page = gp.get(url).json()
            pages |= _ids(page)
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        assert pages == visible
        # _revinclude and _include
        b = gp.get("/fhir/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}).json()
        assert _ids(b, "include") == visible
        b = gp.get("/fhir/Patient", params={"_id": pid, "_revinclude": "Observation:patient"}).json()
        assert not ({record[k] for k in HIDDEN} & _ids(b))
        # $everything
        everything = _ids(gp.get(f"/fhir/Patient/{pid}/$everything").json())
        assert visible <= everything and not ({record[k] for k in HIDDEN} & everything)
        # batch GETs go through the same gate
        batch = gp.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Observation/{record['sealed']}"}},
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{pid}"}}]}).json()
        assert batch["entry"][0]["response"]["status"].startswith("403")
        assert _ids(batch["entry"][1]["resource"]) == visible
        # type and system history span many records: refused for professionals
        assert gp.get("/fhir/Observation/_history").status_code == 403
        assert gp.get("/fhir/_history").status_code == 403
        # bulk export is the integration account's only
        assert gp.get("/fhir/$export", headers={"Prefer": "respond-async"}).status_code == 403
    # the recording organisation sees its sealed entry; the person sees everything of their own
    with server.client("person") as person:
        own = _ids(person.get(f"/fhir/Patient/{pid}/$everything").json())
        assert {record[k] for k in ("shared", "gp_own", *HIDDEN)} <= own


def test_recording_organisation_sees_its_sealed_entries(server, users, record):
    # the consultant's hospital recorded them; a referral gives the consultant a relationship
    with server.client("admin") as api:
        api.post("/fhir/ServiceRequest", json={"resourceType": "ServiceRequest", "status": "active",
                                               "intent": "order", "subject": {"reference": f"Patient/{record['pid']}"},
                                               "performer": [{"reference": f"Organization/h-{record['pid'][3:]}"}]})
    with server.client("consultant") as cons:
        for key in ("shared", *HIDDEN):
            assert cons.get(f"/fhir/Observation/{record[key]}").status_code == 200
        # the GP's own entry is shared with the hospital (no objection)
        assert cons.get(f"/fhir/Observation/{record['gp_own']}").status_code == 200


def test_objection_to_sharing(server, api, users, record, uid):
    pid = record["pid"]
    with server.client("admin") as a:
        a.post("/fhir/ServiceRequest", json={"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                                             "subject": {"reference": f"Patient/{pid}"},
                                             "performer": [{"reference": f"Organization/h-{uid[:6]}"}]})
    # the person objects to sharing with the hospital: made by the person themselves
    with server.client("person") as person:
        r = person.post("/fhir/Consent", json={
            "resourceType": "Consent", "status": "active", "scope": SCOPE, "category": CATEGORY,
            "patient": {"reference": f"Patient/{pid}"},
            "provision": {"type": "deny", "actor": [{"role": ACTOR_ROLE,
                                                     "reference": {"reference": f"Organization/h-{uid[:6]}"}}]}})
        assert r.status_code == 201, r.text
        consent_id = r.json()["id"]
    with server.client("consultant") as cons:
        r = cons.get(f"/fhir/Observation/{record['gp_own']}")
        assert r.status_code == 403 and "objected" in r.json()["issue"][0]["diagnostics"]
        # the hospital's own entries stay visible to it; the GP's do not appear anywhere
        b = cons.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
        assert record["gp_own"] not in _ids(b) and record["shared"] in _ids(b)
        assert record["gp_own"] not in _ids(cons.get(f"/fhir/Patient/{pid}/$everything").json())
        # who the person is, and their choice, remain visible
        assert cons.get(f"/fhir/Patient/{pid}").status_code == 200
        assert cons.get(f"/fhir/Consent/{consent_id}").status_code == 200
    with server.client("gp") as gp:  # the objection names the hospital only
        assert gp.get(f"/fhir/Observation/{record['shared']}").status_code == 200
    # withdrawing the objection restores sharing at once
    with server.client("person") as person:
        consent = person.get(f"/fhir/Consent/{consent_id}").json()
        consent["status"] = "inactive"
        assert person.put(f"/fhir/Consent/{consent_id}", json=consent).status_code == 200
    with server.client("consultant") as cons:
        assert cons.get(f"/fhir/Observation/{record['gp_own']}").status_code == 200


def test_objection_to_all_sharing_and_private_items_by_consent(server, api, record, uid):
    pid = record["pid"]
    r = api.post("/fhir/Consent", json={
        "resourceType": "Consent", "status": "active", "scope": SCOPE, "category": CATEGORY,
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {"type": "permit", "provision": [
            {"type": "deny", "data": [{"meaning": "instance",
                                       "reference": {"reference": f"Observation/{record['gp_own']}"}}]}]}})
    assert r.status_code == 201
    with server.client("gp") as gp:  # the GP recorded it: still visible to them
        assert gp.get(f"/fhir/Observation/{record['gp_own']}").status_code == 200
        assert gp.get(f"/fhir/Observation/{record['shared']}").status_code == 200
    api.post("/fhir/Consent", json={"resourceType": "Consent", "status": "active", "scope": SCOPE,
                                    "category": CATEGORY, "patient": {"reference": f"Patient/{pid}"},
                                    "provision": {"type": "deny"}})
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Observation/{record['shared']}").status_code == 403
        b = gp.get("/fhir/Observation", params={"subject": f"Patient/{pid}", "_summary": "count"}).json()
        assert b["total"] == 1  # only the practice's own entry


def test_break_glass_flow(server, users, record, uid):
    pid = record["pid"]
    with server.client("consultant") as cons:
        r = cons.get(f"/fhir/Observation/{record['shared']}")
        assert r.status_code == 403
        text = r.json()["issue"][0]["diagnostics"]
        assert "legitimate relationship" in text and "break-glass" in text
        # bad requests are explained
        for body, fragment in [({"patient": pid, "reason_category": "emergency-treatment"}, "reason"),
                               ({"patient": pid, "reason_category": "because", "reason": "x" * 20}, "reason_category"),
                               ({"reason_category": "emergency-treatment", "reason": "x" * 20}, "patient"),
                               ({"patient": pid, "reason_category": "other", "reason": "x" * 20, "hours": 99},
                                "hours")]:
            # (an id nobody holds is granted like any other - no existence oracle, see tests/security)
            bad = cons.post("/api/break-glass", json=body)
            assert bad.status_code in (400, 404), bad.text
            assert bad.json()["resourceType"] == "OperationOutcome" and fragment in bad.text
        assert cons.post("/api/break-glass", content=b"[1]", headers={"Content-Type": "application/json"}
                         ).status_code == 400
        r = cons.post("/api/break-glass", json={"patient": f"Patient/{pid}", "reason_category": "unable-to-consent",
                                                "reason": "Unconscious in ED, needs medication history"})
        assert r.status_code == 201, r.text
        grant = r.json()
        assert grant["active"] and grant["expires"] > grant["granted"] and "reviewed" in grant["notice"]
        r = cons.get(f"/fhir/Observation/{record['shared']}")
        assert r.status_code == 200
        assert r.headers["X-JoinedUp-Access"].startswith("break-glass until ")
        everything = cons.get(f"/fhir/Patient/{pid}/$everything")
        assert "break-glass" in everything.headers["X-JoinedUp-Access"]
        # the hospital recorded the sealed entry: visible to it; the GP practice's entry too (no objection)
        assert {record["sealed"], record["gp_own"], record["shared"]} <= _ids(everything.json())
        assert cons.get("/api/break-glass").json()["grants"][0]["id"] == grant["id"]
    with server.client("gp") as gp:  # no break-glass needed with a relationship
        r = gp.post("/api/break-glass", json={"patient": pid, "reason_category": "other", "reason": "x" * 20})
        assert r.status_code == 409
        assert "X-JoinedUp-Access" not in gp.get(f"/fhir/Patient/{pid}").headers
    with server.client("social") as sw:  # social workers have no emergency-access activity
        r = sw.post("/api/break-glass", json={"patient": pid, "reason_category": "safeguarding",
                                              "reason": "Safeguarding concern raised by neighbour"})
        assert r.status_code == 403
    server.gate.flush_audit()
    # the privacy officer's queue
    with server.client("consultant") as cons:
        assert cons.get("/api/privacy/reviews").status_code == 403
    with server.client("officer") as po:
        queue = po.get("/api/privacy/reviews").json()["reviews"]
        mine = [g for g in queue if g["id"] == grant["id"]]
        assert mine and mine[0]["outcome"] is None and mine[0]["accesses_during_grant"] >= 2
        assert po.post(f"/api/privacy/reviews/{grant['id']}", json={"outcome": "maybe"}).status_code == 400
        assert po.post(f"/api/privacy/reviews/{grant['id']}", json={"outcome": "inappropriate"}).status_code == 400
        assert po.post("/api/privacy/reviews/nope", json={"outcome": "appropriate"}).status_code == 404
        done = po.post(f"/api/privacy/reviews/{grant['id']}", json={"outcome": "appropriate",
                                                                    "note": "Confirmed ED attendance"})
        assert done.status_code == 200 and done.json()["outcome"] == "appropriate"
        assert po.post(f"/api/privacy/reviews/{grant['id']}", json={"outcome": "appropriate"}).status_code == 409
        assert grant["id"] not in {g["id"] for g in po.get("/api/privacy/reviews").json()["reviews"]}
        reviewed = po.get("/api/privacy/reviews", params={"status": "reviewed"}).json()["reviews"]
        assert any(g["id"] == grant["id"] and g["reviewed_by"] == users["officer"] for g in reviewed)
        assert po.get("/api/privacy/reviews", params={"status": "nonsense"}).status_code == 400
        # privacy officers do not read clinical records
        assert po.get(f"/fhir/Observation/{record['shared']}").status_code == 403


def test_break_glass_expires(server, users, record):

    from joinedup.store import schema

    pid = record["pid"]
    with server.client("consultant") as cons:
        grant = cons.post("/api/break-glass", json={"patient": pid, "reason_category": "emergency-treatment",
                                                    "reason": "Collapsed in clinic waiting room", "hours": 0.5}).json()
        assert cons.get(f"/fhir/Patient/{pid}").status_code == 200
        bg = schema.break_glass
        with server.gate.store_for_tests.writing() as conn:
            conn.execute(bg.update().where(bg.c.id == grant["id"]).values(expires="2000-01-01T00:00:00"))
        server.gate.facts_for_tests.bump()
        r = cons.get(f"/fhir/Patient/{pid}")
        assert r.status_code == 403 and "X-JoinedUp-Access" not in r.headers


def test_patient_sees_who_looked(server, users, record):
    pid = record["pid"]
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Observation/{record['shared']}").status_code == 200
    with server.client("consultant") as cons:
        assert cons.get(f"/fhir/Patient/{pid}").status_code == 403  # refused looks are listed too
    with server.client("person") as person:
        log = person.get("/api/me/access-log").json()
        assert log["patient"] == f"Patient/{pid}" and log["total"] >= 2
        who = {(e["who"], e["outcome"]) for e in log["entries"]}
        assert ("gp", "allowed") in who and (users["consultant"], "refused") in who
        assert all(e["when"] and e["action"] for e in log["entries"])
        assert person.get("/api/me/access-log", params={"count": 5000}).status_code == 400
    with server.client("gp") as gp:
        assert gp.get("/api/me/access-log").status_code == 403


def test_opt_out_has_no_effect_on_direct_care(server, api, record):
    pid = record["pid"]
    r = api.post("/fhir/Consent", json={
        "resourceType": "Consent", "status": "active", "category": CATEGORY,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "policyRule": {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE}]},
        "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "deny"}})
    assert r.status_code == 201
    assert server.gate.facts_for_tests.opted_out(pid)
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Observation/{record['shared']}").status_code == 200
        assert record["shared"] in _ids(gp.get(f"/fhir/Patient/{pid}/$everything").json())
