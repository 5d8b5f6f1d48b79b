"""The official SQL on FHIR v2 test suite (tests/data/sql-on-fhir-v2, MIT, from FHIR/sql-on-fhir-v2): every case,
experimental ones included, on DuckDB; and the CLI writing the official test report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.population.views.compiler import ViewError, compile_view
from joinedup.population.views.conformance import compare
from joinedup.population.views.runner import connect, execute, load_resources

SUITE = Path(__file__).resolve().parents[1] / "data" / "sql-on-fhir-v2" / "tests"


def cases() -> list:
    out = []
    for f in sorted(SUITE.glob("*.json")):
        suite = json.loads(f.read_text())
        for i, test in enumerate(suite["tests"]):
            out.append(pytest.param(f.name, i, id=f"{f.stem}:{test['title']}"))
    return out


CASES = cases()


def test_the_whole_suite_is_here():
    # 22 files, 134 cases (123 shareable, 11 experimental): tests/data/sql-on-fhir-v2/README.md
    assert len(list(SUITE.glob("*.json"))) == 22
    assert len(CASES) == 134
    assert (SUITE.parent / "LICENSE.md").read_text().startswith("Copyright (c) 2018-2023 Nikolai Ryzhikov")


@pytest.fixture(scope="module")
def duck():
    con = connect()
    yield con
    con.close()


@pytest.mark.parametrize(("file", "index"), CASES)
def test_case_on_duckdb(duck, file, index):
    suite = json.loads((SUITE / file).read_text())
    test = suite["tests"][index]
    table = load_resources(duck, suite["resources"], name="_case")
    if test.get("expectError"):
        with pytest.raises(ViewError):
            execute(duck, compile_view(test["view"]), table)
        return
    result = execute(duck, compile_view(test["view"]), table)
    assert compare(test, result) is None, compare(test, result)


def test_conformance_cli_writes_the_official_report(tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["views", "conformance", str(SUITE), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "134/134 cases passed on duckdb" in result.output
    data = json.loads(report.read_text())
    # {file: {tests: [{name, result: {passed, reason?}}]}}
    assert set(data) == {f.name for f in SUITE.glob("*.json")}
    names = [t["name"] for t in data["basic.json"]["tests"]]
    assert names[0] == "basic attribute"
    assert all(t["result"]["passed"] is True for f in data.values() for t in f["tests"])
    assert sum(len(f["tests"]) for f in data.values()) == 134


def test_conformance_cli_reports_failures_with_reasons(tmp_path):
    # a suite file whose expectation is wrong must fail, with the reason, and exit 1
    bad = tmp_path / "suite"
    bad.mkdir()
    (bad / "wrong.json").write_text(json.dumps({
        "title": "wrong", "resources": [{"resourceType": "Patient", "id": "p1"}],
        "tests": [{"title": "expects a row that is not there", "view": {
            "resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]},
            "expect": [{"id": "p2"}]}]}))
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["views", "conformance", str(bad), "--report", str(report)])
    assert result.exit_code == 1
    entry = json.loads(report.read_text())["wrong.json"]["tests"][0]
    assert entry["result"]["passed"] is False and "rows differ" in entry["result"]["reason"]
