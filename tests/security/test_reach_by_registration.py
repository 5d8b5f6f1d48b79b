"""Issue 11 part 1 — no reach by registration.

A professional who may amend clinical records must not reach another organisation's record of a person by
registering that person's NHS number (POST Patient), by adding it to one of their own patients (PUT), or by a
Patient.link. Records of one person held by different organisations are linked only by a confirmed link: written
by the integration account (both records carry the number), or a link request approved by a privacy officer.
Anyone else's link attempt raises a pending link request and grants nothing until approved.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.security.conftest import (
    ISO_INSTANT,
    NHS,
    agent_name,
    audit_events,
    entry_ids,
    mentions,
    nhs_number,
    observation,
    organization,
    patient,
    put,
    subjects_in,
    subtype,
)

REQUEST_KEYS = {"id", "patient", "other_patient", "requested_by", "requested_at", "reason", "status"}


@dataclass
class World:
    a_org: str  # the GP's practice
    b_org: str  # another organisation holding its own record of the person
    nhs: str  # the person's NHS number, on the other organisation's record
    victim: str  # the other organisation's Patient record
    victim_obs: str  # an entry in it
    own: str  # a patient registered at the GP's practice (no NHS number)
    gp: str  # user names
    po: str


@pytest.fixture()
def world(server, api, people, uid) -> World:
    a_org, b_org = f"reg-a-{uid}", f"reg-b-{uid}"
    nhs = nhs_number()
    victim, own = f"reg-victim-{uid}", f"reg-own-{uid}"
    put(api, organization(a_org, f"Practice A {uid}"))
    put(api, organization(b_org, f"Hospital B {uid}"))
    put(api, patient(victim, source=b_org, nhs=nhs, family=f"Victim{uid}"))
    put(api, observation(f"reg-vobs-{uid}", victim, source=b_org))
    put(api, patient(own, source=a_org, gp_org=a_org, family=f"Own{uid}"))
    gp = people.add("gp", "gp", org=a_org)
    po = people.add("po", "privacy-officer")
    w = World(a_org, b_org, nhs, victim, f"reg-vobs-{uid}", own, gp, po)
    with people.client("gp") as c:  # the starting point: the GP has no relationship with the other record
        assert_no_reach(c, w)
    return w


def assert_no_reach(gp, w: World) -> None:
    """The GP reaches nothing of the other organisation's record, on any of the usual paths."""
    r = gp.get(f"/fhir/Patient/{w.victim}/$everything")
    assert r.status_code == 403, r.text[:500]
    assert r.json()["resourceType"] == "OperationOutcome"
    r = gp.get(f"/fhir/Observation/{w.victim_obs}")
    assert r.status_code == 403, r.text[:500]
    assert r.json()["resourceType"] == "OperationOutcome"
    r = gp.get(f"/fhir/Patient/{w.victim}")
    assert r.status_code == 403, r.text[:500]
    r = gp.get("/fhir/Observation", params={"patient": w.victim})
    assert r.status_code in (200, 403), r.text[:500]
    if r.status_code == 200:
        b = r.json()
        assert not b.get("entry") and b.get("total", 0) == 0, r.text[:500]
    # nor does a search by the NHS number turn up the other organisation's record
    r = gp.get("/fhir/Patient", params={"identifier": f"{NHS}|{w.nhs}"})
    assert r.status_code in (200, 403), r.text[:500]
    if r.status_code == 200:
        assert w.victim not in entry_ids(r.json())
        assert f"Patient/{w.victim}" not in subjects_in(r.json())


def assert_reach(gp, w: World) -> None:
    """The GP reaches the other organisation's record (a linked record of a person they care for)."""
    r = gp.get(f"/fhir/Observation/{w.victim_obs}")
    assert r.status_code == 200, r.text[:500]
    r = gp.get(f"/fhir/Patient/{w.victim}/$everything")
    assert r.status_code == 200, r.text[:500]
    assert w.victim_obs in entry_ids(r.json(), "Observation")
    r = gp.get("/fhir/Observation", params={"patient": w.victim})
    assert r.status_code == 200 and w.victim_obs in entry_ids(r.json()), r.text[:500]


def link_requests(po, a: str, b: str, status: str = "pending") -> list[dict]:
    """The privacy officer's link requests (of a status) between Patient/a and Patient/b, in either order."""
    r = po.get("/api/privacy/link-requests", params={"status": status})
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert isinstance(body.get("requests"), list), r.text[:500]
    pair = {f"Patient/{a}", f"Patient/{b}"}
    return [q for q in body["requests"] if {q.get("patient"), q.get("other_patient")} == pair]


def assert_pending_request(people, w: World, own_id: str) -> dict:
    with people.client("po") as po:
        found = link_requests(po, own_id, w.victim)
    assert len(found) >= 1, f"no pending link request between Patient/{own_id} and Patient/{w.victim}"
    req = found[0]
    assert REQUEST_KEYS <= set(req), req
    assert req["status"] == "pending"
    assert w.gp in str(req["requested_by"])
    assert ISO_INSTANT.search(str(req["requested_at"])), req
    return req


def register_with_number(gp, w: World, nhs: str | None = None) -> str:
    """The GP registers 'a new patient' carrying the NHS number: it succeeds, as their own new record."""
    body = patient("ignored", gp_org=w.a_org, nhs=nhs or w.nhs, family="Registered")
    del body["id"]
    r = gp.post("/fhir/Patient", json=body)
    assert r.status_code == 201, r.text[:500]
    new_id = r.json()["id"]
    assert new_id != w.victim
    assert gp.get(f"/fhir/Patient/{new_id}").status_code == 200  # their own record, readable to them
    return new_id


# -- the attacks ---------------------------------------------------------------------------------------------
def test_registering_another_organisations_nhs_number_reaches_nothing(people, world):
    with people.client("gp") as gp:
        new_id = register_with_number(gp, world)
        assert_no_reach(gp, world)
    assert_pending_request(people, world, new_id)


def test_adding_the_nhs_number_to_an_own_patient_reaches_nothing(people, world):
    with people.client("gp") as gp:
        mine = gp.get(f"/fhir/Patient/{world.own}").json()
        mine["identifier"] = [{"system": NHS, "value": world.nhs}]
        r = gp.put(f"/fhir/Patient/{world.own}", json=mine)
        assert r.status_code == 200, r.text[:500]
        assert_no_reach(gp, world)
    assert_pending_request(people, world, world.own)


def test_replacing_an_own_patients_vouched_nhs_number_reaches_nothing(api, people, world, uid):
    # the practice's patient came with its own NHS number from the integration account
    own = f"reg-own2-{uid}"
    put(api, patient(own, source=world.a_org, gp_org=world.a_org, nhs=nhs_number(), family=f"Own2{uid}"))
    with people.client("gp") as gp:
        mine = gp.get(f"/fhir/Patient/{own}").json()
        mine["identifier"] = [{"system": NHS, "value": world.nhs}]
        r = gp.put(f"/fhir/Patient/{own}", json=mine)
        assert r.status_code == 200, r.text[:500]
        assert_no_reach(gp, world)
    assert_pending_request(people, world, own)


def test_patient_link_to_another_organisations_record_reaches_nothing(people, world):
    with people.client("gp") as gp:
        mine = gp.get(f"/fhir/Patient/{world.own}").json()
        mine["link"] = [{"other": {"reference": f"Patient/{world.victim}"}, "type": "seealso"}]
        r = gp.put(f"/fhir/Patient/{world.own}", json=mine)
        assert r.status_code == 200, r.text[:500]
        assert_no_reach(gp, world)
    assert_pending_request(people, world, world.own)


def test_registering_first_reaches_nothing_when_the_other_record_arrives_later(api, people, world, uid):
    """The number is registered by the GP before the other organisation's record is loaded: still no link."""
    nhs = nhs_number()
    with people.client("gp") as gp:
        register_with_number(gp, world, nhs)
    late, late_obs = f"reg-late-{uid}", f"reg-late-obs-{uid}"
    put(api, patient(late, source=world.b_org, nhs=nhs, family=f"Late{uid}"))
    put(api, observation(late_obs, late, source=world.b_org))
    w = World(world.a_org, world.b_org, nhs, late, late_obs, world.own, world.gp, world.po)
    with people.client("gp") as gp:
        assert_no_reach(gp, w)


# -- the privacy officer's decision ----------------------------------------------------------------------------
def test_only_a_privacy_officer_sees_and_decides_link_requests(people, world, uid):
    with people.client("gp") as gp:
        new_id = register_with_number(gp, world)
    req = assert_pending_request(people, world, new_id)
    people.add("cons", "consultant", org=world.b_org)
    people.add("sw", "social-worker", org=f"reg-la-{uid}")
    people.add("person", "patient", patient=world.victim)
    for key in ("gp", "cons", "sw", "person"):
        with people.client(key) as c:
            r = c.get("/api/privacy/link-requests", params={"status": "pending"})
            assert r.status_code == 403, (key, r.text[:500])
            r = c.post(f"/api/privacy/link-requests/{req['id']}",
                       json={"outcome": "approved", "note": "approving my own request"})
            assert r.status_code == 403, (key, r.text[:500])
    with people.client("gp") as gp:
        assert_no_reach(gp, world)
    with people.client("po") as po:  # still pending
        assert [q for q in link_requests(po, new_id, world.victim) if q["id"] == req["id"]]


def test_approved_link_request_reaches_the_linked_record(people, world):
    with people.client("gp") as gp:
        new_id = register_with_number(gp, world)
    req = assert_pending_request(people, world, new_id)
    with people.client("po") as po:
        r = po.post(f"/api/privacy/link-requests/{req['id']}",
                    json={"outcome": "approved", "note": "PDS trace confirms the same person"})
        assert r.status_code == 200, r.text[:500]
        assert not [q for q in link_requests(po, new_id, world.victim) if q["id"] == req["id"]]
    with people.client("gp") as gp:
        assert_reach(gp, world)


def test_rejected_link_request_grants_nothing_even_when_written_again(people, world):
    with people.client("gp") as gp:
        new_id = register_with_number(gp, world)
    req = assert_pending_request(people, world, new_id)
    with people.client("po") as po:
        r = po.post(f"/api/privacy/link-requests/{req['id']}",
                    json={"outcome": "rejected", "note": "Not the same person: different date of birth"})
        assert r.status_code == 200, r.text[:500]
        assert not [q for q in link_requests(po, new_id, world.victim) if q["id"] == req["id"]]
    with people.client("gp") as gp:
        assert_no_reach(gp, world)
        # writing the same number again (an update of the record, a fresh registration) does not grant access
        mine = gp.get(f"/fhir/Patient/{new_id}").json()
        mine["name"] = [{"family": "Registered", "given": ["Again"]}]
        mine["identifier"] = [{"system": NHS, "value": world.nhs}]
        r = gp.put(f"/fhir/Patient/{new_id}", json=mine)
        assert r.status_code == 200, r.text[:500]
        assert_no_reach(gp, world)
        register_with_number(gp, world)
        assert_no_reach(gp, world)
        mine = gp.get(f"/fhir/Patient/{world.own}").json()
        mine["identifier"] = [{"system": NHS, "value": world.nhs}]
        assert gp.put(f"/fhir/Patient/{world.own}", json=mine).status_code == 200
        assert_no_reach(gp, world)


def test_professional_link_request_is_pending_and_grants_nothing(people, world):
    with people.client("gp") as gp:
        r = gp.post("/api/privacy/link-requests",
                    json={"patient": f"Patient/{world.own}", "other_patient": f"Patient/{world.victim}",
                          "reason": "Hospital letter shows the same person"})
        assert r.status_code == 202, r.text[:500]
        assert r.json()["status"] == "pending"
        assert_no_reach(gp, world)
    assert_pending_request(people, world, world.own)


def test_integration_account_link_request_links_at_once(api, people, world):
    r = api.post("/api/privacy/link-requests",
                 json={"patient": f"Patient/{world.own}", "other_patient": f"Patient/{world.victim}",
                       "reason": "PDS trace matched both records"})
    assert r.status_code == 201, r.text[:500]
    assert r.json()["status"] == "approved"
    with people.client("gp") as gp:
        assert_reach(gp, world)


# -- what still works --------------------------------------------------------------------------------------------
def test_records_written_by_the_integration_account_with_one_nhs_number_are_linked(api, people, world, uid):
    own = f"reg-sys-{uid}"
    put(api, patient(own, source=world.a_org, gp_org=world.a_org, nhs=world.nhs, family=f"Victim{uid}"))
    with people.client("gp") as gp:
        assert_reach(gp, world)


def test_a_patient_link_written_by_the_integration_account_is_a_confirmed_link(api, people, world):
    put(api, patient(world.own, source=world.a_org, gp_org=world.a_org, family="Own", link_to=world.victim))
    with people.client("gp") as gp:
        assert_reach(gp, world)


def test_the_practice_editing_a_linked_patient_keeps_the_link(api, people, world, uid):
    """A confirmed link survives the practice correcting its own record (the number itself unchanged)."""
    own = f"reg-sys2-{uid}"
    put(api, patient(own, source=world.a_org, gp_org=world.a_org, nhs=world.nhs, family=f"Victim{uid}"))
    with people.client("gp") as gp:
        assert_reach(gp, world)
        mine = gp.get(f"/fhir/Patient/{own}").json()
        mine["telecom"] = [{"system": "phone", "value": "01632 960001"}]
        assert gp.put(f"/fhir/Patient/{own}", json=mine).status_code == 200
        assert_reach(gp, world)


# -- the audit ---------------------------------------------------------------------------------------------------
def _about_link(ev: dict, a: str, b: str) -> bool:
    return "link" in subtype(ev).lower() or mentions(ev, a, b)


@pytest.mark.parametrize("outcome", ["approved", "rejected"])
def test_link_request_and_decision_are_audited(server, api, people, world, outcome):
    with people.client("gp") as gp:
        new_id = register_with_number(gp, world)
    req = assert_pending_request(people, world, new_id)
    before = [ev for ev in audit_events(server, api, world.victim) if _about_link(ev, new_id, world.victim)]
    assert before, "no AuditEvent about the link request"
    assert any(agent_name(ev) == world.gp for ev in before), [agent_name(ev) for ev in before]
    with people.client("po") as po:
        r = po.post(f"/api/privacy/link-requests/{req['id']}", json={"outcome": outcome, "note": "checked with PDS"})
        assert r.status_code == 200, r.text[:500]
    seen = {ev["id"] for ev in before}
    after = [ev for ev in audit_events(server, api, world.victim)
             if _about_link(ev, new_id, world.victim) and ev["id"] not in seen]
    assert any(agent_name(ev) == world.po for ev in after), "no AuditEvent for the privacy officer's decision"


# -- the same attacks by other paths -------------------------------------------------------------------------------
def test_registering_in_a_transaction_reaches_nothing(api, people, world):
    body = patient("ignored", gp_org=world.a_org, nhs=world.nhs, family="Registered")
    del body["id"]
    mine = patient(world.own, source=world.a_org, gp_org=world.a_org, nhs=world.nhs, family="Own")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7d8e3c1a-5f7e-4b1e-9a38-2b7f0d6b1c11", "resource": body,
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": mine, "request": {"method": "PUT", "url": f"Patient/{world.own}"}}]}
    with people.client("gp") as gp:
        r = gp.post("/fhir", json=bundle)
        assert r.status_code == 200, r.text[:500]
        assert_no_reach(gp, world)


def test_conditional_create_does_not_return_the_other_organisations_record(api, people, world):
    """If-None-Exist on the NHS number must not match (and so hand over) a record the GP may not see."""
    before = api.get(f"/fhir/Patient/{world.victim}").json()["meta"]["versionId"]
    body = patient("ignored", gp_org=world.a_org, nhs=world.nhs, family="Registered")
    del body["id"]
    with people.client("gp") as gp:
        r = gp.post("/fhir/Patient", json=body, headers={"If-None-Exist": f"identifier={NHS}|{world.nhs}"})
        assert r.status_code == 201, r.text[:500]
        assert r.json()["id"] != world.victim and "Victim" not in r.text
        assert_no_reach(gp, world)
    assert api.get(f"/fhir/Patient/{world.victim}").json()["meta"]["versionId"] == before


def test_conditional_update_does_not_overwrite_the_other_organisations_record(api, people, world):
    before = api.get(f"/fhir/Patient/{world.victim}").json()
    body = patient("ignored", gp_org=world.a_org, nhs=world.nhs, family="Overwritten")
    del body["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "PUT", "url": f"Patient?identifier={NHS}|{world.nhs}"}}]}
    with people.client("gp") as gp:
        r = gp.post("/fhir", json=bundle)
        assert r.status_code in (200, 403, 412), r.text[:500]
        assert world.victim not in r.text
        assert_no_reach(gp, world)
    after = api.get(f"/fhir/Patient/{world.victim}").json()
    assert after["meta"]["versionId"] == before["meta"]["versionId"] and after["name"] == before["name"]


@pytest.mark.parametrize("link_type", ["refer", "replaces", "replaced-by"])
def test_other_kinds_of_patient_link_reach_nothing(people, world, link_type):
    with people.client("gp") as gp:
        mine = gp.get(f"/fhir/Patient/{world.own}").json()
        mine["link"] = [{"other": {"reference": f"Patient/{world.victim}"}, "type": link_type}]
        r = gp.put(f"/fhir/Patient/{world.own}", json=mine)
        assert r.status_code in (200, 400, 403, 422), r.text[:500]
        assert_no_reach(gp, world)


def test_registering_the_person_on_the_other_organisations_record_is_refused(api, people, world):
    """Writing one's own practice onto the other organisation's Patient record is no way in either."""
    before = api.get(f"/fhir/Patient/{world.victim}").json()
    body = {k: v for k, v in before.items() if k != "meta"}
    body["generalPractitioner"] = [{"reference": f"Organization/{world.a_org}"}]
    body["managingOrganization"] = {"reference": f"Organization/{world.a_org}"}
    with people.client("gp") as gp:
        r = gp.put(f"/fhir/Patient/{world.victim}", json=body)
        assert r.status_code == 403, r.text[:500]
        assert_no_reach(gp, world)
    assert api.get(f"/fhir/Patient/{world.victim}").json()["meta"]["versionId"] == before["meta"]["versionId"]


@pytest.mark.parametrize("rtype", ["CareTeam", "ServiceRequest", "EpisodeOfCare"])
def test_a_self_made_relationship_to_the_other_record_is_refused(people, world, rtype):
    subj = {"reference": f"Patient/{world.victim}"}
    me = {"reference": f"Organization/{world.a_org}"}
    body = {
        "CareTeam": {"resourceType": "CareTeam", "status": "active", "subject": subj, "managingOrganization": [me]},
        "ServiceRequest": {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": subj,
                           "performer": [me], "requester": me},
        "EpisodeOfCare": {"resourceType": "EpisodeOfCare", "status": "active", "patient": subj,
                          "managingOrganization": me},
    }[rtype]
    with people.client("gp") as gp:
        r = gp.post(f"/fhir/{rtype}", json=body)
        assert r.status_code == 403, r.text[:500]
        assert_no_reach(gp, world)


# -- registering at an id other organisations' entries already name --------------------------------------------------
def _assert_sees_none_of(gp, pid: str, obs: str) -> None:
    r = gp.get(f"/fhir/Observation/{obs}")
    assert r.status_code in (403, 404), r.text[:500]
    r = gp.get("/fhir/Observation", params={"patient": pid})
    assert r.status_code in (200, 403), r.text[:500]
    if r.status_code == 200:
        assert obs not in entry_ids(r.json()), r.text[:500]
    r = gp.get(f"/fhir/Patient/{pid}/$everything")
    if r.status_code == 200:
        assert obs not in entry_ids(r.json()), r.text[:500]


def test_registering_at_a_deleted_patient_id_reaches_nothing(api, people, world, uid):
    """The other organisation's Patient record was deleted but its entries remain: re-creating Patient/<that id>
    (a registration at the GP's practice) must not hand the GP those entries."""
    pid, obs = f"reg-gone-{uid}", f"reg-gone-obs-{uid}"
    put(api, patient(pid, source=world.b_org, family=f"Gone{uid}"))
    put(api, observation(obs, pid, source=world.b_org))
    assert api.delete(f"/fhir/Patient/{pid}").status_code in (200, 204)
    with people.client("gp") as gp:
        gp.put(f"/fhir/Patient/{pid}", json=patient(pid, gp_org=world.a_org, family="Registered"))
        _assert_sees_none_of(gp, pid, obs)


def test_registering_at_an_id_others_entries_already_name_reaches_nothing(api, people, world, uid):
    """Entries arrived before their Patient record (or name a record not held here): registering a Patient at that
    id must not hand the GP another organisation's entries."""
    pid, obs = f"reg-early-{uid}", f"reg-early-obs-{uid}"
    put(api, observation(obs, pid, source=world.b_org))
    with people.client("gp") as gp:
        gp.put(f"/fhir/Patient/{pid}", json=patient(pid, gp_org=world.a_org, family="Registered"))
        _assert_sees_none_of(gp, pid, obs)
