"""Rule vignettes (knowledge/conflicts/vignettes.yaml): small clinical cases written from each rule's sources, turned
into FHIR resources and run through detection.

A vignette is a person (`person: {age, sex}`), medicines (`meds`: text as prescribed, or `{text, days, prn, dose,
source}` - `days` taken so far, `prn` as needed, `dose` the directions as written, `source` the recording
organisation), conditions (`conditions`: text as coded, or `{text, status}`), allergies (`allergies`: text),
results (`results: {test: [value, days ago]}`), medicines no longer taken (`stopped`: `{text, started, ended}`,
days ago: a MedicationStatement with status stopped), immunisations (`immunizations`: `{text, days, status, cvx}`), the rule it must raise (`expect`), the words the finding must mention
(`hazard`), the least severity acceptable (`min_severity`, optionally `max_severity`, `expect_kind`) and a close
case that must not raise the rule (`close`: the fields that change). `quiet` vignettes are people on appropriate
treatment: nothing above `max_severity` may fire.

`build` makes the resources, `run` checks one vignette against a compiled knowledge base and returns its problems.
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

from .detect import build_record, detect
from .knowledge import Knowledge

RANK = {"low": 0, "moderate": 1, "high": 2, "critical": 3}
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
LOINC = "http://loinc.org"
# result name -> (LOINC code, unit); codes as published by Regenstrief (loinc.org). QTc is read from the ECG
# report's wording (no LOINC code is used for it in the knowledge base).
RESULTS = {"egfr": ("62238-1", "mL/min/1.73m2"), "potassium": ("2823-3", "mmol/L"), "sodium": ("2951-2", "mmol/L"),
           "magnesium": ("2601-3", "mmol/L"), "heart_rate": ("8867-4", "/min"), "hba1c": ("59261-8", "mmol/mol"),
           "hba1c_percent": ("4548-4", "%"), "calcium": ("17861-6", "mmol/L"), "inr": ("6301-6", "{INR}"),
           "platelets": ("777-3", "10*9/L"), "creatinine": ("14682-9", "umol/L"), "weight": ("29463-7", "kg"),
           "crcl": ("2164-2", "mL/min"), "systolic_bp": ("8480-6", "mm[Hg]"), "diastolic_bp": ("8462-4", "mm[Hg]")}


def _ago(today: date, days: int) -> str:
    return (today - timedelta(days=days)).isoformat()


def _birth(today: date, age: int) -> str:
    return date(today.year - age - (1 if (today.month, today.day) == (1, 1) else 0), 1, 1).isoformat()


def build(v: dict[str, Any], today: date | None = None) -> list[dict[str, Any]]:
    """FHIR resources for a vignette person, dated relative to `today`."""
    today = today or date.today()
    ids = itertools.count(1)
    subj = {"reference": "Patient/v1"}
    person = v.get("person") or {}
    out: list[dict[str, Any]] = [{"resourceType": "Patient", "id": "v1", "gender": person.get("sex", "unknown"),
                                  "birthDate": _birth(today, int(person.get("age", 70)))}]
    for m in v.get("meds") or []:
        spec = m if isinstance(m, dict) else {"text": m}
        res: dict[str, Any] = {"resourceType": "MedicationStatement", "id": f"m{next(ids)}", "status": "active",
                               "subject": subj, "medicationCodeableConcept": {"text": spec["text"]},
                               "effectivePeriod": {"start": _ago(today, int(spec.get("days", 90)))}}
        dosage: dict[str, Any] = {}
        if spec.get("dose"):
            dosage["text"] = str(spec["dose"])
        if spec.get("prn"):
            dosage["asNeededBoolean"] = True
        if dosage:
            res["dosage"] = [dosage]
        if spec.get("source"):
            res["meta"] = {"source": str(spec["source"])}
        out.append(res)
    for m in v.get("stopped") or []:
        out.append({"resourceType": "MedicationStatement", "id": f"m{next(ids)}", "status": "stopped",
                    "subject": subj, "medicationCodeableConcept": {"text": str(m["text"])},
                    "effectivePeriod": {"start": _ago(today, int(m["started"])), "end": _ago(today, int(m["ended"]))}})
    for c in v.get("conditions") or []:
        spec = c if isinstance(c, dict) else {"text": c}
        out.append({"resourceType": "Condition", "id": f"c{next(ids)}", "subject": subj, "code": {"text": spec["text"]},
                    "clinicalStatus": {"coding": [{"system": CLINICAL, "code": spec.get("status", "active")}]}})
    for a in v.get("allergies") or []:
        out.append({"resourceType": "AllergyIntolerance", "id": f"a{next(ids)}", "patient": subj,
                    "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": str(a)}})
    for name, (value, days) in (v.get("results") or {}).items():
        code = ({"text": "QTc interval"} if name == "qtc" else
                {"coding": [{"system": LOINC, "code": RESULTS[name][0]}]})
        unit = "ms" if name == "qtc" else RESULTS[name][1]
        out.append({"resourceType": "Observation", "id": f"o{next(ids)}", "status": "final", "subject": subj,
                    "code": code, "valueQuantity": {"value": value, "unit": unit},
                    "effectiveDateTime": _ago(today, int(days))})
    for i in v.get("immunizations") or []:  # {text, days ago, status (default completed), cvx (optional)}
        concept: dict[str, Any] = {"text": str(i["text"])}
        if i.get("cvx"):
            concept["coding"] = [{"system": "http://hl7.org/fhir/sid/cvx", "code": str(i["cvx"])}]
        out.append({"resourceType": "Immunization", "id": f"i{next(ids)}", "status": i.get("status", "completed"),
                    "patient": subj, "vaccineCode": concept, "occurrenceDateTime": _ago(today, int(i.get("days", 30)))})
    return out


def findings(kb: Knowledge, v: dict[str, Any], today: date | None = None) -> list[dict[str, Any]]:
    """The findings detection raises on a vignette person."""
    today = today or date.today()
    rec = build_record(kb, build(v, today), today=today)
    return [f.as_dict() for f in detect(kb, rec)]


def run(kb: Knowledge, v: dict[str, Any], today: date | None = None) -> list[str]:
    """Problems with one vignette: the expected rule does not fire (or too mildly, or without the hazard named), or
    its close case raises it; for a quiet vignette, anything above its max_severity."""
    vid = v.get("id", "?")
    if v.get("quiet"):
        loud = [f["rule"] for f in findings(kb, v, today) if RANK[f["severity"]] > RANK[v.get("max_severity", "low")]]
        return [f"vignette {vid}: quiet case raises {', '.join(sorted(set(loud)))}"] if loud else []
    problems = []
    rule = v.get("expect")
    hits = [f for f in findings(kb, v, today) if f["rule"] == rule and f["kind"] == v.get("expect_kind", f["kind"])]
    if not hits:
        problems.append(f"vignette {vid}: does not raise {rule}")
    else:
        f = hits[0]
        if RANK[f["severity"]] < RANK[v.get("min_severity", "low")]:
            problems.append(f"vignette {vid}: {rule} is {f['severity']}, expected at least {v['min_severity']}")
        if "max_severity" in v and RANK[f["severity"]] > RANK[v["max_severity"]]:
            problems.append(f"vignette {vid}: {rule} is {f['severity']}, expected at most {v['max_severity']}")
        text = " ".join([f["summary"], f["detail"], f.get("mechanism", "")]).lower()
        if str(v.get("hazard", "")).lower() not in text:
            problems.append(f"vignette {vid}: {rule} does not mention {v.get('hazard')!r}")
    if isinstance(v.get("close"), dict):
        close = {**v, **v["close"]}
        if rule in {f["rule"] for f in findings(kb, close, today)}:
            problems.append(f"vignette {vid}: close case also raises {rule}")
    return problems
