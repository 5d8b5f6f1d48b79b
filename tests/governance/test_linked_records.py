"""A person's records held by different organisations (same NHS number) share the relationship and the choices."""

from __future__ import annotations

NHS = "https://fhir.nhs.uk/Id/nhs-number"
LA = "https://joinedup.example/Id/local-authority-person"


def _nhs(uid: str) -> str:
    from joinedup.fhir.nhs_number import check_digit

    base = 999_000_000 + int(uid[:6], 16) % 900_000
    while True:
        nine = f"{base:09d}"
        check = check_digit(nine)
        if check is not None:
            return nine + str(check)
        base += 1


def _setup(api, uid):
    nhs = _nhs(uid)
    gp_rec, la_rec = f"lk-gp-{uid}", f"lk-la-{uid}"
    entries = [
        {"resourceType": "Organization", "id": f"la-{uid}", "name": f"Council {uid}"},
        {"resourceType": "Patient", "id": gp_rec, "meta": {"source": "Organization/practice-1"},
         "identifier": [{"system": NHS, "value": nhs}], "name": [{"family": f"Linked{uid}"}],
         "generalPractitioner": [{"reference": "Organization/practice-1"}]},
        {"resourceType": "Patient", "id": la_rec, "meta": {"source": f"Organization/la-{uid}"},
         "identifier": [{"system": LA, "value": f"NC{uid}"}, {"system": NHS, "value": nhs}],
         "name": [{"family": f"Linked{uid}"}]},
        {"resourceType": "Encounter", "id": f"lk-visit-{uid}", "meta": {"source": f"Organization/la-{uid}"},
         "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
         "subject": {"reference": f"Patient/{la_rec}"},
         "period": {"start": "2026-05-01T10:00:00Z", "end": "2026-05-01T11:00:00Z"}},
    ]
    for res in entries:
        r = api.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text
    return gp_rec, la_rec


def test_relationship_with_one_record_reaches_the_linked_social_care_record(server, api, uid):
    gp_rec, la_rec = _setup(api, uid)
    server.gate.facts_for_tests.invalidate()
    with server.client("gp") as c:
        assert c.get(f"/fhir/Patient/{la_rec}").status_code == 200
        assert c.get(f"/fhir/Encounter/lk-visit-{uid}").status_code == 200
        found = c.get("/fhir/Encounter", params={"subject": f"Patient/{la_rec}"}).json()
        assert found["total"] == 1
    # without the GP record, the council's record alone is no relationship
    api.delete(f"/fhir/Patient/{gp_rec}")
    server.gate.facts_for_tests.invalidate()
    with server.client("gp") as c:
        assert c.get(f"/fhir/Encounter/lk-visit-{uid}").status_code == 403
        assert c.get("/fhir/Encounter", params={"subject": f"Patient/{la_rec}"}).status_code == 403


def test_objection_on_one_record_covers_the_linked_record(server, api, uid):
    gp_rec, la_rec = _setup(api, uid)
    consent = {"resourceType": "Consent", "id": f"lk-obj-{uid}", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"reference": f"Patient/{gp_rec}"},
               "policyRule": {"text": "objects to sharing"},
               "provision": {"type": "deny"}}
    r = api.put(f"/fhir/Consent/{consent['id']}", json=consent)
    assert r.status_code in (200, 201), r.text
    server.gate.facts_for_tests.invalidate()
    with server.client("gp") as c:
        # the council's visit was recorded elsewhere: the person's objection hides it from the practice
        assert c.get(f"/fhir/Encounter/lk-visit-{uid}").status_code == 403
        assert c.get("/fhir/Encounter", params={"subject": f"Patient/{la_rec}"}).json()["total"] == 0
