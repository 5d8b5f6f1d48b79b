"""The person's portal over HTTP (issue 13.10): sharing choices take effect at once and are shown back; messages
to the care team with replies; correction requests with their status; a carer's access - scope, expiry, revoke -
audited and shown in "who looked" in plain words. Expectations come from docs/governance.md (objections, private
entries, the National Data Opt-out, proxy access) and the FHIR R4 Consent and Communication definitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from joinedup.governance import deid
from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.identity import SYSTEM
from tests.record.helpers import load, organisations, rich_record


@pytest.fixture(scope="module")
def world(server):
    """A person known to five organisations, and users: the person, their GP, a consultant at the acute trust (an
    open referral), their key worker at the community trust."""
    import uuid

    uid = uuid.uuid4().hex[:8]
    pid = f"portal-{uid}"
    with server.client("admin") as api:
        load(api, organisations(uid) + rich_record(uid, pid, seed=int(uid[:5], 16)) + [
            {"resourceType": "Appointment", "id": f"{pid}-appt", "meta": {"source": f"Organization/acute-{uid}"},
             "status": "booked", "description": "Heart failure clinic", "start": "2099-02-01T10:00:00Z",
             "end": "2099-02-01T10:30:00Z",
             "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]}])
    users = {f"me-{uid}": dict(role="patient", patient=pid),
             f"gp-{uid}": dict(role="gp", practitioner=f"gp1-{uid}", organization=f"gp-{uid}"),
             f"cons-{uid}": dict(role="consultant", practitioner=f"cons-{uid}", organization=f"acute-{uid}"),
             f"kw-{uid}": dict(role="care-coordinator", practitioner=f"kw-{uid}", organization=f"comm-{uid}")}
    tokens = {}
    for name, spec in users.items():
        add_user(server.gate, name=name, password="pw-" + name, replace=True, **spec)
        tokens[name.split("-")[0]] = issue_token(server.gate, name)
    clients = {k: httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}",
                                                             "Accept": "application/fhir+json"}, timeout=60)
               for k, t in tokens.items()}
    yield {"uid": uid, "pid": pid, "c": clients, "server": server}
    for c in clients.values():
        c.close()


def _carer_client(server, account: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {issue_token(server.gate, account)}",
                                                      "Accept": "application/fhir+json"}, timeout=60)


def test_objecting_to_a_named_organisation_takes_effect_at_once_and_is_shown_back(world):
    c, pid, uid = world["c"], world["pid"], world["uid"]
    gp_entry = f"/fhir/Condition/{pid}-c1"       # recorded by the GP practice
    acute_entry = f"/fhir/Condition/{pid}-c2"    # recorded by the acute trust itself
    assert c["cons"].get(gp_entry).status_code == 200
    r = c["me"].post("/api/me/sharing", json={"choice": "object-organisation", "organisation": f"acute-{uid}"})
    assert r.status_code == 201, r.text
    consent = r.json()["consent"].split("/")[1]
    # at once: the consultant's next read of another organisation's entry is refused, and searches leave it out
    refused = c["cons"].get(gp_entry)
    assert refused.status_code == 403 and "objected" in refused.text
    assert c["cons"].get(acute_entry).status_code == 200          # what they recorded themselves stays theirs
    ids = {e["resource"]["id"] for e in c["cons"].get("/fhir/Condition", params={"patient": pid}).json()["entry"]}
    assert f"{pid}-c1" not in ids and f"{pid}-c2" in ids
    assert c["gp"].get(gp_entry).status_code == 200                # other organisations are not affected
    # shown back to the person, naming the organisation
    shown = c["me"].get("/api/me/sharing").json()["choices"]
    assert any(x["kind"] == "organization" and "Northshire Teaching Hospitals" in x["text"] for x in shown)
    # withdrawn: sharing resumes at once
    assert c["me"].post(f"/api/me/sharing/{consent}/withdraw").status_code == 200
    assert c["cons"].get(gp_entry).status_code == 200
    assert not [x for x in c["me"].get("/api/me/sharing").json()["choices"] if x["kind"] == "organization"]


def test_a_professional_cannot_lift_the_persons_objection(world):
    c, uid = world["c"], world["uid"]
    r = c["me"].post("/api/me/sharing", json={"choice": "object-organisation", "organisation": f"acute-{uid}"})
    cid = r.json()["consent"].split("/")[1]
    consent = c["gp"].get(f"/fhir/Consent/{cid}").json()
    assert c["gp"].put(f"/fhir/Consent/{cid}", json={**consent, "status": "inactive"}).status_code == 403
    assert c["gp"].delete(f"/fhir/Consent/{cid}").status_code == 403
    assert c["me"].post(f"/api/me/sharing/{cid}/withdraw").status_code == 200


def test_marking_an_entry_private_hides_it_from_everyone_but_its_recorder(world):
    c, pid = world["c"], world["pid"]
    entry = f"Condition/{pid}-c5"   # depression, recorded by the mental health trust
    assert c["gp"].get(f"/fhir/{entry}").status_code == 200
    r = c["me"].post("/api/me/sharing", json={"choice": "private", "entry": entry})
    assert r.status_code == 201, r.text
    assert c["gp"].get(f"/fhir/{entry}").status_code == 403
    assert c["kw"].get(f"/fhir/{entry}").status_code == 403
    ids = {e["resource"]["id"] for e in c["gp"].get("/fhir/Condition", params={"patient": pid}).json()["entry"]}
    assert f"{pid}-c5" not in ids and f"{pid}-c1" in ids
    assert c["me"].get(f"/fhir/{entry}").status_code == 200        # the person still sees their own entry
    shown = c["me"].get("/api/me/sharing").json()["choices"]
    assert any(x["kind"] == "private" and "Depressive disorder" in x["text"] for x in shown)
    # someone else's entry, or nonsense, is refused with a clear message
    assert c["me"].post("/api/me/sharing", json={"choice": "private", "entry": "Condition/nobody-xyz"}
                        ).status_code in (403, 404)
    assert c["me"].post("/api/me/sharing", json={"choice": "banana"}).status_code == 422
    assert c["gp"].post("/api/me/sharing", json={"choice": "opt-out"}).status_code == 403


def test_opting_out_removes_the_person_from_de_identified_extracts_but_not_from_care(world):
    c, pid, server = world["c"], world["pid"], world["server"]
    pseudo = deid.Pseudonymiser("test-secret")
    before = {r[0]["id"] for r in server.gate.deidentified_records(SYSTEM, purpose="research", key="test-secret")}
    assert pseudo(f"Patient/{pid}") in before
    r = c["me"].post("/api/me/sharing", json={"choice": "opt-out"})
    assert r.status_code == 201, r.text
    after = {r[0]["id"] for r in server.gate.deidentified_records(SYSTEM, purpose="research", key="test-secret")}
    assert pseudo(f"Patient/{pid}") not in after
    assert c["gp"].get(f"/fhir/Condition/{pid}-c1").status_code == 200   # direct care unaffected
    view = c["me"].get("/api/me/sharing").json()
    assert view["opted_out"] is True
    cid = next(x["id"] for x in view["choices"] if x["kind"] == "opt-out")
    c["me"].post(f"/api/me/sharing/{cid}/withdraw")
    again = {r[0]["id"] for r in server.gate.deidentified_records(SYSTEM, purpose="research", key="test-secret")}
    assert pseudo(f"Patient/{pid}") in again


def test_messages_to_the_care_team_with_replies_and_correction_status(world):
    c, pid = world["c"], world["pid"]
    r = c["me"].post("/api/me/messages", json={"text": "My ankles are more swollen this week.", "to": "team"})
    assert r.status_code == 201, r.text
    mid = r.json()["message"].split("/")[1]
    msg = c["gp"].get(f"/fhir/Communication/{mid}").json()
    assert msg["recipient"] == [{"reference": f"CareTeam/{pid}-ct"}] and msg["status"] == "completed"
    threads = c["me"].get("/api/me/messages").json()["threads"]
    mine = next(t for t in threads if t["id"] == mid)
    assert mine["kind_words"] == "Message" and mine["state"] == "Awaiting reply"
    # the key worker replies (inResponseTo), the person sees the thread
    r = c["kw"].post(f"/api/patients/{pid}/messages/{mid}/reply", json={"text": "I will visit on Thursday."})
    assert r.status_code == 201, r.text
    reply = c["kw"].get(f"/fhir/{r.json()['message']}").json()
    assert reply["inResponseTo"] == [{"reference": f"Communication/{mid}"}]
    assert reply["recipient"] == [{"reference": f"Patient/{pid}"}]
    mine = next(t for t in c["me"].get("/api/me/messages").json()["threads"] if t["id"] == mid)
    assert mine["state"] == "Replied" and mine["replies"][0]["text"] == "I will visit on Thursday."
    assert "Care coordinator" in mine["replies"][0]["from"]
    # a correction request shows as a correction request with its status
    page = c["me"].get("/api/me/messages").json()["threads"]
    assert all(t["kind_words"] in ("Message", "Correction request") for t in page)
    # only the person writes here; an empty message keeps nothing
    assert c["me"].post("/api/me/messages", json={"text": "  ", "to": "team"}).status_code == 422
    assert c["me"].post("/api/me/messages", json={"text": "hi", "to": "Practitioner/someone-else"}
                        ).status_code == 422
    assert c["gp"].post("/api/me/messages", json={"text": "hi"}).status_code == 403


def test_professionals_find_the_message_in_their_inbox(world):
    import time

    c = world["c"]
    r = c["me"].post("/api/me/messages", json={"text": "Can my appointment be moved?", "to": "team"})
    assert r.status_code == 201
    for _ in range(100):
        items = c["kw"].get("/api/inbox").json()["items"]
        if any(i["event"] == "person-message" and "appointment be moved" in (i["detail"] or "") for i in items):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the key worker's inbox has no item for the person's message")


def _grant(c, uid, *, scope, days=30, account=None):
    until = (datetime.now(UTC).date() + timedelta(days=days)).isoformat()
    return c["me"].post("/api/me/carers", json={"name": "Ava Young", "relationship": "Daughter",
                                                "account": account or f"ava-{scope[:5]}-{uid}", "scope": scope,
                                                "until": until})


def test_a_carer_sees_exactly_the_scope_the_person_granted_until_it_is_revoked(world):
    c, pid, uid, server = world["c"], world["pid"], world["uid"], world["server"]
    r = _grant(c, uid, scope="appointments-plan")
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["password"] and grant["account"] == f"ava-appoi-{uid}"
    consent = c["me"].get(f"/fhir/Consent/{grant['consent']}").json()
    assert consent["provision"]["type"] == "permit"
    assert consent["provision"]["actor"][0]["reference"]["reference"].startswith("RelatedPerson/")
    assert consent["provision"]["period"]["end"].endswith("T23:59:59Z")
    with _carer_client(server, grant["account"]) as carer:
        assert carer.get(f"/fhir/Appointment/{pid}-appt").status_code == 200
        assert carer.get(f"/fhir/Goal/{pid}-goal").status_code == 200
        assert carer.get(f"/fhir/Condition/{pid}-c1").status_code == 403          # outside the scope
        assert carer.get(f"/fhir/MedicationRequest/{pid}-m1").status_code == 403
        found = carer.get("/fhir/Condition", params={"patient": pid})
        assert found.status_code == 403 or not found.json().get("entry")
        appts = carer.get("/fhir/Appointment", params={"patient": pid}).json()
        assert [e["resource"]["id"] for e in appts["entry"]] == [f"{pid}-appt"]
        everything = carer.get(f"/fhir/Patient/{pid}/$everything").json()
        types = {e["resource"]["resourceType"] for e in everything["entry"]}
        assert types <= {"Patient", "Appointment", "Encounter", "EpisodeOfCare", "ServiceRequest", "Task",
                         "CarePlan", "Goal", "CareTeam", "Organization", "Practitioner", "PractitionerRole",
                         "Location", "HealthcareService"}
        # read-only: writes never create reach, not even within the scope
        assert carer.post("/fhir/Goal", json={"resourceType": "Goal", "lifecycleStatus": "active",
                                              "description": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}}
                          ).status_code == 403
        assert carer.post("/api/me/sharing", json={"choice": "opt-out"}).status_code == 403
        # never another person's record, never the access log
        assert carer.get("/fhir/Patient/someone-else").status_code in (403, 404)
        assert carer.get("/api/me/access-log").status_code == 403
        # the person revokes: nothing, at once
        assert c["me"].post(f"/api/me/carers/{grant['consent']}/revoke").status_code == 200
        assert carer.get(f"/fhir/Appointment/{pid}-appt").status_code == 403
        assert carer.get(f"/fhir/Patient/{pid}").status_code == 403
    listed = c["me"].get("/api/me/carers").json()["carers"]
    assert next(x for x in listed if x["id"] == grant["consent"])["state"] == "Withdrawn"
    # grant, use and revoke are in the person's access log, in plain words, without account names
    log = c["me"].get("/api/me/access-log").json()
    text = str(log)
    assert "carer-grant" in text and "carer-revoke" in text
    uses = [e for e in log["entries"] if e["role"] == "carer"]
    assert any(e["outcome"] == "allowed" and e["action"] == "read" for e in uses)
    assert any(e["outcome"] == "refused" for e in uses)


def test_whole_record_grant_hides_private_and_sealed_entries_and_ends_on_its_date(world):
    c, pid, uid, server = world["c"], world["pid"], world["uid"], world["server"]
    grant = _grant(c, uid, scope="whole").json()
    private = c["me"].post("/api/me/sharing", json={"choice": "private", "entry": f"Condition/{pid}-c3"})
    assert private.status_code == 201
    with _carer_client(server, grant["account"]) as carer:
        assert carer.get(f"/fhir/Condition/{pid}-c1").status_code == 200
        assert carer.get(f"/fhir/Condition/{pid}-c3").status_code == 403
        ids = {e["resource"]["id"] for e in carer.get("/fhir/Condition", params={"patient": pid}).json()["entry"]}
        assert f"{pid}-c1" in ids and f"{pid}-c3" not in ids
        # expiry: the grant's end passes (the person's own record of it, changed by the integration account as a
        # clock would) - nothing afterwards
        consent = c["me"].get(f"/fhir/Consent/{grant['consent']}").json()
        past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        consent["provision"]["period"]["end"] = past
        assert c["me"].put(f"/fhir/Consent/{grant['consent']}", json=consent).status_code == 200
        assert carer.get(f"/fhir/Condition/{pid}-c1").status_code == 403
    # a professional cannot grant a carer access, nor change a grant
    forged = {**consent, "provision": {**consent["provision"], "period": {"end": "2099-01-01T00:00:00Z"}}}
    forged.pop("id")
    forged.pop("meta", None)
    assert c["gp"].post("/fhir/Consent", json=forged).status_code == 403
    assert c["gp"].put(f"/fhir/Consent/{grant['consent']}", json={**consent, "status": "inactive"}
                       ).status_code == 403


def test_grant_input_is_checked(world):
    c, uid = world["c"], world["uid"]
    assert _grant(c, uid, scope="everything").status_code == 422
    assert _grant(c, uid, scope="whole", days=400).status_code == 422
    assert _grant(c, uid, scope="whole", days=-1).status_code == 422
    assert _grant(c, uid, scope="whole", account=f"me-{uid}").status_code == 409     # someone else's account
    assert _grant(c, uid, scope="whole", account="A!").status_code == 422
