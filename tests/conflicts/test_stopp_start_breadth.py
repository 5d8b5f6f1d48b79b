"""STOPP/START criteria added for issue 17 part 2: the parts the vignettes cannot reach - a blood pressure
recorded as a FHIR vital-signs panel (LOINC 85354-9 with systolic 8480-6 and diastolic 8462-4 components, the shape
the FHIR R4 vital-signs profile and Synthea use), a stale blood pressure, and "long-term" in STOPP v2 C1.

Cases written from the criterion text (STOPP/START v2 as read in Huibers et al.'s algorithms and Sallevelt's tables):
B13 "PDE-5 inhibitors in severe heart failure characterised by hypotension i.e. systolic BP < 90 mmHg"; START A4
"antihypertensive therapy where systolic blood pressure consistently > 160 mmHg"; C1 "long-term aspirin at doses
greater than 160 mg per day"."""

from __future__ import annotations

from datetime import date
from typing import Any

from joinedup.conflicts.detect import build_record, detect
from joinedup.conflicts.knowledge import load_knowledge
from joinedup.conflicts.vignettes import build

KB = load_knowledge()
TODAY = date(2026, 12, 1)
LOINC = "http://loinc.org"


def _bp_panel(systolic: float, diastolic: float, when: str) -> dict[str, Any]:
    def comp(code: str, value: float) -> dict[str, Any]:
        return {"code": {"coding": [{"system": LOINC, "code": code}]},
                "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}

    return {"resourceType": "Observation", "id": "bp1", "status": "final", "subject": {"reference": "Patient/v1"},
            "code": {"coding": [{"system": LOINC, "code": "85354-9",
                                 "display": "Blood pressure panel with all children optional"}]},
            "effectiveDateTime": when, "component": [comp("8480-6", systolic), comp("8462-4", diastolic)]}


def _rules(vignette: dict[str, Any], *extra: dict[str, Any]) -> dict[str, str]:
    rec = build_record(KB, [*build(vignette, TODAY), *extra], today=TODAY)
    return {f.rule: f.severity for f in detect(KB, rec)}


SILDENAFIL_HF = {"person": {"age": 72, "sex": "male"}, "conditions": ["Heart failure"],
                 "meds": ["Sildenafil 50mg tablets", "Furosemide 40mg tablets"]}
UNTREATED = {"person": {"age": 80, "sex": "female"}, "conditions": ["Osteoarthritis"],
             "meds": ["Paracetamol 500mg tablets"]}


def test_a_blood_pressure_panel_is_read_from_its_components() -> None:
    rec = build_record(KB, [*build(SILDENAFIL_HF, TODAY), _bp_panel(84, 52, "2026-11-25")], today=TODAY)
    assert (rec.results["systolic_bp"].value, rec.results["diastolic_bp"].value) == (84, 52)
    assert rec.results["systolic_bp"].ref == "Observation/bp1"
    assert not [u for u in rec.unrecognised if u["reference"] == "Observation/bp1"]


def test_stopp_b13_pde5_inhibitor_in_heart_failure_with_systolic_below_90() -> None:
    assert _rules(SILDENAFIL_HF, _bp_panel(84, 52, "2026-11-25")).get(
        "stopp-b13-pde5-heart-failure-hypotension") == "high"
    assert "stopp-b13-pde5-heart-failure-hypotension" not in _rules(SILDENAFIL_HF, _bp_panel(118, 70, "2026-11-25"))


def test_start_a4_needs_a_raised_pressure_recent_enough_to_act_on() -> None:
    assert _rules(UNTREATED, _bp_panel(176, 88, "2026-11-10")).get("start-a4-antihypertensive-raised-bp") == "moderate"
    assert _rules(UNTREATED, _bp_panel(150, 96, "2026-11-10")).get("start-a4-antihypertensive-raised-bp") == "moderate"
    # a reading from more than a year ago indicates nothing (never an omission raised on a stale value)
    assert "start-a4-antihypertensive-raised-bp" not in _rules(UNTREATED, _bp_panel(176, 88, "2025-10-01"))
    assert "start-a4-antihypertensive-raised-bp" not in _rules(UNTREATED, _bp_panel(150, 84, "2026-11-10"))


def test_stopp_c1_counts_only_long_term_aspirin() -> None:
    person = {"person": {"age": 79, "sex": "male"}, "conditions": ["Ischaemic stroke"]}
    loading = {**person, "meds": [{"text": "Aspirin 300mg dispersible tablets", "dose": "one tablet daily", "days": 7}]}
    assert "dose-aspirin-long-term-stopp-c1" not in _rules(loading)
    long_term = {**person, "meds": [{"text": "Aspirin 300mg dispersible tablets", "dose": "one tablet daily",
                                     "days": 120}]}
    assert _rules(long_term).get("dose-aspirin-long-term-stopp-c1") == "moderate"
