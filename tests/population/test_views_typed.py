"""Typed lists (population/views/shapes.py): a list a view filters is read once into DuckDB structs instead of JSON
texts. The rows must be exactly those of the JSON-path compilation (which the official SQL-on-FHIR suite checks),
on data with the awkward cases real records have: absent lists, elements missing the filtered field, several
matches, nulls in a primitive list (`given: [null, "B"]` with `_given`), numbers written 12.50 or 1e2, nested lists
inside the filtered elements, choice elements inside them. A few values are also checked against FHIRPath's own
answer, worked by hand from the data below.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from joinedup.population.views.compiler import ViewError, compile_view
from joinedup.population.views.conformance import compare
from joinedup.population.views.runner import (
    Result,
    connect,
    execute,
    file_queries,
    load_resources,
    materialise,
    ndjson_files,
    run_view_on_files,
)

RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"

PATIENTS = [
    {"resourceType": "Patient", "id": "a",
     "name": [{"use": "usual", "family": "Nick", "given": ["Al"]},
              {"use": "official", "family": "Smith", "given": ["Ann", "Beth"], "period": {"start": "2001-02-03"}},
              {"use": "official", "family": "Jones", "given": ["Cat"]}],
     "telecom": [{"system": "phone", "value": "0111", "use": "home", "rank": 2},
                 {"system": "phone", "value": "0222", "rank": 1},
                 {"system": "email", "value": "a@example.org", "period": {"end": "2020-01-01"}}],
     "address": [{"use": "home", "line": ["1 High St", "Flat 2"], "city": "Leeds"},
                 {"use": "old", "city": "York", "period": {"end": "2019-05-01"}}],
     "extension": [
         {"url": RACE, "extension": [
             {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3",
                                                    "display": "White"}},
             {"url": "ombCategory", "valueCoding": {"code": "1002-5", "display": "American Indian"}},
             {"url": "text", "valueString": "White"}]},
         {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
          "valueAddress": {"city": "Hull", "country": "GB"}},
         {"url": "http://example.org/score", "valueDecimal": 12.50},
         {"url": "http://example.org/big", "valueDecimal": 1e2}],
     "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"},
                    {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                     "value": "MRN-1"}],
     "contact": [{"relationship": [{"coding": [{"code": "C"}, {"code": "N"}]}], "name": {"family": "Kin"},
                  "organization": {"reference": "Organization/org-1"}},
                 {"name": {"family": "Nobody"}}],
     "communication": [{"language": {"coding": [{"code": "en"}]}, "preferred": True},
                       {"language": {"coding": [{"code": "cy"}]}, "preferred": False}]},
    {"resourceType": "Patient", "id": "b",
     "name": [{"family": "NoUse", "given": [None, "Bee"], "_given": [{"extension": [
         {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier", "valueCode": "IN"}]}, None]},
              {"use": "official", "given": ["Only"]}],
     "telecom": [{"value": "no-system"}],
     "extension": [{"url": RACE, "extension": [{"url": "text", "valueString": "Unknown"}]}],
     "contact": [{"relationship": [{"text": "no coding"}]}]},
    {"resourceType": "Patient", "id": "c"},
    {"resourceType": "Patient", "id": "d", "name": [], "extension": [], "telecom": [{}]},
]

OBSERVATIONS = [
    {"resourceType": "Observation", "id": "bp", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}, {"system": "http://snomed.info/sct",
                                                                          "code": "75367002"}]},
     "subject": {"reference": "Patient/a"},
     "component": [
         {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
          "valueQuantity": {"value": 142.50, "unit": "mmHg", "code": "mm[Hg]"}},
         {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
          "valueQuantity": {"value": 91, "unit": "mmHg"}},
         {"code": {"coding": [{"system": "http://loinc.org", "code": "9999-9"}]}, "valueString": "n/a",
          "dataAbsentReason": {"coding": [{"code": "not-performed"}]}}]},
    {"resourceType": "Observation", "id": "nocomp", "status": "final", "code": {"text": "no coding"}},
]


def _col(name: str, path: str, **more) -> dict:
    return {"name": name, "path": path, **more}


PATIENT_COLUMNS = [
    _col("id", "getResourceKey()"),
    _col("official_family", "name.where(use = 'official').family.first()", type="string"),
    _col("official_given", "name.where(use = 'official').given.first()", type="string"),
    _col("official_givens", "name.where(use = 'official').given", type="string", collection=True),
    _col("official_count", "name.where(use = 'official').count()", type="integer"),
    _col("has_official", "name.where(use = 'official').exists()", type="boolean"),
    _col("no_nickname", "name.where(use = 'nickname').empty()", type="boolean"),
    _col("last_given_of_named", "name.where(family.exists()).given.last()", type="string"),
    _col("family_of_ann", "name.where(given.first() = 'Ann').family", type="string", collection=True),
    _col("official_since", "name.where(use = 'official').period.start.first()", type="dateTime"),
    _col("first_official_family", "name.where(use = 'official').first().family", type="string"),
    _col("second_official_family", "name.where(use = 'official')[1].family", type="string"),
    _col("official_names_joined", "name.where(use = 'official').given.join(' ')", type="string"),
    _col("home_phone", "telecom.where(system = 'phone' and use = 'home').value.first()", type="string"),
    _col("phones", "telecom.where(system = 'phone').value", type="string", collection=True),
    _col("first_rank", "telecom.where(rank = 1).value.first()", type="string"),
    _col("lapsed_telecom", "telecom.where(period.end.exists()).system.first()", type="code"),
    _col("home_line", "address.where(use = 'home').line.first()", type="string"),
    _col("current_cities", "address.where(period.end.empty()).city", type="string", collection=True),
    _col("races", f"extension('{RACE}').extension('ombCategory').value.ofType(Coding).code", type="code",
         collection=True),
    _col("race_display", f"extension('{RACE}').extension('ombCategory').value.ofType(Coding).display.first()",
         type="string"),
    _col("race_text", f"extension('{RACE}').extension('text').value.ofType(string).first()", type="string"),
    _col("birth_city", "extension('http://hl7.org/fhir/StructureDefinition/patient-birthPlace')"
                       ".value.ofType(Address).city.first()", type="string"),
    _col("score", "extension('http://example.org/score').value.ofType(decimal).first()", type="decimal"),
    _col("score_low", "extension('http://example.org/score').value.ofType(decimal).first().lowBoundary()",
         type="decimal"),
    _col("big", "extension('http://example.org/big').value.ofType(decimal).first()", type="decimal"),
    _col("has_race", f"extension('{RACE}').exists()", type="boolean"),
    _col("mrn", "identifier.where(type.coding.where(code = 'MR').exists()).value.first()", type="string"),
    _col("nhs_number", "identifier.where(system = 'https://fhir.nhs.uk/Id/nhs-number').value.first()",
         type="string"),
    # FHIRPath '=' compares whole collections: ('C' | 'N') = 'N' is false
    _col("only_kin_family", "contact.where(relationship.coding.code = 'N').name.family.first()", type="string"),
    _col("next_of_kin", "contact.where(relationship.coding.where(code = 'N').exists()).name.family.first()",
         type="string"),
    _col("kin_org", "contact.where(relationship.coding.where(code = 'N').exists()).organization"
                    ".getReferenceKey(Organization).first()", type="string"),
    _col("preferred_language", "communication.where(preferred = true).language.coding.code.first()", type="code"),
    _col("official_name_json", "name.where(use = 'official').first()"),  # a whole element: stays JSON
]

VIEWS = {
    "patient": {"resource": "Patient", "select": [{"column": PATIENT_COLUMNS}]},
    "patient_for_each": {"resource": "Patient", "select": [
        {"column": [_col("id", "getResourceKey()")]},
        {"forEachOrNull": "name.where(use = 'official')", "column": [
            _col("family", "family", type="string"),
            _col("given", "given.where($this != 'Beth').first()", type="string"),
            _col("row", "%rowIndex", type="integer")]}]},
    "observation": {"resource": "Observation", "select": [{"column": [
        _col("id", "getResourceKey()"),
        _col("loinc", "code.coding.where(system = 'http://loinc.org').code.first()", type="code"),
        _col("systolic", "component.where(code.coding.code = '8480-6').value.ofType(Quantity).value.first()",
             type="decimal"),
        _col("systolic_unit", "component.where(code.coding.code = '8480-6').value.ofType(Quantity).code.first()",
             type="code"),
        _col("diastolic", "component.where(code.coding.where(code = '8462-4').exists()).value.ofType(Quantity)"
                          ".value.first()", type="decimal"),
        _col("absent", "component.where(dataAbsentReason.exists()).code.coding.code.first()", type="code"),
        _col("measured", "component.where(value.ofType(Quantity).exists()).count()", type="integer")]}]},
}


def _run(view: dict, resources: list[dict], *, typed_lists: bool) -> tuple[str, list[dict]]:
    compiled = compile_view(view, typed_lists=typed_lists)
    con = connect()
    try:
        result = execute(con, compiled, load_resources(con, resources))
    finally:
        con.close()
    return compiled.sql, sorted(result.dicts(), key=lambda r: repr(sorted(r.items(), key=str)))


# forEach over a filtered list needs its elements whole (each row's `this`): that list stays JSON
TYPED = {"patient": True, "observation": True, "patient_for_each": False}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_typed_lists_give_the_rows_of_json_paths(name):
    data = OBSERVATIONS if VIEWS[name]["resource"] == "Observation" else PATIENTS
    typed_sql, typed = _run(VIEWS[name], data, typed_lists=True)
    plain_sql, plain = _run(VIEWS[name], data, typed_lists=False)
    assert "json_transform" not in plain_sql
    assert ("json_transform" in typed_sql) is TYPED[name]  # the optimisation is exercised where it applies
    assert typed == plain


def test_typed_lists_answer_as_fhirpath_does():
    _, rows = _run(VIEWS["patient"], PATIENTS, typed_lists=True)
    a, b, c, d = (next(r for r in rows if r["id"] == k) for k in "abcd")
    assert (a["official_family"], a["official_given"]) == ("Smith", "Ann")
    assert a["official_givens"] == ["Ann", "Beth", "Cat"]
    assert a["official_count"] == 2 and a["has_official"] is True and a["no_nickname"] is True
    assert a["second_official_family"] == "Jones"
    assert a["official_names_joined"] == "Ann Beth Cat"
    assert a["family_of_ann"] == ["Smith"]
    assert a["home_phone"] == "0111" and a["phones"] == ["0111", "0222"] and a["first_rank"] == "0222"
    assert a["lapsed_telecom"] == "email"
    assert a["home_line"] == "1 High St" and a["current_cities"] == ["Leeds"]
    assert a["races"] == ["2106-3", "1002-5"] and a["race_display"] == "White" and a["race_text"] == "White"
    assert a["birth_city"] == "Hull"
    assert a["score"] == 12.5 and a["big"] == 100.0
    assert a["mrn"] == "MRN-1" and a["nhs_number"] == "9000000009"
    assert a["next_of_kin"] == "Kin" and a["kin_org"] == "org-1" and a["only_kin_family"] is None
    assert a["preferred_language"] == "en"
    # b: a name with no use is not official; a null given (with _given) is no value
    assert b["official_family"] is None and b["official_given"] == "Only"
    assert b["last_given_of_named"] == "Bee"
    assert b["races"] == [] and b["race_text"] == "Unknown" and b["has_race"] is True
    assert b["next_of_kin"] is None and b["home_phone"] is None
    # c and d: no lists, or empty ones
    for r in (c, d):
        assert r["official_count"] == 0 and r["has_official"] is False and r["official_givens"] == []
        assert r["races"] == [] and r["has_race"] is False and r["official_family"] is None


def test_observation_components_as_fhirpath_does():
    _, rows = _run(VIEWS["observation"], OBSERVATIONS, typed_lists=True)
    bp = next(r for r in rows if r["id"] == "bp")
    assert bp["loinc"] == "85354-9"
    assert (bp["systolic"], bp["systolic_unit"], bp["diastolic"]) == (142.5, "mm[Hg]", 91.0)
    assert bp["absent"] == "9999-9" and bp["measured"] == 2
    none = next(r for r in rows if r["id"] == "nocomp")
    assert none["systolic"] is None and none["measured"] == 0 and none["loinc"] is None


# -- typed reads of NDJSON files: the official suite, each case's resources written to files named for their type --
SUITE = Path(__file__).resolve().parents[1] / "data" / "sql-on-fhir-v2" / "tests"


def _suite_cases() -> list:
    out = []
    for f in sorted(SUITE.glob("*.json")):
        for i, test in enumerate(json.loads(f.read_text())["tests"]):
            out.append(pytest.param(f.name, i, id=f"{f.stem}:{test['title']}"))
    return out


def _write_by_type(folder: Path, resources: list[dict]) -> None:
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype, items in by_type.items():
        (folder / f"{rtype}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in items))


@pytest.mark.parametrize(("file", "index"), _suite_cases())
def test_the_official_suite_through_typed_reads_of_files(tmp_path, file, index):
    suite = json.loads((SUITE / file).read_text())
    test = suite["tests"][index]
    _write_by_type(tmp_path, suite["resources"])
    try:
        compiled = compile_view(test["view"])
    except ViewError:
        assert test.get("expectError")
        return
    files = ndjson_files(tmp_path, compiled.resource)
    queries = file_queries(compiled, files)
    con = connect()
    try:
        if test.get("expectError"):  # a check only the data can fail: the typed read fails it too
            for query in queries:
                with pytest.raises(duckdb.Error):
                    con.sql(query).fetchall()
            return
        if compiled.file_sql is not None and files:
            assert len(queries) == 2  # the typed read is tried first, and must itself give the expected rows
            rows = con.sql(queries[0]).fetchall()
            assert compare(test, Result([c.name for c in compiled.columns], rows)) is None
        materialise(con, queries, "_case")
        result = Result([c.name for c in compiled.columns], con.sql("SELECT * FROM _case").fetchall())
        assert compare(test, result) is None, compare(test, result)
    finally:
        con.close()


def test_most_of_the_suite_has_a_typed_read():
    typed = total = 0
    for f in sorted(SUITE.glob("*.json")):
        for test in json.loads(f.read_text())["tests"]:
            try:
                compiled = compile_view(test["view"])
            except ViewError:
                continue
            total += 1
            typed += compiled.file_sql is not None
    assert total == 124 and typed >= 100, (typed, total)


def test_a_file_the_typed_read_cannot_take_falls_back_to_json_paths(tmp_path):
    # not valid FHIR (name as an object, gender as a number): the typed read fails, the JSON paths read it as ever
    (tmp_path / "Patient.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "odd", "gender": 1, "name": {"family": "Object"}}) + "\n"
        + json.dumps(PATIENTS[0]) + "\n")
    view = {"resource": "Patient", "select": [{"column": [
        _col("id", "getResourceKey()"), _col("gender", "gender"),
        _col("family", "name.where(use = 'official').family.first()", type="string")]}]}
    out = tmp_path / "out.ndjson"
    compiled, n = run_view_on_files(view, tmp_path, out)
    assert compiled.file_sql is not None and n == 2
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["a"]["family"] == "Smith" and rows["odd"]["gender"] == "1"


# -- data nobody here wrote: Synthea R4 bundles and the FHIR R4 examples, through every view JoinedUp ships --------
DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED = sorted(Path(__file__).resolve().parents[2].glob("src/joinedup/population/*/views/*.json"))


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> Path:
    import gzip

    by_type: list[dict] = []
    for f in sorted((DATA / "synthea-r4-bundles").glob("*.json.gz")):
        by_type += [e["resource"] for e in json.loads(gzip.open(f).read())["entry"]]
    by_type += [json.loads(f.read_text()) for f in sorted((DATA / "fhir-r4-examples").glob("*.json"))]
    folder = tmp_path_factory.mktemp("real")
    _write_by_type(folder, by_type)
    return folder


@pytest.mark.parametrize("view_file", SHIPPED, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_shipped_view_reads_the_same_rows_typed_on_real_exports(real_files, view_file):
    view = json.loads(view_file.read_text())
    compiled = compile_view(view)
    files = ndjson_files(real_files, compiled.resource)
    if not any(f.name.startswith(compiled.resource) for f in files):
        pytest.skip(f"no {compiled.resource} in the exports")
    queries = file_queries(compiled, files)
    plain = compile_view(view, typed_lists=False).query(
        "(SELECT json AS resource FROM read_ndjson_objects([" + ", ".join(f"'{f}'" for f in files) + "]))")
    con = connect()
    try:
        want = sorted(map(repr, con.sql(plain).fetchall()))
        assert want  # the export holds rows for this view
        for query in queries:  # the typed read, then JSON paths with typed lists
            assert sorted(map(repr, con.sql(query).fetchall())) == want
    finally:
        con.close()
