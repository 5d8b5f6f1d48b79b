"""Issue 11 part 3 — a person's choices are theirs.

An objection to sharing (with everyone, or with one organisation), a private-entry choice and a National Data
Opt-out can be withdrawn or changed only by the person themselves, or by a privacy officer who states a reason
(X-JoinedUp-Reason, at least 10 characters; listed in GET /api/privacy/choice-changes). A professional's DELETE or
PUT of such a Consent is refused (403, the diagnostics saying it is the person's choice) and the choice stays in
force. Everything is audited.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest

from tests.security.conftest import (
    CATEGORY,
    ISO_INSTANT,
    REASON_HEADER,
    SCOPE_TREATMENT,
    agent_name,
    audit_events,
    diagnostics,
    mentions,
    nhs_number,
    objection,
    observation,
    opt_out,
    organization,
    patient,
    private_entries,
    put,
    referral,
)

KINDS = ["objection-all", "objection-org", "private-entry", "opt-out"]
PROFESSIONALS = ["gp", "cons"]
REASON = "Person asked by phone; identity checked, ref PO-4471"


@dataclass
class World:
    g: str  # the GP practice (recorded gp_obs)
    h: str  # the hospital (recorded h_obs; has a referral)
    pid: str
    gp_obs: str
    h_obs: str


@pytest.fixture()
def world(api, people, uid) -> World:
    g, h, pid = f"ch-g-{uid}", f"ch-h-{uid}", f"ch-p-{uid}"
    put(api, organization(g))
    put(api, organization(h))
    put(api, patient(pid, source=g, gp_org=g, family=f"Chooser{uid}"))
    put(api, patient(f"ch-other-{uid}", source=g, gp_org=g, family=f"Other{uid}"))
    put(api, referral(f"ch-sr-{uid}", pid, h))
    put(api, observation(f"ch-gpobs-{uid}", pid, source=g))
    put(api, observation(f"ch-hobs-{uid}", pid, source=h))
    people.add("gp", "gp", org=g)
    people.add("cons", "consultant", org=h)
    people.add("person", "patient", patient=pid)
    people.add("someone", "patient", patient=f"ch-other-{uid}")
    people.add("po", "privacy-officer")
    w = World(g, h, pid, f"ch-gpobs-{uid}", f"ch-hobs-{uid}")
    with people.client("cons") as cons:  # before any choice: the hospital sees the practice's entry
        assert cons.get(f"/fhir/Observation/{w.gp_obs}").status_code == 200
    return w


def make_choice(api, w: World, kind: str, cid: str) -> dict:
    if kind == "objection-all":
        c = objection(cid, w.pid)
    elif kind == "objection-org":
        c = objection(cid, w.pid, org=w.h)
    elif kind == "private-entry":
        c = private_entries(cid, w.pid, [f"Observation/{w.gp_obs}"])
    else:
        c = opt_out(cid, w.pid)
    put(api, c)
    return c


def withdrawn(c: dict) -> dict:
    out = copy.deepcopy(c)
    out["status"] = "inactive"
    return out


def weakened(c: dict, kind: str) -> dict:
    """The same Consent with the deny taken out (the choice emptied without changing its status)."""
    out = copy.deepcopy(c)
    if kind == "opt-out":
        out.pop("policyRule", None)
        out["provision"] = {"type": "permit"}
    else:
        out["provision"] = {"type": "permit"}
    return out


def assert_in_force(api, people, w: World, kind: str, c: dict) -> None:
    stored = api.get(f"/fhir/Consent/{c['id']}")
    assert stored.status_code == 200, stored.text[:500]
    s = stored.json()
    assert s["status"] == "active" and s["provision"] == c["provision"], s
    assert s.get("policyRule") == c.get("policyRule")
    if kind == "opt-out":
        return
    with people.client("cons") as cons:
        r = cons.get(f"/fhir/Observation/{w.gp_obs}")
        assert r.status_code == 403, r.text[:500]
    if kind == "objection-all":
        with people.client("gp") as gp:
            assert gp.get(f"/fhir/Observation/{w.h_obs}").status_code == 403


def assert_lifted(api, people, w: World, kind: str, c: dict) -> None:
    stored = api.get(f"/fhir/Consent/{c['id']}")
    if stored.status_code == 200:
        assert stored.json()["status"] != "active" or stored.json()["provision"] != c["provision"]
    else:
        assert stored.status_code == 410, stored.text[:500]
    if kind == "opt-out":
        return
    with people.client("cons") as cons:
        r = cons.get(f"/fhir/Observation/{w.gp_obs}")
        assert r.status_code == 200, r.text[:500]


def assert_persons_choice_refusal(r) -> None:
    assert r.status_code == 403, r.text[:500]
    text = diagnostics(r).lower()
    assert "choice" in text, text


# -- professionals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", PROFESSIONALS)
@pytest.mark.parametrize("kind", KINDS)
def test_professional_cannot_withdraw_a_choice(api, people, world, uid, kind, who):
    c = make_choice(api, world, kind, f"ch-c-{uid}")
    with people.client(who) as pro:
        assert_persons_choice_refusal(pro.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c)))
    assert_in_force(api, people, world, kind, c)


@pytest.mark.parametrize("who", PROFESSIONALS)
@pytest.mark.parametrize("kind", KINDS)
def test_professional_cannot_empty_a_choice(api, people, world, uid, kind, who):
    c = make_choice(api, world, kind, f"ch-c-{uid}")
    with people.client(who) as pro:
        assert_persons_choice_refusal(pro.put(f"/fhir/Consent/{c['id']}", json=weakened(c, kind)))
    assert_in_force(api, people, world, kind, c)


@pytest.mark.parametrize("who", PROFESSIONALS)
@pytest.mark.parametrize("kind", KINDS)
def test_professional_cannot_delete_a_choice(api, people, world, uid, kind, who):
    c = make_choice(api, world, kind, f"ch-c-{uid}")
    with people.client(who) as pro:
        assert_persons_choice_refusal(pro.delete(f"/fhir/Consent/{c['id']}"))
    assert_in_force(api, people, world, kind, c)


def test_professional_cannot_narrow_an_objection_to_another_organisation(api, people, world, uid):
    """Changing whom the person objects to is changing their choice too."""
    c = make_choice(api, world, "objection-org", f"ch-c-{uid}")
    changed = copy.deepcopy(c)
    changed["provision"]["actor"][0]["reference"]["reference"] = f"Organization/ch-elsewhere-{uid}"
    with people.client("cons") as cons:
        assert_persons_choice_refusal(cons.put(f"/fhir/Consent/{c['id']}", json=changed))
    assert_in_force(api, people, world, "objection-org", c)


def test_professional_cannot_add_to_a_private_entry_choice(api, people, world, uid):
    """Changing a choice is the person's, even in the restrictive direction."""
    c = make_choice(api, world, "private-entry", f"ch-c-{uid}")
    more = copy.deepcopy(c)
    more["provision"]["provision"][0]["data"].append(
        {"meaning": "instance", "reference": {"reference": f"Observation/{world.h_obs}"}})
    with people.client("gp") as gp:
        assert_persons_choice_refusal(gp.put(f"/fhir/Consent/{c['id']}", json=more))
    assert_in_force(api, people, world, "private-entry", c)


def test_professional_cannot_move_a_choice_to_another_person(api, people, world, uid):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    moved = copy.deepcopy(c)
    moved["patient"] = {"reference": f"Patient/ch-other-{uid}"}  # the GP's patient too
    with people.client("gp") as gp:
        assert_persons_choice_refusal(gp.put(f"/fhir/Consent/{c['id']}", json=moved))
    assert_in_force(api, people, world, "objection-all", c)


@pytest.mark.parametrize("status", ["entered-in-error", "rejected", "draft", "proposed"])
def test_professional_cannot_withdraw_by_any_other_status(api, people, world, uid, status):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    changed = copy.deepcopy(c)
    changed["status"] = status
    with people.client("gp") as gp:
        assert_persons_choice_refusal(gp.put(f"/fhir/Consent/{c['id']}", json=changed))
    assert_in_force(api, people, world, "objection-all", c)


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
@pytest.mark.parametrize("bundle_type", ["transaction", "batch"])
def test_professional_cannot_withdraw_a_choice_in_a_bundle(api, people, world, uid, method, bundle_type):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    entry: dict = {"request": {"method": method, "url": f"Consent/{c['id']}"}}
    if method == "PUT":
        entry["resource"] = withdrawn(c)
    with people.client("gp") as gp:
        r = gp.post("/fhir", json={"resourceType": "Bundle", "type": bundle_type, "entry": [entry]})
        if bundle_type == "transaction":
            assert_persons_choice_refusal(r)
        else:
            assert r.status_code == 200, r.text[:500]
            assert r.json()["entry"][0]["response"]["status"].startswith("403"), r.text[:500]
    assert_in_force(api, people, world, "objection-all", c)


@pytest.mark.parametrize("how", ["remove-nhs-number", "delete-patient"])
def test_unlinking_the_record_does_not_withdraw_the_objection(api, people, world, uid, how):
    """The person objected on their GP record; the objection covers their hospital record (same vouched NHS number).
    The practice editing the NHS number off its record, or deleting the record, must not lift the objection
    elsewhere: that would be a professional withdrawing the person's choice by another route."""
    nhs = nhs_number()
    gp_rec, h_rec, comm = f"ch-lg-{uid}", f"ch-lh-{uid}", f"ch-comm-{uid}"
    put(api, organization(comm))
    put(api, patient(gp_rec, source=world.g, gp_org=world.g, nhs=nhs, family=f"Linked{uid}"))
    put(api, patient(h_rec, source=world.h, nhs=nhs, family=f"Linked{uid}"))
    put(api, observation(f"ch-lobs-{uid}", h_rec, source=comm))  # recorded by a community service
    put(api, objection(f"ch-lobj-{uid}", gp_rec))
    with people.client("cons") as cons:  # the hospital holds h_rec: the objection hides the community's entry
        assert cons.get(f"/fhir/Patient/{h_rec}").status_code == 200
        assert cons.get(f"/fhir/Observation/ch-lobs-{uid}").status_code == 403
    with people.client("gp") as gp:
        if how == "remove-nhs-number":
            body = gp.get(f"/fhir/Patient/{gp_rec}").json()
            body.pop("identifier")
            gp.put(f"/fhir/Patient/{gp_rec}", json=body)
        else:
            gp.delete(f"/fhir/Patient/{gp_rec}")
    with people.client("cons") as cons:
        r = cons.get(f"/fhir/Observation/ch-lobs-{uid}")
        assert r.status_code == 403, r.text[:500]
        b = cons.get("/fhir/Observation", params={"patient": h_rec}).json()
        assert f"ch-lobs-{uid}" not in str(b)


def test_professional_stating_a_reason_is_still_refused(api, people, world, uid):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    with people.client("gp") as gp:
        assert_persons_choice_refusal(gp.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c),
                                             headers={REASON_HEADER: REASON}))
        assert_persons_choice_refusal(gp.delete(f"/fhir/Consent/{c['id']}", headers={REASON_HEADER: REASON}))
    assert_in_force(api, people, world, "objection-all", c)


def test_a_choice_the_person_made_themselves_is_theirs_too(api, people, world):
    with people.client("person") as person:
        r = person.post("/fhir/Consent", json={k: v for k, v in objection("x", world.pid).items() if k != "id"})
        assert r.status_code == 201, r.text[:500]
        c = r.json()
    with people.client("gp") as gp:
        assert_persons_choice_refusal(gp.delete(f"/fhir/Consent/{c['id']}"))
        assert_persons_choice_refusal(gp.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c)))
    assert_in_force(api, people, world, "objection-all", c)


def test_professionals_may_still_edit_consents_that_are_not_choices(api, people, world, uid):
    """Only a person's choices are protected: an ordinary treatment consent is the care team's to update."""
    cid = f"ch-treat-{uid}"
    put(api, {"resourceType": "Consent", "id": cid, "status": "active", "scope": SCOPE_TREATMENT,
              "category": CATEGORY, "patient": {"reference": f"Patient/{world.pid}"},
              "provision": {"type": "permit"}})
    with people.client("gp") as gp:
        c = gp.get(f"/fhir/Consent/{cid}").json()
        c["status"] = "inactive"
        r = gp.put(f"/fhir/Consent/{cid}", json=c)
        assert r.status_code == 200, r.text[:500]


# -- the person ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_the_person_may_withdraw_their_choice(api, people, world, uid, kind):
    c = make_choice(api, world, kind, f"ch-c-{uid}")
    assert_in_force(api, people, world, kind, c)
    with people.client("person") as person:
        r = person.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c))
        assert r.status_code == 200, r.text[:500]
    assert_lifted(api, people, world, kind, c)


def test_another_patient_cannot_withdraw_someones_choice(api, people, world, uid):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    with people.client("someone") as someone:
        r = someone.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c))
        assert r.status_code == 403, r.text[:500]
        assert r.json()["resourceType"] == "OperationOutcome"
        assert someone.delete(f"/fhir/Consent/{c['id']}").status_code == 403
    assert_in_force(api, people, world, "objection-all", c)


# -- the privacy officer ---------------------------------------------------------------------------------------
def _changes(body) -> list[dict]:
    """The entries of GET /api/privacy/choice-changes (a list, or the lists inside the JSON object)."""
    if isinstance(body, list):
        return [e for e in body if isinstance(e, dict)]
    out = []
    for v in body.values():
        if isinstance(v, list):
            out.extend(e for e in v if isinstance(e, dict))
    return out


def assert_change_listed(people, cid: str, reason: str) -> None:
    with people.client("po") as po:
        r = po.get("/api/privacy/choice-changes")
        assert r.status_code == 200, r.text[:500]
        mine = [e for e in _changes(r.json()) if mentions(e, cid)]
    assert mine, f"Consent/{cid} not in the choice changes: {r.text[:1000]}"
    e = mine[0]
    assert mentions(e, reason), e
    assert mentions(e, people.names["po"]), e
    assert ISO_INSTANT.search(str(e)), e


@pytest.mark.parametrize("kind", KINDS)
def test_privacy_officer_withdraws_a_choice_stating_a_reason(api, people, world, uid, kind):
    c = make_choice(api, world, kind, f"ch-c-{uid}")
    with people.client("po") as po:
        r = po.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c), headers={REASON_HEADER: REASON})
        assert r.status_code == 200, r.text[:500]
    assert_lifted(api, people, world, kind, c)
    assert_change_listed(people, c["id"], REASON)


def test_privacy_officer_deletes_a_choice_stating_a_reason(api, people, world, uid):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    reason = "Recorded against the wrong person; confirmed with the practice"
    with people.client("po") as po:
        r = po.delete(f"/fhir/Consent/{c['id']}", headers={REASON_HEADER: reason})
        assert r.status_code in (200, 204), r.text[:500]
    assert_lifted(api, people, world, "objection-all", c)
    assert_change_listed(people, c["id"], reason)


@pytest.mark.parametrize("reason", [None, "", "n/a", "because"], ids=["none", "empty", "n-a", "too-short"])
def test_privacy_officer_must_state_a_reason(api, people, world, uid, reason):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    headers = {} if reason is None else {REASON_HEADER: reason}
    with people.client("po") as po:
        for r in (po.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c), headers=headers),
                  po.delete(f"/fhir/Consent/{c['id']}", headers=headers)):
            assert r.status_code in (400, 403), r.text[:500]
            assert "reason" in diagnostics(r).lower()
    assert_in_force(api, people, world, "objection-all", c)


def test_a_reason_of_ten_characters_is_enough(api, people, world, uid):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    with people.client("po") as po:
        r = po.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c), headers={REASON_HEADER: "Nine char"})
        assert r.status_code in (400, 403), r.text[:500]
        r = po.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c), headers={REASON_HEADER: "Ten chars!"})
        assert r.status_code == 200, r.text[:500]
    assert_lifted(api, people, world, "objection-all", c)
    assert_change_listed(people, c["id"], "Ten chars!")


@pytest.mark.parametrize("who", ["gp", "cons", "person"])
def test_only_the_privacy_officer_sees_choice_changes(people, world, who):
    with people.client(who) as c:
        assert c.get("/api/privacy/choice-changes").status_code == 403


# -- the audit -------------------------------------------------------------------------------------------------
def _about(ev: dict, cid: str, outcome: str, who: str) -> bool:
    return ev.get("outcome") == outcome and agent_name(ev) == who and mentions(ev, f"Consent/{cid}")


def test_attempts_and_changes_are_audited(server, api, people, world, uid):
    c = make_choice(api, world, "objection-all", f"ch-c-{uid}")
    with people.client("gp") as gp:
        assert gp.delete(f"/fhir/Consent/{c['id']}").status_code == 403
    with people.client("po") as po:
        assert po.put(f"/fhir/Consent/{c['id']}", json=withdrawn(c),
                      headers={REASON_HEADER: REASON}).status_code == 200
    events = audit_events(server, api, world.pid)
    assert any(_about(ev, c["id"], "8", people.names["gp"]) for ev in events), "refused attempt not audited"
    assert any(_about(ev, c["id"], "0", people.names["po"]) for ev in events), "privacy officer's change not audited"
    c2 = make_choice(api, world, "objection-org", f"ch-c2-{uid}")
    with people.client("person") as person:
        assert person.put(f"/fhir/Consent/{c2['id']}", json=withdrawn(c2)).status_code == 200
    events = audit_events(server, api, world.pid)
    assert any(_about(ev, c2["id"], "0", people.names["person"]) for ev in events), "the person's change not audited"
