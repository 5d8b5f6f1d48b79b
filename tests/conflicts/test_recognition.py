"""Recognition across dm+d, RxNorm, SNOMED, ICD-10 and free text, using the real Synthea sample."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from joinedup.conflicts.detect import recognise_medicine
from joinedup.conflicts.knowledge import load_knowledge, recognise_condition_text, recognise_medicine_text
from joinedup.conflicts.service import check_record
from tests.conftest import sample_lines


@pytest.mark.parametrize("text,expected", [
    ("Naproxen 500mg tablets", {"naproxen"}),
    ("lisinopril 10 MG Oral Tablet", {"lisinopril"}),
    ("co-amilofruse 5mg/40mg tablets", {"amiloride", "furosemide"}),
    ("Co-codamol 30mg/500mg tablets", {"codeine", "paracetamol"}),
    ("Amlodipine / Olmesartan", {"amlodipine", "olmesartan"}),
    ("lisinopril 10 MG / hydrochlorothiazide 12.5 MG Oral Tablet", {"lisinopril", "hydrochlorothiazide"}),
    ("Metformin 500mg modified-release tablets", {"metformin"}),
    ("Omeprazole 20mg gastro-resistant capsules", {"omeprazole"}),
    ("Fostair 100micrograms/dose / 6micrograms/dose inhaler", {"beclometasone", "formoterol"}),
    ("Adcal-D3 chewable tablets", {"calcium_carbonate", "colecalciferol"}),
    ("Diclofenac sodium 50mg gastro-resistant tablets", {"diclofenac"}),
    ("Voltarol 1.16% Emulgel", {"diclofenac_topical"}),
    # dm+d device wording is packaging, not a second ingredient
    ("Tiotropium bromide 18microgram inhalation powder capsules with device", {"tiotropium"}),
    ("Tiotropium bromide 2.5micrograms/dose solution for inhalation cartridge with device CFC free", {"tiotropium"}),
    ("Colecalciferol 400unit / Calcium carbonate 1.5g chewable tablets", {"colecalciferol", "calcium_carbonate"}),
])
def test_free_text_medicines(text: str, expected: set[str]) -> None:
    ings, missing = recognise_medicine_text(load_knowledge(), text)
    assert set(ings) == expected and not missing


def test_unknown_text_is_reported_not_ignored() -> None:
    ings, missing = recognise_medicine_text(load_knowledge(), "Foobarol 10mg tablets")
    assert not ings and missing


@pytest.mark.parametrize("system,code,expected", [
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "314076", {"lisinopril"}),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "860975", {"metformin"}),
    ("https://dmd.nhs.uk", "36409011000001100", {"diclofenac"}),
    ("http://snomed.info/sct", "36408911000001109", {"diclofenac"}),
])
def test_coded_medicines(system: str, code: str, expected: set[str]) -> None:
    ings, _ = recognise_medicine(load_knowledge(), {"coding": [{"system": system, "code": code}]})
    assert set(ings) == expected


def test_dmd_display_falls_back_to_text() -> None:
    concept = {"coding": [{"system": "https://dmd.nhs.uk", "code": "999999999", "display": "Ramipril 5mg capsules"}]}
    assert set(recognise_medicine(load_knowledge(), concept)[0]) == {"ramipril"}


@pytest.mark.parametrize("text,key", [
    ("Essential hypertension (disorder)", "hypertension"),
    ("Chronic kidney disease stage 3 (disorder)", "ckd"),
    ("Type 2 diabetes mellitus", "type2_diabetes"),
    ("Family history of diabetes", None),
    ("No history of asthma", None),
    ("Full-time employment (finding)", None),
])
def test_condition_text(text: str, key: str | None) -> None:
    assert recognise_condition_text(load_knowledge(), text) == key


def _synthea_people() -> dict[str, list[dict]]:
    people: dict[str, list[dict]] = defaultdict(list)
    for name in ["Patient", "Condition", "MedicationRequest", "AllergyIntolerance"]:
        for line in sample_lines(name):
            r = json.loads(line)
            ref = f"Patient/{r['id']}" if name == "Patient" else (r.get("subject") or r.get("patient"))["reference"]
            people[ref].append(r)
    return people


def test_synthea_medicines_all_recognised() -> None:
    kb = load_knowledge()
    seen = {}
    for line in sample_lines("MedicationRequest"):
        cc = json.loads(line)["medicationCodeableConcept"]
        seen[cc["coding"][0]["code"]] = cc
    missing = [cc["text"] for cc in seen.values() if not recognise_medicine(kb, cc)[0]]
    assert not missing, missing
    # text alone (codes removed) recognises them too
    text_missing = [cc["text"] for cc in seen.values() if not recognise_medicine_text(kb, cc["text"])[0]]
    assert not text_missing, text_missing


def test_synthea_people_check_end_to_end() -> None:
    people = _synthea_people()
    assert len(people) >= 10
    conditions_seen: set[str] = set()
    for ref, resources in people.items():
        out = check_record(resources=resources)
        assert out["patient"] == ref
        for u in out["unrecognised"]:
            assert u["reference"] and u["reason"]
        for f in out["findings"]:
            assert f["involves"] and all("/" in i for i in f["involves"])
        kb = load_knowledge()
        from joinedup.conflicts.detect import build_record
        conditions_seen |= set(build_record(kb, resources).conditions)
    assert {"hypertension", "type2_diabetes", "ckd", "osteoporosis", "ihd"} <= conditions_seen
