"""REQUIRED bindings on CodeableConcept elements (FHIR R4 4.0.1): Condition.clinicalStatus SHALL be a code of
http://hl7.org/fhir/ValueSet/condition-clinical (active | recurrence | relapse | inactive | remission | resolved),
Condition.verificationStatus of condition-ver-status, AllergyIntolerance.clinicalStatus of
allergyintolerance-clinical (active | inactive | resolved) and verificationStatus of
allergyintolerance-verification (unconfirmed | confirmed | refuted | entered-in-error) - hl7.org/fhir/R4/condition.html
and allergyintolerance.html, "Terminology Bindings". A care record that takes "banana" for a clinical status could
show a problem as current or not at random; the models accept any coding, so these are checked on every write."""

from __future__ import annotations

import pytest

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


def _condition(uid: str, **extra) -> dict:
    return {"resourceType": "Condition", "id": f"rc-{uid}", "subject": {"reference": f"Patient/rcp-{uid}"},
            "code": {"text": "Hypertension"}, **extra}


@pytest.fixture()
def person(api, uid):
    r = api.put(f"/fhir/Patient/rcp-{uid}", json={"resourceType": "Patient", "id": f"rcp-{uid}",
                                                  "name": [{"family": "Binding"}]})
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize("element,value,where", [
    ("clinicalStatus", {"coding": [{"system": CLINICAL, "code": "banana"}]}, "Condition.clinicalStatus"),
    ("clinicalStatus", {"coding": [{"system": CLINICAL, "code": "Active"}]}, "Condition.clinicalStatus"),  # case
    ("clinicalStatus", {"text": "ongoing"}, "Condition.clinicalStatus"),  # no coding from the value set
    ("verificationStatus", {"coding": [{"system": VER, "code": "maybe"}]}, "Condition.verificationStatus"),
])
def test_a_condition_status_outside_its_required_value_set_is_refused(api, uid, person, element, value, where):
    r = api.put(f"/fhir/Condition/rc-{uid}", json=_condition(uid, **{element: value}))
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "code-invalid"
    assert issue["expression"] == [where]
    assert api.get(f"/fhir/Condition/rc-{uid}").status_code == 404  # nothing was stored


@pytest.mark.parametrize("code", ["active", "recurrence", "relapse", "inactive", "remission", "resolved"])
def test_every_code_of_condition_clinical_is_accepted(api, uid, person, code):
    extra = {"clinicalStatus": {"coding": [{"system": CLINICAL, "code": code}]},
             "verificationStatus": {"coding": [{"system": VER, "code": "confirmed"}]}}
    assert api.put(f"/fhir/Condition/rc-{uid}", json=_condition(uid, **extra)).status_code == 201


def test_another_coding_beside_one_from_the_value_set_is_allowed(api, uid, person):
    extra = {"clinicalStatus": {"coding": [{"system": "http://snomed.info/sct", "code": "55561003"},
                                           {"system": CLINICAL, "code": "active"}], "text": "Active"}}
    assert api.put(f"/fhir/Condition/rc-{uid}", json=_condition(uid, **extra)).status_code == 201


def test_allergy_clinical_status_is_checked_too(api, uid, person):
    body = {"resourceType": "AllergyIntolerance", "id": f"ra-{uid}", "patient": {"reference": f"Patient/rcp-{uid}"},
            "code": {"text": "Penicillin"}, "clinicalStatus": {"coding": [{"system": ALLERGY, "code": "current"}]}}
    r = api.put(f"/fhir/AllergyIntolerance/ra-{uid}", json=body)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["AllergyIntolerance.clinicalStatus"]
    body["clinicalStatus"]["coding"][0]["code"] = "active"
    assert api.put(f"/fhir/AllergyIntolerance/ra-{uid}", json=body).status_code == 201
