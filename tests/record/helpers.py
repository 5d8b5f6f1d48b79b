"""Build small cross-organisation records for the record and web tests (written through the FHIR API)."""

from __future__ import annotations

from typing import Any

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def nhs_number(seed: int) -> str:
    """A valid NHS number (modulus 11) in the 999 test range derived from a seed."""
    n = 999000000 + seed % 999999
    while True:
        digits = str(n)[:9]
        total = sum(int(d) * w for d, w in zip(digits, range(10, 1, -1)))
        check = 11 - total % 11
        check = 0 if check == 11 else check
        if check != 10:
            return digits + str(check)
        n += 1


def put(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that PUTs each resource at its own id."""
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                      for r in resources]}


def load(api, resources: list[dict[str, Any]], batch: int = 500) -> None:
    for i in range(0, len(resources), batch):
        r = api.post("/fhir", json=put(resources[i:i + batch]))
        assert r.status_code == 200, r.text[:500]


def src(org: str) -> dict[str, str]:
    return {"source": f"Organization/{org}"}


def organisations(uid: str) -> list[dict[str, Any]]:
    ods = "https://fhir.nhs.uk/Id/ods-organization-code"
    return [
        {"resourceType": "Organization", "id": f"gp-{uid}", "name": f"Riverside Surgery {uid}",
         "identifier": [{"system": ods, "value": "Z00001"}]},
        {"resourceType": "Organization", "id": f"acute-{uid}", "name": "Northshire Teaching Hospitals NHS Foundation Trust"},
        {"resourceType": "Organization", "id": f"comm-{uid}", "name": "Dale Community Health Services NHS Trust"},
        {"resourceType": "Organization", "id": f"mh-{uid}", "name": "Northshire and Dale Mental Health NHS Foundation Trust"},
        {"resourceType": "Organization", "id": f"la-{uid}", "name": "Northshire Council Adult Social Care"},
        {"resourceType": "Practitioner", "id": f"gp1-{uid}", "name": [{"family": "Wood", "given": ["Sophie"], "prefix": ["Dr"]}]},
        {"resourceType": "Practitioner", "id": f"kw-{uid}", "name": [{"family": "Mistry", "given": ["Fatima"]}]},
    ]


def rich_record(uid: str, pid: str, *, gp_practitioner: str | None = None, seed: int = 1) -> list[dict[str, Any]]:
    """A person known to five organisations, with planted discrepancies."""
    subj = {"reference": f"Patient/{pid}"}
    gp, acute, comm, mh, la = (f"gp-{uid}", f"acute-{uid}", f"comm-{uid}", f"mh-{uid}", f"la-{uid}")
    gps = [{"reference": f"Organization/{gp}"}, {"reference": f"Practitioner/{gp_practitioner or 'gp1-' + uid}"}]
    res: list[dict[str, Any]] = [{
        "resourceType": "Patient", "id": pid, "meta": src(gp),
        "identifier": [{"system": NHS, "value": nhs_number(seed)}],
        "name": [{"use": "official", "family": f"Young{uid}", "given": ["David"]}], "gender": "male",
        "birthDate": "1954-12-01", "address": [{"line": ["26 Chapel Street"], "city": "Northshire", "postalCode": "ZX2 8FW"}],
        "generalPractitioner": gps,
    }]

    def cond(i, org, code, display, onset):
        return {"resourceType": "Condition", "id": f"{pid}-c{i}", "meta": src(org), "subject": subj,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"coding": [{"system": SCT, "code": code, "display": display}]}, "onsetDateTime": onset}
    res += [cond(1, gp, "44054006", "Diabetes mellitus type 2", "2007-06-09"),
            cond(2, acute, "44054006", "Diabetes mellitus type 2", "2007-06"),
            cond(3, gp, "84114007", "Heart failure", "2015-10-13"),
            cond(4, acute, "84114007", "Heart failure", "2013-01-20"),
            cond(5, mh, "35489007", "Depressive disorder", "2019-02-01")]

    def med(kind, i, org, product, dose, status, when, note=None):
        r = {"resourceType": kind, "id": f"{pid}-m{i}", "meta": src(org), "subject": subj, "status": status,
             "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": str(1000 + i),
                                                       "display": product}], "text": product}}
        if kind == "MedicationRequest":
            r.update(intent="order", authoredOn=when, dosageInstruction=[{"text": dose}])
        else:
            r.update(dateAsserted=when, dosage=[{"text": dose}])
            if note:
                r["note"] = [{"text": note}]
        return r
    res += [med("MedicationRequest", 1, gp, "Metformin 500mg tablets", "One tablet twice a day", "active", "2007-06-09"),
            med("MedicationStatement", 2, acute, "Metformin 500mg tablets", "One tablet once a day", "active",
                "2026-02-21", "Medication on discharge"),
            med("MedicationStatement", 3, comm, "Metformin 500mg tablets", "One tablet twice a day", "active", "2023-08-30"),
            med("MedicationRequest", 4, gp, "Aspirin 75mg dispersible tablets", "One tablet once a day", "active", "2017-01-30"),
            med("MedicationStatement", 5, acute, "Aspirin 75mg dispersible tablets", "One tablet once a day", "stopped",
                "2024-09-14", "Stopped during admission"),
            med("MedicationRequest", 6, gp, "Amlodipine 5mg tablets", "One tablet once a day", "active", "2002-10-11")]
    for i, (day, value) in enumerate([("2025-01-10", 58), ("2025-07-10", 63), ("2026-01-10", 71)]):
        res.append({"resourceType": "Observation", "id": f"{pid}-o{i}", "meta": src(acute), "status": "final",
                    "subject": subj, "code": {"coding": [{"system": LOINC, "code": "59261-8", "display": "HbA1c"}]},
                    "effectiveDateTime": day, "valueQuantity": {"value": value, "unit": "mmol/mol"}})
    res.append({"resourceType": "Observation", "id": f"{pid}-bp", "meta": src(gp), "status": "final", "subject": subj,
                "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure"}]},
                "effectiveDateTime": "2026-03-01",
                "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]},
                               "valueQuantity": {"value": 150, "unit": "mm[Hg]"}}]})

    def enc(i, org, title, start, cls="AMB", status="finished"):
        return {"resourceType": "Encounter", "id": f"{pid}-e{i}", "meta": src(org), "status": status,
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
                "type": [{"text": title}], "subject": subj, "period": {"start": start},
                "serviceProvider": {"reference": f"Organization/{org}"}}
    res += [enc(1, gp, "GP consultation", "2026-05-25T10:40:00Z"),
            enc(2, acute, "Emergency admission", "2026-02-14T09:00:00Z", "IMP"),
            enc(3, comm, "Community nursing visit", "2026-03-03T11:00:00Z", "HH"),
            enc(4, mh, "Memory assessment", "2025-11-20T14:00:00Z"),
            enc(5, acute, "Outpatient appointment", "2099-01-10T09:00:00Z", status="planned")]
    res += [
        {"resourceType": "ServiceRequest", "id": f"{pid}-sr1", "meta": src(gp), "status": "active", "intent": "order",
         "subject": subj, "code": {"text": "Referral to cardiology"}, "authoredOn": "2026-04-01",
         "performer": [{"reference": f"Organization/{acute}"}]},
        {"resourceType": "Communication", "id": f"{pid}-ag1", "meta": src(gp), "status": "completed", "subject": subj,
         "category": [{"text": "Advice and guidance request"}], "sent": "2026-05-01T12:00:00Z",
         "payload": [{"contentString": "Advice please on heart failure and CKD."}]},
        {"resourceType": "EpisodeOfCare", "id": f"{pid}-eoc", "meta": src(la), "status": "active",
         "type": [{"text": "Home care package"}], "patient": subj, "period": {"start": "2023-12-21"},
         "managingOrganization": {"reference": f"Organization/{la}"}},
        {"resourceType": "RelatedPerson", "id": f"{pid}-rp", "meta": src(gp), "patient": subj,
         "relationship": [{"text": "Unpaid carer"}], "name": [{"family": "Young", "given": ["Ava"]}]},
        {"resourceType": "CareTeam", "id": f"{pid}-ct", "meta": src(gp), "status": "active", "subject": subj,
         "participant": [{"role": [{"text": "GP"}], "member": {"reference": gps[1]["reference"]},
                          "onBehalfOf": {"reference": f"Organization/{gp}"}},
                         {"role": [{"text": "care coordinator"}], "member": {"reference": f"Practitioner/kw-{uid}"},
                          "onBehalfOf": {"reference": f"Organization/{comm}"}}]},
        {"resourceType": "Flag", "id": f"{pid}-flag", "meta": src(comm), "status": "active", "subject": subj,
         "code": {"text": "Key safe at the front door"}},
        {"resourceType": "Goal", "id": f"{pid}-goal", "meta": src(comm), "lifecycleStatus": "active", "subject": subj,
         "description": {"text": "To keep walking to the allotment"}},
        {"resourceType": "AllergyIntolerance", "id": f"{pid}-al", "meta": src(gp), "patient": subj,
         "code": {"text": "Penicillin"}, "criticality": "high",
         "reaction": [{"manifestation": [{"text": "Rash"}]}]},
    ]
    return res
