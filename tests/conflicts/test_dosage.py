"""Dose checks: structured FHIR Dosage and UK free-text directions, and the dose findings reported by
`joinedup conflicts check FILE --format json`.

Expectations come from the sources: FHIR R4 Dosage/Timing (frequency per period, dayOfWeek, timing codes), the BNF
paracetamol maximum (4 g a day), MHRA Drug Safety Update September 2020 (methotrexate once weekly, never daily), MHRA DSU
December 2011 (citalopram maximum 20 mg a day over 65), MHRA DSU July 2012 / October 2019 (dabigatran contraindicated
below CrCl 30 mL/min; CrCl by Cockcroft-Gault for DOACs) and the Glucophage SmPC renal table (GFR 30-44: max 1000 mg).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.conflicts.dosage import parse_directions, parse_dosage

LOINC = "http://loinc.org"


# -- directions ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,per_day,days_a_week,as_needed", [
    ("1 tablet twice a day", 2, 7, False),
    ("two 500mg tablets four times daily", 4000, 7, False),     # mg: 2 x 500 mg, 4 times
    ("10mg weekly on Mondays", 10, 1, False),
    ("1-2 tablets up to four times a day when required", 8, 7, True),
    ("Take ONE tablet each morning", 1, 7, False),
    ("one or two every 4-6 hours max 8 in 24 hours", 8, 7, False),
    ("5ml three times a day", 15, 7, False),
    ("20mg at night", 20, 7, False),
    ("Take 4 tablets once a week on Friday", 4, 1, False),
    ("one tablet on alternate days", 1, 3.5, False),
    ("Every four to six hours (qualifier value)", 6, 7, False),   # SNOMED 225757006 text as Synthea writes it
])
def test_free_text_directions(text: str, per_day: float, days_a_week: float, as_needed: bool) -> None:
    s = parse_directions(text)
    assert s is not None
    assert s.max_units_per_day() == pytest.approx(per_day)
    assert s.days_per_week() == pytest.approx(days_a_week)
    assert s.as_needed is as_needed


def test_unreadable_directions() -> None:
    assert parse_directions("as directed by the clinic") is None


def test_structured_dosage_frequency_period_and_day_of_week() -> None:
    qds = parse_dosage({"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "tablet"}}],
                        "timing": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}}})
    assert qds.max_units_per_day() == 8 and qds.days_per_week() == 7
    weekly = parse_dosage({"doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
                           "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                                 "dayOfWeek": ["mon"]}}})
    assert weekly.max_units_per_day() == 10 and weekly.days_per_week() == 1 and weekly.unit == "mg"
    every_6h = parse_dosage({"doseAndRate": [{"doseRange": {"low": {"value": 1}, "high": {"value": 2}}}],
                             "timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
                             "asNeededBoolean": True})
    assert every_6h.max_units_per_day() == 8 and every_6h.as_needed
    bid = parse_dosage({"doseAndRate": [{"doseQuantity": {"value": 1, "unit": "g"}}],
                        "timing": {"code": {"coding": [{"code": "BID"}]}}})
    assert bid.max_units_per_day() == 2000  # 1 g twice a day, in mg
    capped = parse_dosage({"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "tablet"}}],
                           "timing": {"repeat": {"frequency": 6, "period": 1, "periodUnit": "d"}},
                           "maxDosePerPeriod": {"numerator": {"value": 8, "unit": "tablet"},
                                                "denominator": {"value": 1, "unit": "d"}}})
    assert capped.max_units_per_day() == 8


def test_text_fills_what_the_structure_leaves_out() -> None:
    s = parse_dosage({"text": "Take 2.5mg once weekly on Wednesdays"})
    assert s.days_of_week == ("wed",) and s.days_per_week() == 1 and s.max_units_per_day() == 2.5


def test_synthea_structured_dosage_gives_the_daily_dose() -> None:
    from joinedup.conflicts.detect import build_record
    from joinedup.conflicts.knowledge import load_knowledge
    from tests.conftest import sample_lines

    lines = [json.loads(x) for x in sample_lines("MedicationRequest")]
    tylenol = [r for r in lines if r["status"] == "active" and "Tylenol" in r["medicationCodeableConcept"]["text"]]
    assert tylenol
    [m] = build_record(load_knowledge(), tylenol[:1]).meds
    # doseQuantity 1 (tablet) x timing.repeat frequency 4 per 1 d, Acetaminophen 325 MG Oral Tablet
    assert m.dose.mg_per_day == {"paracetamol": 1300.0} and m.dose.days_per_week == 7


# -- findings through the CLI ------------------------------------------------------------------------------------------
def _bundle(tmp_path: Path, resources: list[dict], name: str = "b.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                             "entry": [{"resource": r} for r in resources]}))
    return p


def _patient(birth: str = "1950-01-01", sex: str = "female") -> dict:
    return {"resourceType": "Patient", "id": "p", "birthDate": birth, "gender": sex}


def _med(i: str, text: str, directions: str | None = None, source: str = "", dosage: dict | None = None) -> dict:
    r = {"resourceType": "MedicationRequest", "id": i, "status": "active", "intent": "order",
         "subject": {"reference": "Patient/p"}, "medicationCodeableConcept": {"text": text},
         "authoredOn": "2026-11-01"}
    if source:
        r["meta"] = {"source": source}
    if directions or dosage:
        r["dosageInstruction"] = [dosage or {"text": directions}]
    return r


def _obs(i: str, code: str, value: float, unit: str, when: str = "2026-11-20") -> dict:
    return {"resourceType": "Observation", "id": i, "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "valueQuantity": {"value": value, "unit": unit},
            "effectiveDateTime": when}


def _check(tmp_path: Path, resources: list[dict]) -> dict:
    result = CliRunner().invoke(app, ["conflicts", "check", str(_bundle(tmp_path, resources)), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _dose(out: dict, rule: str) -> list[dict]:
    return [f for f in out["findings"] if f["rule"] == rule]


def test_paracetamol_across_two_products_above_4g(tmp_path: Path) -> None:
    out = _check(tmp_path, [_patient(), _med("a", "Paracetamol 500mg tablets", "2 tablets four times a day"),
                            _med("b", "Co-codamol 30mg/500mg tablets",
                                 "1-2 tablets up to four times a day when required")])
    [f] = _dose(out, "dose-paracetamol-max-daily")
    assert f["kind"] == "dose" and f["severity"] == "high"
    assert f["involves"] == ["MedicationRequest/a", "MedicationRequest/b"]
    assert "8000 mg" in f["summary"] and f["sources"]
    assert all("reference" in u for u in out["unrecognised"])  # existing output fields kept


def test_paracetamol_at_4g_from_one_product_is_within_the_limit(tmp_path: Path) -> None:
    out = _check(tmp_path, [_patient(), _med("a", "Paracetamol 500mg tablets", "two tablets four times a day")])
    assert not _dose(out, "dose-paracetamol-max-daily")


def test_the_same_paracetamol_recorded_by_gp_and_hospital_counts_once(tmp_path: Path) -> None:
    out = _check(tmp_path, [_patient(), _med("gp", "Paracetamol 500mg tablets", "2 tablets four times a day",
                                             source="gp"),
                            _med("h", "Paracetamol 500mg tablets", "2 tablets four times a day", source="hospital")])
    assert not _dose(out, "dose-paracetamol-max-daily")


def test_methotrexate_daily_is_critical_weekly_is_not(tmp_path: Path) -> None:
    out = _check(tmp_path, [_patient(), _med("m", "Methotrexate 2.5mg tablets", "10mg daily")])
    [f] = _dose(out, "dose-methotrexate-weekly-only")
    assert f["severity"] == "critical" and f["involves"] == ["MedicationRequest/m"]
    for directions in ("10mg weekly on Mondays", "Take 4 tablets once a week on Friday"):
        assert not _dose(_check(tmp_path, [_patient(), _med("m", "Methotrexate 2.5mg tablets", directions)]),
                         "dose-methotrexate-weekly-only")
    structured = {"doseAndRate": [{"doseQuantity": {"value": 4, "unit": "tablet"}}],
                  "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}
    assert _dose(_check(tmp_path, [_patient(), _med("m", "Methotrexate 2.5mg tablets", dosage=structured)]),
                 "dose-methotrexate-weekly-only")


def test_citalopram_over_65(tmp_path: Path) -> None:
    older = _check(tmp_path, [_patient("1950-01-01"), _med("c", "Citalopram 40mg tablets", "one tablet daily")])
    assert [f["severity"] for f in _dose(older, "dose-citalopram-over-65")] == ["high"]
    younger = _check(tmp_path, [_patient("1975-01-01"), _med("c", "Citalopram 40mg tablets", "one tablet daily")])
    assert not _dose(younger, "dose-citalopram-over-65") and not _dose(younger, "dose-citalopram-adult-max")
    at_max = _check(tmp_path, [_patient("1950-01-01"), _med("c", "Citalopram 20mg tablets", "one tablet daily")])
    assert not _dose(at_max, "dose-citalopram-over-65")


def test_dabigatran_below_crcl_30_by_cockcroft_gault(tmp_path: Path) -> None:
    # woman aged 80, 60 kg, creatinine 2.26 mg/dL (200 umol/L): CrCl = 60 x 60 x 1.04 / 200 = 18.7 mL/min
    res = [_patient("1946-01-01"), _med("d", "Dabigatran etexilate 110mg capsules", "one capsule twice a day"),
           _obs("cr", "2160-0", 2.26, "mg/dL"), _obs("wt", "29463-7", 60, "kg")]
    [f] = _dose(_check(tmp_path, res), "dose-dabigatran-renal")
    assert f["severity"] == "high" and "Cockcroft-Gault" in f["summary"]
    assert f["involves"] == ["MedicationRequest/d", "Observation/cr", "Observation/wt"]
    # creatinine 80 umol/L: CrCl 47 mL/min - no finding
    res[2] = _obs("cr", "14682-9", 80, "umol/L")
    assert not _dose(_check(tmp_path, res), "dose-dabigatran-renal")


def test_old_renal_result_does_not_drive_a_dose_finding(tmp_path: Path) -> None:
    res = [_patient("1946-01-01"), _med("d", "Dabigatran etexilate 110mg capsules", "one capsule twice a day"),
           _obs("cr", "2160-0", 2.26, "mg/dL", when="2019-01-01"), _obs("wt", "29463-7", 60, "kg", when="2019-01-01")]
    assert not _dose(_check(tmp_path, res), "dose-dabigatran-renal")


def test_metformin_dose_against_egfr(tmp_path: Path) -> None:
    two_g = _med("m", "Metformin 500mg tablets", "2 tablets twice a day")
    out = _check(tmp_path, [_patient(), two_g, _obs("e", "33914-3", 35, "mL/min/{1.73_m2}")])
    [f] = _dose(out, "dose-metformin-renal")
    assert f["severity"] == "moderate" and "2000 mg/day" in f["summary"]
    one_g = _med("m", "Metformin 500mg tablets", "1 tablet twice a day")
    assert not _dose(_check(tmp_path, [_patient(), one_g, _obs("e", "33914-3", 35, "mL/min/{1.73_m2}")]),
                     "dose-metformin-renal")
    # below 30 metformin is contraindicated at any dose (SmPC 4.2; NICE NG28): one high finding, raised by the
    # drug-result rule that also asks for a repeat test when the eGFR is old (the dose band defers to it)
    below = _check(tmp_path, [_patient(), one_g, _obs("e", "33914-3", 25, "mL/min/{1.73_m2}")])
    [f] = [x for x in below["findings"] if x["rule"] in ("dose-metformin-renal", "dr-metformin-egfr-30")]
    assert f["rule"] == "dr-metformin-egfr-30" and f["severity"] == "high"


def test_metformin_at_egfr_30_44_is_one_finding_not_two(tmp_path: Path) -> None:
    """The dose rule and the "dose review" rule described the same situation (metformin at a GFR of 30-44): a line
    whose directions can be read is judged against the 1000 mg maximum only; one without directions still gets the
    dose review."""
    egfr = _obs("e", "33914-3", 38, "mL/min/{1.73_m2}")
    metformin_rules = ("dose-metformin-renal", "dr-metformin-egfr-45", "dr-metformin-egfr-30")
    two_g = _check(tmp_path, [_patient(), _med("m", "Metformin 500mg tablets", "2 tablets twice a day"), egfr])
    assert [x["rule"] for x in two_g["findings"] if x["rule"] in metformin_rules] == ["dose-metformin-renal"]
    one_g = _check(tmp_path, [_patient(), _med("m", "Metformin 500mg tablets", "1 tablet twice a day"), egfr])
    assert [x["rule"] for x in one_g["findings"] if x["rule"] in metformin_rules] == []
    unknown = _check(tmp_path, [_patient(), _med("m", "Metformin 500mg tablets"), egfr])
    assert [x["rule"] for x in unknown["findings"] if x["rule"] in metformin_rules] == ["dr-metformin-egfr-45"]
    # the proposal corrects the dose of the 2 g line rather than stopping metformin (eGFR is above 30)
    acts = {c["action"] for c in two_g["resolution"]["changes"] if c["target"] == "MedicationRequest/m"}
    assert "adjust-dose" in acts and "stop" not in acts


def test_resolution_corrects_a_dose_rather_than_leaving_the_finding(tmp_path: Path) -> None:
    out = _check(tmp_path, [_patient(), _med("c", "Citalopram 40mg tablets", "one tablet daily")])
    actions = {(c["action"], c["target"]) for c in out["resolution"]["changes"]}
    assert actions & {("adjust-dose", "MedicationRequest/c"), ("stop", "MedicationRequest/c")}
    assert not [r for r in out["resolution"]["residual"] if r["rule"] == "dose-citalopram-over-65"]
