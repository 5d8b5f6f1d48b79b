"""Immunization records in the conflicts engine (START v3 section L, vaccines): the FHIR R4 Immunization examples
(hl7.org/fhir/R4/immunization-example.json and immunization-example-refused.json, copied unchanged from the 4.0.1
publication mirror fhir-ru/fhir-ru.github.io @73deef6, CC0) and the real Synthea export in tests/data are read into
the person's facts: status completed / not-done / entered-in-error, occurrenceDateTime, vaccineCode (CVX or text),
isSubpotent and statusReason. A record without any immunisation history raises no vaccine omission."""

from __future__ import annotations

import gzip
import json
from datetime import date
from pathlib import Path
from typing import Any

from joinedup.conflicts.detect import build_record, detect
from joinedup.conflicts.knowledge import load_knowledge
from joinedup.conflicts.service import detect_findings

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "fhir-r4-examples"
SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "synthea-10-patients" / "Immunization.000.ndjson.gz"
KB = load_knowledge()
TODAY = date(2013, 6, 1)
VACCINE_RULES = {"start-v3-l1-influenza-vaccine", "start-v3-l2-pneumococcal-vaccine", "start-v3-l3-zoster-vaccine",
                 "start-v3-l4-covid-vaccine"}


def _example(name: str) -> dict[str, Any]:
    res: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    res["patient"] = {"reference": "Patient/p1"}
    return res


def _person(age: int, *resources: dict[str, Any]) -> list[dict[str, Any]]:
    born = date(TODAY.year - age, 1, 1).isoformat()
    return [{"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": born}, *resources]


def _rules(resources: list[dict[str, Any]], today: date = TODAY) -> set[str]:
    return {f.rule for f in detect(KB, build_record(KB, resources, today=today))}


def test_completed_example_is_read_with_its_date_but_a_subpotent_dose_does_not_count() -> None:
    res = _example("immunization-example.json")  # Fluvax (Influenza), completed, 2013-01-10, isSubpotent
    rec = build_record(KB, _person(70, res), today=TODAY)
    assert rec.immunization_history
    assert "influenza" not in rec.immunizations  # subpotent: not a protective dose
    potent = {**res, "isSubpotent": False}
    rec = build_record(KB, _person(70, potent), today=TODAY)
    assert rec.immunizations["influenza"] == [("2013-01-10", "Immunization/example")]
    assert rec.facts["Immunization/example"]["what"] == "immunisation: Fluvax (Influenza)"
    assert "start-v3-l1-influenza-vaccine" not in _rules(_person(70, potent))
    # a year and more later the same dose no longer meets "annually"
    assert "start-v3-l1-influenza-vaccine" in _rules(_person(70, potent), today=date(2014, 3, 1))


def test_not_done_example_is_history_not_a_dose() -> None:
    refused = _example("immunization-example-refused.json")  # DTP, not-done, MEDPREC
    rec = build_record(KB, _person(70, refused), today=TODAY)
    assert rec.immunization_history and rec.immunizations == {}
    # DTP is none of the section L vaccines, so its precaution precludes nothing: all four omissions stand at 72
    assert VACCINE_RULES <= _rules(_person(72, refused))


def test_not_done_for_a_medical_precaution_precludes_that_vaccine_only() -> None:
    flu_medprec = {"resourceType": "Immunization", "id": "f1", "status": "not-done",
                   "statusReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                "code": "MEDPREC"}]},
                   "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
                   "patient": {"reference": "Patient/p1"}, "occurrenceDateTime": "2013-01-10"}
    found = _rules(_person(72, flu_medprec))
    assert "start-v3-l1-influenza-vaccine" not in found
    assert "start-v3-l2-pneumococcal-vaccine" in found
    declined = {**flu_medprec, "statusReason": {"coding": [{"code": "PATOBJ"}]}}  # the person declined: offer again
    assert "start-v3-l1-influenza-vaccine" in _rules(_person(72, declined))


def test_entered_in_error_and_no_history_raise_nothing() -> None:
    wrong = {**_example("immunization-example.json"), "status": "entered-in-error"}
    assert not (VACCINE_RULES & _rules(_person(80, wrong)))
    assert not (VACCINE_RULES & _rules(_person(80)))  # no Immunization at all: not vaccinated cannot be told


def test_under_65_raises_no_vaccine_omission() -> None:
    refused = _example("immunization-example-refused.json")
    assert not (VACCINE_RULES & _rules(_person(64, refused)))


def test_synthea_immunizations_are_recognised_by_cvx() -> None:
    with gzip.open(SYNTHEA, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    by_code: dict[str, str | None] = {}
    for r in rows:
        rec = build_record(KB, [r], today=date(2024, 1, 1))
        code = r["vaccineCode"]["coding"][0]["code"]
        by_code[code] = next(iter(rec.immunizations), None)
    assert by_code["140"] == "influenza"
    assert by_code["33"] == "pneumococcal"
    assert by_code["121"] == "zoster"
    assert by_code["207"] == by_code["208"] == by_code["212"] == "sars_cov_2"
    # childhood and travel vaccines are none of these (varicella is not the zoster vaccine)
    assert by_code["21"] is None and by_code["113"] is None and by_code["62"] is None


def test_public_service_reads_immunizations_and_suggests_the_vaccine() -> None:
    today = date.today()
    flu = {"resourceType": "Immunization", "id": "i1", "status": "completed", "patient": {"reference": "Patient/p1"},
           "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140",
                                       "display": "Influenza, seasonal, injectable, preservative free"}]},
           "occurrenceDateTime": date(today.year - 2, today.month, 1).isoformat()}
    person = [{"resourceType": "Patient", "id": "p1", "gender": "male",
               "birthDate": date(today.year - 75, 1, 1).isoformat()}, flu]
    found = {f["rule"]: f for f in detect_findings(resources=person)["findings"]}
    f = found["start-v3-l1-influenza-vaccine"]
    assert f["kind"] == "omission" and f["severity"] == "low" and f["verified"] is False
    assert f["suggest"] == {"action": "add", "vaccine": "influenza", "display": "seasonal influenza vaccine"}
    assert "Immunization/i1" in f["involves"]
    assert any(w["ref"] == "Immunization/i1" for w in f["why_now"])
