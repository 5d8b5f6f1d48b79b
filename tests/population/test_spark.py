"""The same views on Spark (pyspark, local mode, Debian's Java 17): every case of the official suite, and the same
rows as DuckDB on the Synthea export. One Spark session serves the whole test session (it takes seconds to start);
the suite's cases of one file run as one Spark query."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.population.views import runner, spark

from .test_conformance import CASES, SUITE
from .test_views_files import CONDITION_CODINGS, DEMOGRAPHICS, SAMPLES, resources

pytestmark = pytest.mark.slow

MEDICATIONS = {
    "resource": "MedicationRequest", "select": [
        {"column": [{"name": "id", "path": "id"},
                    {"name": "rxnorm", "path": "medication.ofType(CodeableConcept).coding.code.first()"},
                    {"name": "authored", "path": "authoredOn", "type": "dateTime"}]},
        {"forEachOrNull": "dosageInstruction", "column": [
            {"name": "i", "path": "%rowIndex", "type": "integer"},
            {"name": "frequency", "path": "timing.repeat.frequency", "type": "integer"},
            {"name": "as_needed", "path": "asNeeded.ofType(boolean)", "type": "boolean"}]},
        {"unionAll": [{"column": [{"name": "ref", "path": "subject.getReferenceKey(Patient)"}]},
                      {"column": [{"name": "ref", "path": "encounter.getReferenceKey(Encounter)"}]}]}]}


@pytest.fixture(scope="session")
def spark_suite(spark_session) -> dict[tuple[str, str], object]:
    results = spark.run_suite(SUITE)
    return {(r.file, r.name): r for r in results}


@pytest.mark.parametrize(("file", "index"), CASES)
def test_case_on_spark(spark_suite, file, index):
    test = json.loads((SUITE / file).read_text())["tests"][index]
    result = spark_suite[(file, test["title"])]
    assert result.passed, result.reason


@pytest.mark.parametrize("view", [DEMOGRAPHICS, CONDITION_CODINGS, MEDICATIONS],
                         ids=["demographics", "condition-codings", "medications"])
def test_spark_and_duckdb_give_the_same_rows(spark_suite, view):
    data = resources(view["resource"])
    on_duck = runner.run_on_resources(view, data)
    on_spark = spark.run_on_resources(view, data)
    assert on_spark.columns == on_duck.columns
    assert len(on_duck.rows) >= len(data)
    assert sorted(on_spark.rows, key=repr) == sorted(on_duck.rows, key=repr)


def test_cli_runs_a_view_on_spark_over_files(spark_suite, tmp_path):
    view = tmp_path / "v.json"
    view.write_text(json.dumps(DEMOGRAPHICS))
    out_spark, out_duck = tmp_path / "s.csv", tmp_path / "d.csv"
    r = CliRunner().invoke(app, ["views", "run", str(view), "--source", str(SAMPLES), "--out", str(out_spark),
                                 "--engine", "spark"])
    assert r.exit_code == 0, r.output
    assert "wrote 13 rows" in r.output
    assert CliRunner().invoke(app, ["views", "run", str(view), "--source", str(SAMPLES), "--out",
                                    str(out_duck)]).exit_code == 0

    def rows(p: Path) -> list:
        with p.open() as f:
            return sorted(csv.reader(f))

    assert rows(out_spark) == rows(out_duck)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resource": "Patient", "select": [{"column": [{"name": "f", "path": "name.family"}]}]}))
    r = CliRunner().invoke(app, ["views", "run", str(bad), "--source", str(SAMPLES), "--out", str(tmp_path / "x.csv"),
                                 "--engine", "spark"])
    assert r.exit_code == 2 and "more than one value" in r.output and len(r.output.strip().splitlines()) == 1


def test_repeat_depth_limit_is_the_same_on_spark(spark_suite):
    from joinedup.population.views.compiler import MAX_REPEAT_DEPTH
    from joinedup.population.views.runner import ViewError

    from .test_views_files import _nested_response

    view = {"resource": "QuestionnaireResponse", "select": [{"repeat": ["item"], "column": [
        {"name": "link", "path": "linkId", "type": "string"}, {"name": "n", "path": "%rowIndex", "type": "integer"}]}]}
    rows = spark.run_on_resources(view, [_nested_response(MAX_REPEAT_DEPTH)]).rows
    assert sorted(rows, key=lambda r: r[1]) == [(str(i + 1), i) for i in range(MAX_REPEAT_DEPTH)]
    with pytest.raises(ViewError, match=f"deeper than {MAX_REPEAT_DEPTH} levels"):
        spark.run_on_resources(view, [_nested_response(MAX_REPEAT_DEPTH + 1)])
