"""A small directory and population for the system tests, written through the gate as the integration account.

Services follow the FHIR R4 HealthcareService element definitions (eligibility, referralMethod from
http://terminology.hl7.org/CodeSystem/service-referral-method, availableTime with daysOfWeek codes mon..sun,
telecom); problems are coded with SNOMED CT codes from knowledge/conditions.yaml (13645005 Chronic obstructive
pulmonary disease, verified there) or written as text only, as GP systems often send falls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from joinedup.governance.identity import SYSTEM

NEED = "https://joinedup.example/fhir/CodeSystem/care-need"
OFFER = "https://joinedup.example/fhir/CodeSystem/service-offer"
PROMISE = "https://joinedup.example/fhir/StructureDefinition/response-time-promise"
METHOD = "http://terminology.hl7.org/CodeSystem/service-referral-method"
SNOMED = "http://snomed.info/sct"
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


@dataclass
class World:
    uid: str
    hospital: str
    community: str
    falls_clinic: str
    therapies: str
    diabetes: str
    patient: str
    stranger: str
    roles: dict[str, str] = field(default_factory=dict)


def service(hid: str, org: str, name: str, *, needs=(), criteria=(), methods=("elec",), advice=False, promise=None,
            phone="01632 960001", hours=(WEEKDAYS, "08:30:00", "17:00:00"), specialty=None, location=None) -> dict:
    hs = {"resourceType": "HealthcareService", "id": hid, "active": True, "name": name,
          "providedBy": {"reference": f"Organization/{org}"},
          "eligibility": [{"code": {"text": "Referral criteria"}, "comment": c} for c in criteria],
          "referralMethod": [{"coding": [{"system": METHOD, "code": m}]} for m in methods],
          "telecom": [{"system": "phone", "value": phone}] if phone else [],
          "availableTime": [{"daysOfWeek": list(hours[0]), "availableStartTime": hours[1],
                             "availableEndTime": hours[2]}] if hours else []}
    chars = [{"coding": [{"system": NEED, "code": n}]} for n in needs]
    if advice:
        chars.append({"coding": [{"system": OFFER, "code": "advice-and-guidance"}]})
    if chars:
        hs["characteristic"] = chars
    if promise:
        hs["extension"] = [{"url": PROMISE, "valueDuration": {"value": promise[0], "unit": promise[1],
                                                              "system": "http://unitsofmeasure.org", "code": "d"}}]
    if specialty:
        hs["specialty"] = [{"text": specialty}]
    if location:
        hs["location"] = [{"reference": f"Location/{location}"}]
    return {k: v for k, v in hs.items() if v != []}


def build(gate, uid: str) -> World:
    hosp, comm = f"sys-hosp-{uid}", f"sys-comm-{uid}"
    for oid, name in ((hosp, f"Dale Teaching Hospitals {uid}"), (comm, f"Dale Community Health {uid}")):
        gate.update(SYSTEM, "Organization", oid, {"resourceType": "Organization", "id": oid, "name": name,
                                                  "active": True})
    loc = f"sys-loc-{uid}"
    gate.update(SYSTEM, "Location", loc, {"resourceType": "Location", "id": loc, "name": f"Falls clinic, Dale {uid}",
                                          "status": "active", "managingOrganization": {"reference": f"Organization/{hosp}"}})
    falls, ther, diab = f"sys-falls-{uid}", f"sys-ther-{uid}", f"sys-diab-{uid}"
    gate.update(SYSTEM, "HealthcareService", falls, service(
        falls, hosp, f"Falls and frailty clinic {uid}", needs=["falls", "frailty"], advice=True, promise=(5, "working days"),
        criteria=["Two or more falls in 12 months, or one fall with injury"], methods=("elec", "phone"),
        specialty="Care of older people", location=loc))
    # no coded need: found by its description ("strength and balance" is a falls service term)
    gate.update(SYSTEM, "HealthcareService", ther, service(
        ther, comm, f"Community therapies {uid} (strength and balance)", criteria=["Housebound adults"],
        hours=(["mon", "tue", "wed", "thu", "fri", "sat"], "09:00:00", "13:00:00")))
    gate.update(SYSTEM, "HealthcareService", diab, service(
        diab, hosp, f"Diabetes centre {uid}", needs=["diabetes"], promise=(2, "working days"), phone=None,
        criteria=["HbA1c above target on three medicines"]))
    cons = f"sys-cons-{uid}"
    gate.update(SYSTEM, "Practitioner", cons, {"resourceType": "Practitioner", "id": cons, "active": True,
                                               "name": [{"prefix": ["Dr"], "given": ["Fay"], "family": f"Falls{uid}"}]})
    gate.update(SYSTEM, "PractitionerRole", f"role-{cons}", {
        "resourceType": "PractitionerRole", "id": f"role-{cons}", "active": True,
        "practitioner": {"reference": f"Practitioner/{cons}"}, "organization": {"reference": f"Organization/{hosp}"},
        "code": [{"text": "Consultant"}], "specialty": [{"text": "Care of older people"}],
        "healthcareService": [{"reference": f"HealthcareService/{falls}"}]})
    pid, stranger = f"sys-pat-{uid}", f"sys-str-{uid}"
    for p, gp_org in ((pid, "practice-1"), (stranger, f"elsewhere-{uid}")):
        gate.update(SYSTEM, "Patient", p, {"resourceType": "Patient", "id": p, "birthDate": "1938-04-02",
                                           "name": [{"given": ["Iris"], "family": f"Sys{uid}"}],
                                           "generalPractitioner": [{"reference": f"Organization/{gp_org}"}]})
    active = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
    gate.update(SYSTEM, "Condition", f"{pid}-falls", {
        "resourceType": "Condition", "id": f"{pid}-falls", "clinicalStatus": active,
        "code": {"text": "Recurrent falls"}, "subject": {"reference": f"Patient/{pid}"}})
    gate.update(SYSTEM, "Condition", f"{pid}-copd", {
        "resourceType": "Condition", "id": f"{pid}-copd", "clinicalStatus": active,
        "code": {"coding": [{"system": SNOMED, "code": "13645005"}]}, "subject": {"reference": f"Patient/{pid}"}})
    gate.update(SYSTEM, "Goal", f"{pid}-goal", {
        "resourceType": "Goal", "id": f"{pid}-goal", "lifecycleStatus": "active",
        "description": {"text": "Get help with washing and dressing so I can stay at home"},
        "subject": {"reference": f"Patient/{pid}"}})
    return World(uid, hosp, comm, falls, ther, diab, pid, stranger, {"consultant": f"role-{cons}"})
