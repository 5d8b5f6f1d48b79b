"""Population conflict screen over its real interfaces: the CLI (CSV/JSON files) and the paged API, through the gate."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from joinedup.conflicts.cli import app
from joinedup.fhir.nhs_number import check_digit

root = typer.Typer()
root.add_typer(app, name="conflicts")
runner = CliRunner()


def _nhs(n: int) -> str:
    """A valid (modulus 11) NHS number in the 999 test range."""
    while True:
        nine = f"999{n:06d}"
        d = check_digit(nine)
        if d is not None:
            return nine + str(d)
        n += 1


def _person(pid: str, practice: str, *, nsaid: bool, nhs: str) -> list[dict[str, Any]]:
    subj = {"reference": f"Patient/{pid}"}
    res: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "birthDate": "1941-05-06",
         "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
         "name": [{"family": "Screen", "given": [pid[-4:]]}],
         "generalPractitioner": [{"reference": f"Organization/{practice}"}]},
        {"resourceType": "Condition", "id": f"{pid}-hf", "subject": subj,
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]}, "code": {"text": "Heart failure"}},
        {"resourceType": "MedicationStatement", "id": f"{pid}-m1", "status": "active", "subject": subj,
         "medicationCodeableConcept": {"text": "Bisoprolol 2.5mg tablets"}},
        # heart failure treated as START A6/A8 (v2) and START B8 (v3, SGLT2 inhibitor) expect, so the person without
        # an NSAID has nothing to flag
        {"resourceType": "MedicationStatement", "id": f"{pid}-m3", "status": "active", "subject": subj,
         "medicationCodeableConcept": {"text": "Ramipril 2.5mg capsules"}},
        {"resourceType": "MedicationStatement", "id": f"{pid}-m4", "status": "active", "subject": subj,
         "medicationCodeableConcept": {"text": "Dapagliflozin 10mg tablets"}},
    ]
    if nsaid:
        res.append({"resourceType": "MedicationStatement", "id": f"{pid}-m2", "status": "active", "subject": subj,
                    "medicationCodeableConcept": {"text": "Naproxen 500mg tablets"}})
    return res


@pytest.fixture()
def population(api, uid) -> dict[str, Any]:
    """Three people at a practice of this test's own (two flagged with a high finding, one not)."""
    org = f"org-screen-{uid}"
    resources = [{"resourceType": "Organization", "id": org, "name": f"Screen Surgery {uid}"}]
    pids = [f"scr-{uid}-{i}" for i in range(3)]
    for i, pid in enumerate(pids):
        resources += _person(pid, org, nsaid=i < 2, nhs=_nhs(i * 7 + 11))
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in resources]}
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    return {"org": org, "name": f"Screen Surgery {uid}", "flagged": pids[:2], "clear": pids[2]}


def _cli(server, *args: str):
    return runner.invoke(root, ["conflicts", "screen", *args], env={"JOINEDUP_DATABASE_URL": server.db_url})


def test_cli_screen_writes_csv_and_json(server, population, tmp_path: Path) -> None:
    out = tmp_path / "screen"
    r = _cli(server, "--out", str(out), "--format", "both", "--practice", population["org"], "-q")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "worklist.csv").open()))
    assert sorted(row["patient"] for row in rows) == sorted(f"Patient/{p}" for p in population["flagged"])
    row = rows[0]
    assert row["practice"] == f"Organization/{population['org']}" and row["practice_name"] == population["name"]
    assert row["nhs_number"].startswith("999") and len(row["nhs_number"]) == 10 and int(row["high"]) >= 1 and row["highest"] == "high"
    assert "ddis-nsaid-heart-failure" in row["rules"]
    practices = list(csv.DictReader((out / "practices.csv").open()))
    assert practices == [{"practice": f"Organization/{population['org']}", "practice_name": population["name"],
                          "screened": "3", "flagged": "2", "critical": practices[0]["critical"],
                          "high": practices[0]["high"], "moderate": practices[0]["moderate"],
                          "low": practices[0]["low"]}]
    doc = json.loads((out / "screen.json").read_text())
    assert doc["screened"] == 3 and doc["flagged"] == 2 and len(doc["worklist"]) == 2
    assert doc["filters"] == {"severity": "low", "practice": population["org"]}


def test_cli_screen_by_practice_name_and_severity(server, population, tmp_path: Path) -> None:
    out = tmp_path / "s2"
    r = _cli(server, "--out", str(out), "--format", "json", "--practice", population["name"], "--severity",
             "critical", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "screen.json").read_text())
    assert doc["screened"] == 3 and doc["flagged"] == 0  # nobody has a critical finding
    assert not (out / "worklist.csv").exists()


def test_cli_screen_bad_input(server, tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = _cli(server, "--out", str(f))
    assert r.exit_code == 2 and "not a directory" in r.output
    r = _cli(server, "--severity", "extreme", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2


def test_api_screen_paged(server, population) -> None:
    with server.client("admin") as c:
        first = c.get("/api/conflicts/screen", params={"severity": "high", "practice": population["org"],
                                                       "_count": 1, "refresh": "true"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["total"] == 2 and body["count"] == 1 and body["next_offset"] == 1 and body["screened"] == 3
        second = c.get("/api/conflicts/screen", params={"severity": "high", "practice": population["org"],
                                                        "_count": 1, "_offset": 1})
        page2 = second.json()
        assert page2["next_offset"] is None and page2["count"] == 1
        got = {body["worklist"][0]["patient"], page2["worklist"][0]["patient"]}
        assert got == {f"Patient/{p}" for p in population["flagged"]}
        assert body["practices"][0]["flagged"] == 2
        bad = c.get("/api/conflicts/screen", params={"severity": "extreme"})
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_api_screen_refused_for_analyst_and_needs_a_token(server) -> None:
    with server.client("analyst") as c:
        r = c.get("/api/conflicts/screen")
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    with server.client(None) as c:
        assert c.get("/api/conflicts/screen").status_code == 401
    with server.client("admin") as c:
        audit = c.get("/fhir/AuditEvent", params={"agent-name": "analyst", "outcome": "8"})
    assert audit.status_code == 200 and audit.json().get("total", 0) >= 1


def test_gp_screen_covers_only_their_registered_people(server, api, uid) -> None:
    """A professional's screen goes through the same relationship rules as every other access."""
    mine = _person(f"scr-gp-{uid}", "practice-1", nsaid=True, nhs=_nhs(101))
    other = _person(f"scr-ot-{uid}", f"org-elsewhere-{uid}", nsaid=True, nhs=_nhs(202))
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                        for r in mine + other]}
    assert api.post("/fhir", json=bundle).status_code == 200
    with server.client("gp") as c:
        r = c.get("/api/conflicts/screen", params={"refresh": "true", "_count": 1000})
    assert r.status_code == 200, r.text
    patients = {row["patient"] for row in r.json()["worklist"]}
    assert f"Patient/scr-gp-{uid}" in patients and f"Patient/scr-ot-{uid}" not in patients
