"""An entry of a person's record that names no person JoinedUp can file it under.

A hospital feed that references its own server's patients ("https://hospital.example/fhir/Patient/123"), or a
conditional reference nobody resolved, leaves a Condition, Observation or Claim with no person in the store. Such an
entry is still about someone: it must not be open to every professional whose role may read clinical entries (it
was, in read and in search). Only the organisation that recorded it sees it; directory entries (Organization,
Practitioner) that are about no person stay open as before.
"""

from __future__ import annotations

from tests.security.conftest import organization, put

ELSEWHERE = "https://hospital.example/fhir/Patient/123"


def _condition(cid: str, org: str, code: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "meta": {"source": f"Organization/{org}"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}], "text": code},
            "subject": {"reference": ELSEWHERE}}


def test_an_entry_about_no_known_person_is_seen_only_by_its_recording_organisation(server, api, uid, people):
    hospital = f"hosp-u-{uid}"
    put(api, organization(hospital))
    put(api, organization(f"org-other-{uid}"))
    cid = f"cond-unattached-{uid}"
    put(api, _condition(cid, hospital, f"Diabetes {uid}"))
    people.add("author", "gp", org=hospital)
    people.add("stranger", "gp", org=f"org-other-{uid}")

    with people.client("stranger") as gp:
        r = gp.get(f"/fhir/Condition/{cid}")
        assert r.status_code == 403
        assert "names no person" in r.json()["issue"][0]["diagnostics"]
        assert gp.get(f"/fhir/Condition/{cid}/_history").status_code == 403
        found = gp.get("/fhir/Condition", params={"_id": cid}).json()
        assert not [e for e in found.get("entry", []) if e.get("search", {}).get("mode") != "outcome"]
        found = gp.get("/fhir/Condition", params={"code": "http://snomed.info/sct|44054006", "_count": "500"}).json()
        assert cid not in {e["resource"]["id"] for e in found.get("entry", []) if e["resource"]["resourceType"] == "Condition"}
        # directory entries about no person are still open to professionals
        assert gp.get(f"/fhir/Organization/{hospital}").status_code == 200

    with people.client("author") as author:
        assert author.get(f"/fhir/Condition/{cid}").status_code == 200
        found = author.get("/fhir/Condition", params={"_id": cid}).json()
        assert [e["resource"]["id"] for e in found.get("entry", []) if e["resource"]["resourceType"] == "Condition"] \
            == [cid]
