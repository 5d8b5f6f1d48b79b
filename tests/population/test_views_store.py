"""`joinedup views run --source store`: views over the shared record read through the governance gate, as each role.

The integration account and clinicians work in direct care (a clinician sees only the people they have a
legitimate relationship with; the National Data Opt-out does not apply to direct care); a secondary purpose
excludes people who opted out; an analyst gets de-identified records only (pseudonyms, no free text, dates to the
month, opt-outs excluded) with suppressed counts. Data are written over HTTP (the API), the views run through the
root CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance import deid
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM

SNOMED = "http://snomed.info/sct"
# SNOMED CT 44054006 |Diabetes mellitus type 2 (disorder)|, 38341003 |Hypertensive disorder, systemic arterial|
CONDITION_VIEW = {
    "resourceType": "ViewDefinition", "name": "conditions", "status": "active", "resource": "Condition",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "string"},
        {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
        {"name": "snomed", "path": "code.coding.where(system = 'http://snomed.info/sct').code.first()",
         "type": "code"},
        {"name": "recorded", "path": "recordedDate", "type": "dateTime"},
        {"name": "note", "path": "note.text.first()", "type": "string"},
    ]}]}
PATIENT_VIEW = {"resource": "Patient", "select": [{"column": [
    {"name": "id", "path": "getResourceKey()"}, {"name": "family", "path": "name.family.first()"},
    {"name": "birth", "path": "birthDate", "type": "date"}]}]}


def _person(api, pid: str, practice: str, *, opted_out: bool = False) -> None:
    r = api.put(f"/fhir/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1948-07-21",
        "name": [{"family": f"Family{pid}", "given": ["Ada"]}],
        "generalPractitioner": [{"reference": f"Organization/{practice}"}]})
    assert r.status_code in (200, 201), r.text
    for code in ("44054006", "38341003"):
        r = api.post("/fhir/Condition", json={
            "resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"}, "recordedDate": "2021-03-14",
            "code": {"coding": [{"system": SNOMED, "code": code}]},
            "note": [{"text": f"Lives with daughter {pid}"}]})
        assert r.status_code == 201, r.text
    if opted_out:
        r = api.post("/fhir/Consent", json={
            "resourceType": "Consent", "status": "active",
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "research"}]},
            "policyRule": {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE}]},
            "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "deny"}})
        assert r.status_code == 201, r.text


@pytest.fixture()
def people(api, uid) -> dict[str, str]:
    """Two people registered at the gp's practice (one opted out of secondary use) and one elsewhere."""
    ids = {"mine": f"vw-mine-{uid}", "out": f"vw-out-{uid}", "far": f"vw-far-{uid}"}
    _person(api, ids["mine"], "practice-1")
    _person(api, ids["out"], "practice-1", opted_out=True)
    _person(api, ids["far"], f"elsewhere-{uid}")
    return ids


def run(server, tmp_path, view: dict, *args: str, out: str = "out.ndjson"):
    path = tmp_path / "view.json"
    path.write_text(json.dumps(view))
    result = CliRunner().invoke(app, ["views", "run", str(path), "--source", "store", "--out",
                                      str(tmp_path / out), *args],
                                env={"JOINEDUP_DATABASE_URL": server.db_url, "JOINEDUP_SECRET_KEY": "test-secret"})
    rows = None
    if result.exit_code == 0 and (tmp_path / out).suffix == ".ndjson":
        rows = [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]
    return result, rows


def test_integration_account_sees_everyone_in_direct_care(server, people, tmp_path):
    result, rows = run(server, tmp_path, CONDITION_VIEW)
    assert result.exit_code == 0, result.output
    assert "purpose case-finding, read through the governance gate" in result.output
    by_patient: dict[str, list] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], []).append(r)
    for pid in people.values():  # the opted-out person too: direct care is not affected by the opt-out
        assert sorted(r["snomed"] for r in by_patient[pid]) == ["38341003", "44054006"]
        assert all(r["recorded"] == "2021-03-14" and r["note"] == f"Lives with daughter {pid}"
                   for r in by_patient[pid])


def test_secondary_purpose_excludes_opt_outs(server, people, tmp_path):
    result, rows = run(server, tmp_path, CONDITION_VIEW, "--purpose", "planning")
    assert result.exit_code == 0, result.output
    assert "National Data Opt-out applied" in result.output
    patients = {r["patient"] for r in rows}
    assert people["mine"] in patients and people["far"] in patients and people["out"] not in patients


def test_clinician_sees_only_people_they_care_for(server, people, tmp_path):
    result, rows = run(server, tmp_path, CONDITION_VIEW, "--as", "gp")
    assert result.exit_code == 0, result.output
    patients = {r["patient"] for r in rows}
    assert {people["mine"], people["out"]} <= patients  # registered at the gp's practice
    assert people["far"] not in patients  # no relationship
    result, rows = run(server, tmp_path, PATIENT_VIEW, "--as", "gp", out="p.ndjson")
    ids = {r["id"] for r in rows}
    assert people["mine"] in ids and people["far"] not in ids


def test_analyst_gets_de_identified_rows_without_opt_outs(server, people, tmp_path):
    result, rows = run(server, tmp_path, CONDITION_VIEW, "--as", "analyst")
    assert result.exit_code == 0, result.output
    assert "de-identified" in result.output and "suppressed" in result.output
    pseudo = deid.Pseudonymiser("test-secret")
    patients = {r["patient"] for r in rows}
    assert pseudo(f"Patient/{people['mine']}") in patients and pseudo(f"Patient/{people['far']}") in patients
    assert pseudo(f"Patient/{people['out']}") not in patients
    blob = json.dumps(rows)
    for pid in people.values():
        assert pid not in blob  # no real id, and no free text that carries it
    mine = [r for r in rows if r["patient"] == pseudo(f"Patient/{people['mine']}")]
    assert sorted(r["snomed"] for r in mine) == ["38341003", "44054006"]  # codes are kept
    assert all(r["recorded"] == "2021-03" and r["note"] is None for r in mine)  # dates to the month, no notes
    result, rows = run(server, tmp_path, PATIENT_VIEW, "--as", "analyst", out="p.ndjson")
    assert result.exit_code == 0, result.output
    mine = [r for r in rows if r["id"] == pseudo(f"Patient/{people['mine']}")]
    assert mine == [{"id": pseudo(f"Patient/{people['mine']}"), "family": None, "birth": "1948"}]


def test_analyst_counts_are_suppressed(server, people, tmp_path):
    mine = deid.Pseudonymiser("test-secret")(f"Patient/{people['mine']}")
    view = {"resource": "Condition", "select": [{"column": [{"name": "id", "path": "id"}]}],
            "where": [{"path": f"subject.reference = 'Patient/{mine}'"}]}
    result, rows = run(server, tmp_path, view, "--as", "analyst")
    assert result.exit_code == 0, result.output
    assert len(rows) == 2
    assert "wrote * rows" in result.output  # 2 rows: within 1-7, shown as *


def test_refusals_and_bad_options_are_one_line(server, people, tmp_path):
    for args, must in ((["--as", "analyst", "--purpose", "case-finding"], "not direct care"),
                       (["--as", "nobody-at-all"], "no such active user"),
                       (["--purpose", "marketing"], "--purpose marketing"),
                       (["--engine", "spark"], "export the store first")):
        result, _ = run(server, tmp_path, CONDITION_VIEW, *args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and must in lines[0], (args, result.output)
    # a type outside a person's record is the integration account's only (through the gate's export)
    org_view = {"resource": "Organization", "select": [{"column": [{"name": "id", "path": "id"}]}]}
    result, _ = run(server, tmp_path, org_view, "--as", "analyst")
    assert result.exit_code == 2 and "person records only" in result.output
    result, _ = run(server, tmp_path, org_view, "--as", "gp")
    assert result.exit_code == 2 and "integration account" in result.output
    result, _ = run(server, tmp_path, org_view)
    assert result.exit_code == 0, result.output
