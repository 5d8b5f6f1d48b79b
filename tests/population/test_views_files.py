"""`joinedup views run` over NDJSON files (the Synthea 10-patient bulk export shipped as test data): each output
format, results checked against the source resources read independently here, a cross-check of the compiled SQL
against fhirpathpy (a per-resource FHIRPath evaluator), and precise one-line errors (exit 2) for bad views."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import duckdb
import fhirpathpy
import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.population.views.runner import run_on_resources

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "synthea-10-patients"


def resources(rtype: str) -> list[dict]:
    with gzip.open(SAMPLES / f"{rtype}.000.ndjson.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


DEMOGRAPHICS = {
    "resourceType": "ViewDefinition", "name": "patient_demographics", "status": "active", "resource": "Patient",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "gender", "path": "gender", "type": "code"},
        {"name": "birth_date", "path": "birthDate", "type": "date"},
        {"name": "family", "path": "name.where(use = 'official').family.first()", "type": "string"},
        {"name": "deceased", "path": "deceased.ofType(dateTime)", "type": "dateTime"},
    ]}]}

CONDITION_CODINGS = {
    "resource": "Condition",
    "select": [{"column": [{"name": "id", "path": "id", "type": "id"},
                           {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"}]},
               {"forEach": "code.coding", "column": [
                   {"name": "system", "path": "system", "type": "uri"},
                   {"name": "code", "path": "code", "type": "code"},
                   {"name": "n", "path": "%rowIndex", "type": "integer"}]}]}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_exit_2(result, *must_contain: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for text in must_contain:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def expected_demographics() -> dict[str, dict]:
    out = {}
    for p in resources("Patient"):
        official = [n.get("family") for n in p.get("name", []) if n.get("use") == "official" and n.get("family")]
        out[p["id"]] = {"gender": p.get("gender"), "birth_date": p.get("birthDate"),
                        "family": official[0] if official else None, "deceased": p.get("deceasedDateTime")}
    return out


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".ndjson"])
def test_demographics_view_in_each_format(tmp_path, suffix):
    view = tmp_path / "demographics.json"
    view.write_text(json.dumps(DEMOGRAPHICS))
    out = tmp_path / f"patients{suffix}"
    result = invoke("views", "run", view, "--source", SAMPLES, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote 13 rows (5 columns) of Patient" in result.output
    if suffix == ".csv":
        with out.open() as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == ["id", "gender", "birth_date", "family", "deceased"]
            rows = [{k: (v or None) for k, v in r.items()} for r in reader]
    elif suffix == ".parquet":
        rel = duckdb.sql(f"SELECT * FROM read_parquet('{out}')")
        assert rel.columns == ["id", "gender", "birth_date", "family", "deceased"]
        rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows}
    assert got == expected_demographics()
    assert sum(1 for r in got.values() if r["deceased"]) >= 1  # the export holds deceased people


def test_foreach_with_row_index_gives_one_row_per_coding(tmp_path):
    view = tmp_path / "codings.json"
    view.write_text(json.dumps(CONDITION_CODINGS))
    out = tmp_path / "codings.ndjson"
    assert invoke("views", "run", view, "--source", SAMPLES, "--out", out).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = sorted((c["id"], c["subject"]["reference"].split("/")[-1], cd.get("system"), cd.get("code"), i)
                      for c in resources("Condition") for i, cd in enumerate(c["code"]["coding"]))
    assert sorted((r["id"], r["patient"], r["system"], r["code"], r["n"]) for r in rows) == expected
    assert len(rows) >= 555  # every Condition has at least one coding


# -- the compiled SQL agrees with a per-resource FHIRPath evaluator (fhirpathpy) on real Synthea data ----------
CROSS_CHECK = [
    ("Patient", "name.given.first()"),
    ("Patient", "name.where(use = 'official').family.first()"),
    ("Patient", "address.first().city"),
    ("Patient", "extension.where(url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex')"
                ".value.ofType(code).first()"),
    ("Patient", "identifier.where(type.coding.code = 'MR').value.first()"),
    ("Patient", "telecom.exists()"),
    ("Patient", "communication.language.coding.code.first()"),
    ("Condition", "code.coding.where(system = 'http://snomed.info/sct').code.first()"),
    ("Condition", "onset.ofType(dateTime)"),
    ("Condition", "abatement.exists()"),
    ("Condition", "clinicalStatus.coding.code.first()"),
    ("MedicationRequest", "medication.ofType(CodeableConcept).coding.code.first()"),
    ("MedicationRequest", "dosageInstruction.first().timing.repeat.frequency"),
    ("MedicationRequest", "dosageInstruction.first().asNeeded.ofType(boolean)"),
    ("MedicationRequest", "status = 'active' and intent = 'order'"),
    ("Encounter", "period.start"),
    ("Encounter", "type.coding.code.first()"),
    ("Encounter", "participant.individual.reference.first()"),
    ("Procedure", "performed.ofType(Period).start"),
    ("Immunization", "vaccineCode.coding.code.join(',')"),
]


@pytest.mark.parametrize(("rtype", "path"), CROSS_CHECK)
def test_compiled_sql_matches_fhirpathpy(rtype, path):
    data = resources(rtype)
    view = {"resource": rtype, "select": [{"column": [{"name": "id", "path": "id"}, {"name": "v", "path": path}]}]}
    got = {r["id"]: r["v"] for r in run_on_resources(view, data).dicts()}
    # fhirpathpy's model-less evaluation needs the JSON key for a choice type (value[x]): spell it out for it
    reference_path = (path.replace("value.ofType(code)", "valueCode").replace("onset.ofType(dateTime)", "onsetDateTime")
                      .replace("medication.ofType(CodeableConcept)", "medicationCodeableConcept")
                      .replace("asNeeded.ofType(boolean)", "asNeededBoolean")
                      .replace("performed.ofType(Period)", "performedPeriod").replace("abatement.exists()",
                                                                                       "abatementDateTime.exists()"))
    for res in data:
        value = fhirpathpy.evaluate(res, reference_path)
        want = value[0] if value else None
        if path.endswith(".join(',')"):
            want = want if want is not None else ""
        assert got[res["id"]] == want, (res["id"], got[res["id"]], want)


# -- bad input: one line, exit 2, naming where ------------------------------------------------------------------
BAD_VIEWS = [
    ({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id", "type": "banana"}]}]},
     ["select[0].column[0] 'id'", "unknown column type 'banana'"]),
    ({"resource": "Patient", "select": [{"column": [{"name": "n", "path": "name.family.lower()"}]}]},
     ["select[0].column[0] 'n'", "name.family.lower()", "lower() is not supported"]),
    ({"resource": "Patient", "select": [{"forEach": "name.(", "column": [{"name": "f", "path": "family"}]}]},
     ["select[0].forEach", "not valid FHIRPath"]),
    ({"resource": "Patient", "select": [{"column": [{"name": "f", "path": "name.family"}]}],
      "where": [{"path": "name.family"}]}, ["where[0].path", "not boolean"]),
    ({"resource": "Patient", "select": [{"colunm": [{"name": "f", "path": "id"}]}]},
     ["select[0]", "unknown element(s): colunm"]),
    ({"select": [{"column": [{"name": "id", "path": "id"}]}]}, ["resource: required"]),
    ({"resource": "Pateint", "select": [{"column": [{"name": "id", "path": "id"}]}]}, ["'Pateint' is not a FHIR"]),
    ({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}, {"name": "id", "path": "gender"}]}]},
     ["used more than once: id"]),
    ({"resource": "Patient", "select": [{"column": [{"name": "x", "path": "name.where(use = %missing).family"}]}]},
     ["%missing is not defined"]),
    ({"resource": "Patient", "select": [{"unionAll": [{"column": [{"name": "a", "path": "id"}]},
                                                      {"column": [{"name": "b", "path": "id"}]}]}]},
     ["select[0].unionAll[1]", "same columns"]),
]


@pytest.mark.parametrize(("view", "must"), BAD_VIEWS)
def test_bad_views_fail_in_one_line_naming_where(tmp_path, view, must):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(view))
    out = tmp_path / "out.csv"
    line = one_line_exit_2(invoke("views", "run", path, "--source", SAMPLES, "--out", out), *must)
    assert str(path) in line
    assert not out.exists()


def test_several_values_in_a_single_column_is_an_error_not_a_guess(tmp_path):
    # Synthea patients have an official and a maiden name: name.family is two values for some of them
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"resource": "Patient", "select": [{"column": [
        {"name": "family", "path": "name.family", "type": "string"}]}]}))
    out = tmp_path / "out.csv"
    one_line_exit_2(invoke("views", "run", path, "--source", SAMPLES, "--out", out),
                    "select[0].column[0] 'family'", "more than one value", "collection: true")
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_files_and_options_that_cannot_be_used(tmp_path):
    view = tmp_path / "v.json"
    view.write_text(json.dumps(DEMOGRAPHICS))
    one_line_exit_2(invoke("views", "run", view, "--source", SAMPLES, "--out", tmp_path / "x.xlsx"),
                    ".csv, .parquet or .ndjson")
    one_line_exit_2(invoke("views", "run", view, "--source", tmp_path / "nowhere", "--out", tmp_path / "x.csv"),
                    "nowhere", "no such file or directory")
    (tmp_path / "notjson.json").write_text("{\"resource\": ")
    one_line_exit_2(invoke("views", "run", tmp_path / "notjson.json", "--source", SAMPLES, "--out",
                           tmp_path / "x.csv"), "notjson.json", "not JSON")
    one_line_exit_2(invoke("views", "run", tmp_path / "missing.json", "--source", SAMPLES, "--out",
                           tmp_path / "x.csv"), "missing.json")
    one_line_exit_2(invoke("views", "run", view, "--source", SAMPLES, "--out", tmp_path / "x.csv", "--as", "gp"),
                    "--source store only")
    bad_line = tmp_path / "bad"
    bad_line.mkdir()
    (bad_line / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "a"}\n{not json\n')
    one_line_exit_2(invoke("views", "run", view, "--source", bad_line, "--out", tmp_path / "x.csv"),
                    "running the view")


def test_an_element_the_type_does_not_have_is_empty_and_warned_about(tmp_path):
    # FHIRPath gives an empty collection for it (the suite's repeat cases rely on this); the CLI says so
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"resource": "Patient", "select": [{"column": [
        {"name": "id", "path": "id"}, {"name": "typo", "path": "nmae.family.first()", "type": "string"}]}]}))
    out = tmp_path / "out.csv"
    result = invoke("views", "run", path, "--source", SAMPLES, "--out", out)
    assert result.exit_code == 0, result.output
    assert "warning: select[0].column[1] 'typo': Patient has no element 'nmae' (always empty)" in result.output
    with out.open() as f:
        assert all(r["typo"] == "" for r in csv.DictReader(f))


def _nested_response(depth: int) -> dict:
    item: dict = {"linkId": str(depth)}
    for level in range(depth - 1, 0, -1):
        item = {"linkId": str(level), "item": [item]}
    return {"resourceType": "QuestionnaireResponse", "id": "qr", "status": "completed", "item": [item]}


def test_repeat_follows_nesting_to_its_limit_and_refuses_deeper_data():
    from joinedup.population.views.compiler import MAX_REPEAT_DEPTH, ViewError

    view = {"resource": "QuestionnaireResponse", "select": [{"repeat": ["item"], "column": [
        {"name": "link", "path": "linkId", "type": "string"}, {"name": "n", "path": "%rowIndex", "type": "integer"}]}]}
    deepest = run_on_resources(view, [_nested_response(MAX_REPEAT_DEPTH)]).rows
    assert sorted(deepest, key=lambda r: r[1]) == [(str(i + 1), i) for i in range(MAX_REPEAT_DEPTH)]  # depth-first
    with pytest.raises(ViewError, match=f"deeper than {MAX_REPEAT_DEPTH} levels"):
        run_on_resources(view, [_nested_response(MAX_REPEAT_DEPTH + 1)])
