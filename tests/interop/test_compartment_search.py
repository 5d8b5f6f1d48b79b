"""Compartment search over HTTP: `GET /fhir/Patient/{id}/Claim`.

From the FHIR R4 specification: the RESTful API's search interaction takes the form
`GET [base]/[Compartment]/[id]/[type]{?[parameters]}` (http.html#search, search.html "Compartments"): "a search
across all resources of the given type in the given compartment"; CompartmentDefinition/patient puts a Claim in
a patient's compartment through its `patient` and `payee` search parameters (Claim.patient, Claim.payee.party).
Every read goes through the gate: without a relationship with the person, nothing is returned (403)."""

from __future__ import annotations

import uuid

from joinedup.governance.identity import SYSTEM


def _claim(cid: str, patient: str, *, payee: str | None = None, status: str = "active") -> dict:
    claim = {"resourceType": "Claim", "id": cid, "status": status,
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
             "use": "claim", "patient": {"reference": f"Patient/{patient}"}, "created": "2026-11-30",
             "provider": {"reference": "Organization/org-claims"},
             "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                      "code": "normal"}]},
             "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "NHS"}}]}
    if payee:
        claim["payee"] = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payeetype",
                                               "code": "subscriber"}]}, "party": {"reference": f"Patient/{payee}"}}
    return claim


def _setup(server) -> tuple[str, str, str]:
    uid = uuid.uuid4().hex[:8]
    me, other = f"cmp-a-{uid}", f"cmp-b-{uid}"
    for pid in (me, other):
        server.gate.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid,
                                                    "name": [{"family": "Compartment"}]})
    server.gate.update(SYSTEM, "Claim", f"c1-{uid}", _claim(f"c1-{uid}", me))
    server.gate.update(SYSTEM, "Claim", f"c2-{uid}", _claim(f"c2-{uid}", me, status="cancelled"))
    server.gate.update(SYSTEM, "Claim", f"c3-{uid}", _claim(f"c3-{uid}", other))
    # in both compartments: the other person's claim, paid to this person (Claim.payee.party)
    server.gate.update(SYSTEM, "Claim", f"c4-{uid}", _claim(f"c4-{uid}", other, payee=me))
    return uid, me, other


def _ids(bundle: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


def test_the_patients_claims_through_patient_and_payee(server):
    uid, me, other = _setup(server)
    with server.client("admin") as c:
        r = c.get(f"/fhir/Patient/{me}/Claim")
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        assert _ids(bundle) == sorted([f"c1-{uid}", f"c2-{uid}", f"c4-{uid}"]) and bundle["total"] == 3
        assert all(e["fullUrl"].endswith(f"/Claim/{e['resource']['id']}") for e in bundle["entry"])
        # further parameters of the type narrow the search within the compartment
        r = c.get(f"/fhir/Patient/{me}/Claim", params={"status": "active"})
        assert _ids(r.json()) == sorted([f"c1-{uid}", f"c4-{uid}"])
        assert _ids(c.get(f"/fhir/Patient/{other}/Claim").json()) == sorted([f"c3-{uid}", f"c4-{uid}"])
        # paging over the compartment
        first = c.get(f"/fhir/Patient/{me}/Claim", params={"_count": "2"}).json()
        assert len(first["entry"]) == 2 and first["total"] == 3
        nxt = next(lk["url"] for lk in first["link"] if lk["relation"] == "next")
        rest = c.get(nxt).json()
        assert sorted(_ids(first) + _ids(rest)) == sorted([f"c1-{uid}", f"c2-{uid}", f"c4-{uid}"])


def test_bad_compartment_searches_get_an_operation_outcome(server):
    _uid, me, _other = _setup(server)
    with server.client("admin") as c:
        for url, status in ((f"/fhir/Patient/{me}/Organization", 400),  # not in the Patient compartment
                            (f"/fhir/Patient/{me}/Banana", 404),  # no such resource type
                            ("/fhir/Patient/no-such-person/Claim", 404)):
            r = c.get(url)
            assert r.status_code == status, (url, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
        r = c.get(f"/fhir/Patient/{me}/Claim", params={"patient": "Patient/someone-else"})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_no_relationship_no_claims(server):
    _uid, me, _other = _setup(server)
    with server.client("gp") as c:  # a GP with no care relationship with this person
        r = c.get(f"/fhir/Patient/{me}/Claim")
        assert r.status_code == 403, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
