"""Claims, explanations of benefit, imaging studies and coverage are a person's record like any other entry.

Until these types were filed under their person (FHIR R4 patient compartment: Claim.patient,
ExplanationOfBenefit.patient, ImagingStudy.subject, Coverage.beneficiary), they were stored with no person, and an
entry with no person was open to every professional whose role may read clinical entries. The attacks: read, search,
search by patient, `_include`, `$everything` and history of another person's claims, as professionals with and
without a relationship, and as another patient.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import diagnostics, entry_ids, organization, patient, put


def _claim(cid: str, pid: str) -> dict:
    # shaped like the FHIR R4 claim-example (https://hl7.org/fhir/R4/claim-example.json.html)
    return {"resourceType": "Claim", "id": cid, "status": "active",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "oral"}]},
            "use": "claim", "patient": {"reference": f"Patient/{pid}"}, "created": "2014-08-16",
            "provider": {"reference": "Organization/practice-1"}, "priority": {"coding": [{"code": "normal"}]},
            "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "private"}}]}


def _eob(eid: str, pid: str, claim: str) -> dict:
    return {"resourceType": "ExplanationOfBenefit", "id": eid, "status": "active",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "oral"}]},
            "use": "claim", "patient": {"reference": f"Patient/{pid}"}, "created": "2014-08-16",
            "insurer": {"display": "private"}, "provider": {"reference": "Organization/practice-1"},
            "claim": {"reference": f"Claim/{claim}"}, "outcome": "complete",
            "insurance": [{"focal": True, "coverage": {"display": "private"}}]}


def _imaging(iid: str, pid: str) -> dict:
    return {"resourceType": "ImagingStudy", "id": iid, "status": "available", "subject": {"reference": f"Patient/{pid}"},
            "started": "2011-01-01T11:01:20+03:00"}


def _coverage(cov: str, pid: str, holder: str) -> dict:
    return {"resourceType": "Coverage", "id": cov, "status": "active", "policyHolder": {"reference": f"Patient/{holder}"},
            "subscriber": {"reference": f"Patient/{holder}"}, "beneficiary": {"reference": f"Patient/{pid}"},
            "payor": [{"reference": f"Patient/{holder}"}]}


@pytest.fixture()
def world(server, api, uid, people):
    """Person `mine` registered at the gp's practice; person `theirs` registered elsewhere (no relationship); each
    with a claim, an EOB, an imaging study and a coverage. `theirs` is the policy holder of `mine`'s coverage."""
    other_org = f"org-x-{uid}"
    put(api, organization(other_org))
    mine, theirs = f"cm-mine-{uid}", f"cm-theirs-{uid}"
    put(api, patient(mine, gp_org="practice-1"))
    put(api, patient(theirs, gp_org=other_org))
    ids = {"mine": mine, "theirs": theirs, "other_org": other_org}
    for who, pid in (("mine", mine), ("theirs", theirs)):
        put(api, _claim(f"cl-{who}-{uid}", pid))
        put(api, _eob(f"eob-{who}-{uid}", pid, f"cl-{who}-{uid}"))
        put(api, _imaging(f"img-{who}-{uid}", pid))
        put(api, _coverage(f"cov-{who}-{uid}", pid, theirs if who == "mine" else pid))
    people.add("elsewhere", "gp", org=other_org)   # a GP at the other person's practice
    people.add("stranger", "gp", org=f"org-none-{uid}")  # a GP with no relationship to either
    people.add("person", "patient", patient=mine)
    return ids


TYPES = {"Claim": "cl", "ExplanationOfBenefit": "eob", "ImagingStudy": "img", "Coverage": "cov"}


@pytest.mark.parametrize("rtype", sorted(TYPES))
def test_no_relationship_no_read(server, world, uid, rtype):
    theirs = f"{TYPES[rtype]}-theirs-{uid}"
    with server.client("gp") as gp:
        r = gp.get(f"/fhir/{rtype}/{theirs}")
        assert r.status_code == 403, r.text[:300]
        assert "relationship" in diagnostics(r)
        assert gp.get(f"/fhir/{rtype}/{TYPES[rtype]}-mine-{uid}").status_code == 200
        assert gp.get(f"/fhir/{rtype}/{theirs}/_history").status_code == 403
        assert gp.get(f"/fhir/{rtype}/{theirs}/_history/1").status_code == 403


@pytest.mark.parametrize("rtype", sorted(TYPES))
def test_search_never_returns_another_persons_entries(server, world, uid, rtype):
    with server.client("gp") as gp:
        r = gp.get(f"/fhir/{rtype}", params={"_id": f"{TYPES[rtype]}-theirs-{uid},{TYPES[rtype]}-mine-{uid}"})
        assert r.status_code == 200
        assert entry_ids(r.json()) == {f"{TYPES[rtype]}-mine-{uid}"}
        r = gp.get(f"/fhir/{rtype}", params={"patient": world["theirs"]})
        assert r.status_code == 403 or not entry_ids(r.json())
    with server.client(f"sec-stranger-{uid}") as stranger:
        r = stranger.get(f"/fhir/{rtype}", params={"_id": f"{TYPES[rtype]}-theirs-{uid},{TYPES[rtype]}-mine-{uid}"})
        assert r.status_code == 200 and not entry_ids(r.json())
    with server.client(f"sec-elsewhere-{uid}") as elsewhere:  # the other practice sees its own person's only
        r = elsewhere.get(f"/fhir/{rtype}", params={"_id": f"{TYPES[rtype]}-theirs-{uid},{TYPES[rtype]}-mine-{uid}"})
        assert entry_ids(r.json()) == {f"{TYPES[rtype]}-theirs-{uid}"}


def test_include_does_not_carry_another_persons_claim(server, world, uid):
    # the EOB of `mine` is visible; include its claim; `theirs` EOB's claim must not come with any search
    with server.client("gp") as gp:
        r = gp.get("/fhir/ExplanationOfBenefit", params={"_id": f"eob-mine-{uid},eob-theirs-{uid}",
                                                         "_include": "ExplanationOfBenefit:claim"})
        assert r.status_code == 200
        assert entry_ids(r.json()) == {f"eob-mine-{uid}", f"cl-mine-{uid}"}
        r = gp.get("/fhir/Claim", params={"_id": f"cl-mine-{uid}", "_revinclude": "ExplanationOfBenefit:claim"})
        assert entry_ids(r.json()) == {f"cl-mine-{uid}", f"eob-mine-{uid}"}


def test_everything_of_a_stranger_is_refused_and_own_holds_the_claims(server, world, uid):
    with server.client("gp") as gp:
        r = gp.get(f"/fhir/Patient/{world['theirs']}/$everything")
        assert r.status_code == 403
        r = gp.get(f"/fhir/Patient/{world['mine']}/$everything")
        assert r.status_code == 200
        got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json()["entry"]}
        for rtype, prefix in TYPES.items():
            assert (rtype, f"{prefix}-mine-{uid}") in got
            assert (rtype, f"{prefix}-theirs-{uid}") not in got
        # `mine`'s coverage names `theirs` as policy holder: their Patient entry is not pulled in
        assert ("Patient", world["theirs"]) not in got


def test_a_person_sees_their_own_claims_and_no_one_elses(server, world, uid):
    with server.client(f"sec-person-{uid}") as me:
        assert me.get(f"/fhir/Claim/cl-mine-{uid}").status_code == 200
        assert me.get(f"/fhir/Claim/cl-theirs-{uid}").status_code == 403
        r = me.get("/fhir/Claim", params={"_id": f"cl-mine-{uid},cl-theirs-{uid}"})
        assert entry_ids(r.json()) == {f"cl-mine-{uid}"}
        r = me.get("/fhir/Coverage", params={"beneficiary": world["mine"]})
        assert entry_ids(r.json()) == {f"cov-mine-{uid}"}


def test_unsupported_parameter_alone_cannot_list_everyones_claims(server, world, uid):
    # before: Claim?<anything unsupported> ignored the parameter and listed every claim
    with server.client(f"sec-stranger-{uid}") as stranger:
        r = stranger.get("/fhir/Claim", params={"patient.name": "x"})
        assert r.status_code == 400
        r = stranger.get("/fhir/Claim", params={"insurer-name": "x"})
        assert r.status_code == 400 and diagnostics(r)
