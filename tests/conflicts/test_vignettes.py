"""Clinical vignettes (tests/data/conflict_vignettes.yaml, written from MHRA, NICE and STOPP/START): each names the
hazard a pharmacist expects, and a close case that must stay silent; `quiet` people on appropriate treatment must
raise nothing serious. Detection runs through the public service (`detect_findings`), as the CLI and API do."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from joinedup.conflicts.service import detect_findings

DATA = Path(__file__).resolve().parents[1] / "data" / "conflict_vignettes.yaml"
VIGNETTES: list[dict[str, Any]] = yaml.safe_load(DATA.read_text())["vignettes"]
RANK = {"low": 0, "moderate": 1, "high": 2, "critical": 3}
# result name -> (LOINC, unit); LOINC codes as published by Regenstrief (loinc.org)
RESULTS = {"egfr": ("62238-1", "mL/min/1.73m2"), "potassium": ("2823-3", "mmol/L"), "sodium": ("2951-2", "mmol/L"),
           "magnesium": ("2601-3", "mmol/L"), "heart_rate": ("8867-4", "/min"), "hba1c": ("59261-8", "mmol/mol"),
           "hba1c_percent": ("4548-4", "%"), "calcium": ("17861-6", "mmol/L"), "inr": ("6301-6", "{INR}"),
           "platelets": ("777-3", "10*9/L")}
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_ids = itertools.count(1)


def _ago(days: int) -> str:
    return (date.today() - timedelta(days=days)).isoformat()


def _birth(age: int) -> str:
    today = date.today()
    return date(today.year - age - (1 if (today.month, today.day) == (1, 1) else 0), 1, 1).isoformat()


def build(v: dict[str, Any]) -> list[dict[str, Any]]:
    """FHIR resources for a vignette person."""
    subj = {"reference": "Patient/v1"}
    person = v.get("person") or {}
    out: list[dict[str, Any]] = [{"resourceType": "Patient", "id": "v1", "gender": person.get("sex", "unknown"),
                                  "birthDate": _birth(int(person.get("age", 70)))}]
    for m in v.get("meds") or []:
        spec = m if isinstance(m, dict) else {"text": m}
        res: dict[str, Any] = {"resourceType": "MedicationStatement", "id": f"m{next(_ids)}", "status": "active",
                               "subject": subj, "medicationCodeableConcept": {"text": spec["text"]},
                               "effectivePeriod": {"start": _ago(int(spec.get("days", 90)))}}
        if spec.get("prn"):
            res["dosage"] = [{"asNeededBoolean": True}]
        out.append(res)
    for c in v.get("conditions") or []:
        out.append({"resourceType": "Condition", "id": f"c{next(_ids)}", "subject": subj, "code": {"text": c},
                    "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]}})
    for name, (value, days) in (v.get("results") or {}).items():
        # QTc is read from the ECG report's wording (no LOINC code is used for it in the knowledge base)
        code = ({"text": "QTc interval"} if name == "qtc" else
                {"coding": [{"system": "http://loinc.org", "code": RESULTS[name][0]}]})
        unit = "ms" if name == "qtc" else RESULTS[name][1]
        out.append({"resourceType": "Observation", "id": f"o{next(_ids)}", "status": "final", "subject": subj,
                    "code": code, "valueQuantity": {"value": value, "unit": unit},
                    "effectiveDateTime": _ago(int(days))})
    return out


def findings(v: dict[str, Any]) -> list[dict[str, Any]]:
    return detect_findings(resources=build(v))["findings"]


FIRING = [v for v in VIGNETTES if not v.get("quiet")]
QUIET = [v for v in VIGNETTES if v.get("quiet")]


def test_the_vignette_set_is_broad() -> None:
    assert len(FIRING) >= 40
    assert len({v["expect"] for v in FIRING}) >= 40
    assert all(v.get("source") and v.get("hazard") and v.get("close") for v in FIRING)
    ids = [v["id"] for v in VIGNETTES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("v", FIRING, ids=[v["id"] for v in FIRING])
def test_vignette_raises_the_named_hazard(v: dict[str, Any]) -> None:
    found = [f for f in findings(v) if f["rule"] == v["expect"] and f["kind"] == v.get("expect_kind", f["kind"])]
    assert found, f"{v['id']}: expected {v['expect']} ({v['hazard']}) from {v['source']}"
    f = found[0]
    assert RANK[f["severity"]] >= RANK[v["min_severity"]], f
    if "max_severity" in v:
        assert RANK[f["severity"]] <= RANK[v["max_severity"]], f
    text = " ".join([f["summary"], f["detail"], f.get("mechanism", "")]).lower()
    assert v["hazard"].lower() in text, (v["hazard"], text)
    assert f["sources"] and f["why_now"], f
    assert {w["ref"] for w in f["why_now"]} <= set(f["involves"])
    if "add" in v:
        assert f["kind"] == "omission" and f["suggest"]["ingredient"] == v["add"], f


@pytest.mark.parametrize("v", FIRING, ids=[v["id"] for v in FIRING])
def test_close_case_stays_silent(v: dict[str, Any]) -> None:
    close = {**v, **v["close"]}
    assert v["expect"] not in {f["rule"] for f in findings(close)}, close


@pytest.mark.parametrize("v", QUIET, ids=[v["id"] for v in QUIET])
def test_appropriate_treatment_raises_nothing_serious(v: dict[str, Any]) -> None:
    loud = [f for f in findings(v) if RANK[f["severity"]] > RANK[v["max_severity"]]]
    assert not loud, loud


def vignette_rules() -> set[str]:
    """Rules covered by a firing vignette (with its close case)."""
    return {v["expect"] for v in FIRING}
