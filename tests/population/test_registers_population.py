"""The registers, care processes and risk bands of a whole population in SQL (`registers.population`, DuckDB over the
SQL on FHIR views) give the same answers as the person view (`risk.facts.build`, `registers.engine`,
`risk.scores`), register by register and person by person: on the synthetic ICS (whose ground truth lists who should
be on each register, from its planted coded conditions and the QOF age rules) and on the Synthea export. The rules
compared are those of knowledge/population/registers.yaml (QOF business rules v49 registers, NICE NG28/NG106/NG203
and QOF care-process intervals) and risk.yaml (eFI, Clegg et al. 2016; Cambridge Multimorbidity Score, Payne et al.
2020)."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.population.cost import people
from joinedup.population.registers import engine, population
from joinedup.population.risk import facts as F
from joinedup.population.risk import scores

SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "synthea-10-patients"
SCT = "http://snomed.info/sct"


def _records(folder: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each Patient with the entries whose subject references them, in file order (files sorted by name)."""
    patients: dict[str, dict[str, Any]] = {}
    items: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if not path.name.endswith((".ndjson", ".ndjson.gz")) or not path.name[0].isupper():  # resource files
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                if r["resourceType"] == "Patient":
                    patients[r["id"]] = r
                    continue
                ref = (r.get("subject") or {}).get("reference") or ""
                if ref.startswith("Patient/"):
                    items[ref[8:]].append(r)
    return [(p, items[pid]) for pid, p in patients.items()]


def _person_view(patient: dict[str, Any], items: list[dict[str, Any]], today: date) -> dict[str, Any]:
    facts = F.build(patient, items)
    frailty = scores.efi(facts, today)
    regs = engine.registers_of(facts, today, frailty=frailty)
    return {"practice": facts.practice, "deceased": facts.deceased, "age": facts.age_on(today),
            "efi": frailty["value"], "efi_category": frailty["category"], "efi_applies": frailty["applies"],
            "cms": scores.cambridge(facts, today)["score"], "regular_medicines": len(facts.medicines),
            "registers": {r["register"]: {p["process"]: (p["status"], p["last_done"], p["due_by"])
                                          for p in engine.care_processes(facts, r["register"], today)}
                          for r in regs}}


def _population_view(got: dict[str, Any]) -> dict[str, Any]:
    def iso(d: date | None) -> str | None:
        return d.isoformat() if d is not None else None

    return {"practice": got["practice"], "deceased": got["deceased"], "age": got["age"], "efi": got["efi"],
            "efi_category": got["efi_category"], "efi_applies": got["efi_applies"], "cms": got["cms"],
            "regular_medicines": got["regular_medicines"],
            "registers": {rid: {p: (v["status"], iso(v["last_done"]), iso(v["due_by"])) for p, v in procs.items()}
                          for rid, procs in got["registers"].items()}}


def _compare(folder: Path, today: date) -> dict[str, dict[str, Any]]:
    records = _records(folder)
    with population.Population(folder, today) as pop:
        got = pop.people()
    assert set(got) == {p["id"] for p, _ in records}
    for patient, items in records:
        expected = _person_view(patient, items, today)
        mine = _population_view(got[patient["id"]])
        for rid in set(expected["registers"]) | set(mine["registers"]):  # register by register
            assert mine["registers"].get(rid) == expected["registers"].get(rid), (patient["id"], rid)
        assert mine == expected, patient["id"]
    return got


def test_population_sql_matches_the_person_view_on_the_synthetic_ics(tmp_path):
    out = tmp_path / "ics"
    r = CliRunner().invoke(app, ["generate", "--patients", "300", "--seed", "18", "--out", str(out)])
    assert r.exit_code == 0, r.output
    today = date.fromisoformat(json.loads((out / "manifest.json").read_text())["today"])
    got = _compare(out, today)
    # and both reproduce the generator's ground truth (its planted registers), the dead left out as the tallies do
    expected: dict[str, set[str]] = defaultdict(set)
    for line in (out / "ground-truth.ndjson").read_text().splitlines():
        t = json.loads(line)
        if t["kind"] == "register":
            expected[t["register"]].add(t["patient"].removeprefix("Patient/"))
    on: dict[str, set[str]] = defaultdict(set)
    for pid, person in got.items():
        if not person["deceased"]:
            for rid in person["registers"]:
                on[rid].add(pid)
    assert {"diabetes", "hypertension"} <= set(expected)
    for rid, members in expected.items():
        assert on[rid] == members, rid
    statuses = {p["status"] for person in got.values() for procs in person["registers"].values()
                for p in procs.values()}
    assert {"done", "overdue"} <= statuses


def test_population_sql_matches_the_person_view_on_synthea(tmp_path):
    # as at a date after the export's latest encounter (2023-03-22); 13 Patient resources (its README)
    got = _compare(SYNTHEA, date(2023, 6, 30))
    assert len(got) == 13 and any(person["registers"] for person in got.values())


class _Stored:
    def __init__(self, content: dict[str, Any]) -> None:
        self.id, self.content = content["id"], content


def _cond(pid: str, rid: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": rid, "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"coding": [{"system": SCT, "code": code}]}}


def _med(rtype: str, rid: str, code: str, name: str) -> dict[str, Any]:
    return {"resourceType": rtype, "id": rid, "status": "active", "intent": "order",
            "subject": {"reference": "Patient/m"},
            "medicationCodeableConcept": {"coding": [{"system": SCT, "code": code, "display": name}]}}


def test_summarise_counts_a_linked_records_entries_for_the_person_and_medicines_as_the_person_view(tmp_path):
    today = date(2026, 6, 30)
    gp = {"generalPractitioner": [{"reference": "Organization/prac"}]}
    # a Condition recorded under the person's linked social care record (its subject is the other Patient) is in
    # the person's record as the gate hands it over: 44054006 type 2 diabetes, QOF DM register from age 17
    # and so is an HbA1c (LOINC 4548-4) of 3 months ago: done (NICE NG28, National Diabetes Audit: every 12 months)
    hba1c = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1-social"},
             "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}, "effectiveDateTime": "2026-03-30"}
    linked = ({"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", **gp},
              [_cond("p1-social", "c1", "44054006"), hba1c])
    # one medicine (code A) recorded by another organisation under code B with the same name: counted once; B's
    # statement under another name is then counted as another medicine (facts.build, in the order recorded)
    meds = ({"resourceType": "Patient", "id": "m", "birthDate": "1950-01-01", **gp},
            [_med("MedicationRequest", "r1", "111", "Metformin 500mg tablets"),
             _med("MedicationRequest", "r2", "222", "Metformin 500mg tablets"),
             _med("MedicationStatement", "s1", "222", "Metformin 500 mg modified-release tablets")])
    records = [(_Stored(p), [_Stored(i) for i in items]) for p, items in (linked, meds)]
    folder = tmp_path / "files"
    folder.mkdir()
    tally = people.summarise(records, folder, today, {"prac": "A81001"})
    expected = {p["id"]: _person_view(p, items, today) for p, items in (linked, meds)}
    assert "diabetes" in expected["p1"]["registers"] and expected["m"]["regular_medicines"] == 2
    assert tally.people == {"A81001": 2}
    assert tally.registers == {"A81001": {"diabetes": 1}}
    assert tally.processes["A81001"]["diabetes|hba1c|done"] == 1
    assert tally.risk["A81001"]["regular_medicines|0-4"] == 2
    with population.Population(folder, today, owners=folder / population.OWNERS_FILE) as pop:
        got = {pid: _population_view(v) for pid, v in pop.people().items()}
    assert got == expected
