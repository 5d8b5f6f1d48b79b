"""Tiny FHIR builders for conflict-engine tests."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

_ids = itertools.count(1)
PID = "pt1"


def _subj() -> dict[str, str]:
    return {"reference": f"Patient/{PID}"}


def patient(birth: str = "1940-01-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PID, "birthDate": birth}


def med(text: str, *, prn: bool = False, status: str = "active", rtype: str = "MedicationStatement",
        coding: list[dict[str, str]] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": rtype, "id": f"m{next(_ids)}", "status": status, "subject": _subj(),
                         "medicationCodeableConcept": {"text": text, **({"coding": coding} if coding else {})}}
    if rtype == "MedicationRequest":
        r["intent"] = "order"
        r["dosageInstruction"] = [{"asNeededBoolean": prn}]
    elif prn:
        r["dosage"] = [{"asNeededBoolean": True}]
    return r


def cond(key_or_text: str, *, code: str | None = None, status: str = "active") -> dict[str, Any]:
    cc: dict[str, Any] = {"text": key_or_text}
    if code:
        cc["coding"] = [{"system": "http://snomed.info/sct", "code": code}]
    return {"resourceType": "Condition", "id": f"c{next(_ids)}", "subject": _subj(), "code": cc,
            "clinicalStatus": {"coding": [{"code": status}]}}


def days_ago(n: int) -> str:
    """An ISO date n days before today (results must be recent to drive a finding)."""
    return (date.today() - timedelta(days=n)).isoformat()


def obs(loinc: str, value: float, when: str | None = None) -> dict[str, Any]:
    when = when or days_ago(30)
    return {"resourceType": "Observation", "id": f"o{next(_ids)}", "status": "final", "subject": _subj(),
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "valueQuantity": {"value": value}, "effectiveDateTime": when}


def egfr(value: float) -> dict[str, Any]:
    return obs("62238-1", value)


def potassium(value: float) -> dict[str, Any]:
    return obs("2823-3", value)


def allergy(text: str, status: str = "active") -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": f"a{next(_ids)}", "patient": _subj(),
            "clinicalStatus": {"coding": [{"code": status}]}, "code": {"text": text}}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
