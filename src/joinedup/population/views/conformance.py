"""Run the official SQL on FHIR v2 test suite (https://github.com/FHIR/sql-on-fhir-v2, tests/*.json) and write the
test report in the suite's format: {file: {tests: [{name, result: {passed, reason?}}]}}.

Each case is run as the engine runs any view: compiled to SQL and executed on DuckDB over the file's resources.
Rows are compared as a multiset (the suite says row order does not matter), values by JSON type (true is not 1),
and `expectColumns` checks the column names in order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .compiler import ViewError, compile_view
from .runner import Result, connect, execute, load_resources


@dataclass
class CaseResult:
    file: str
    name: str
    tags: tuple[str, ...]
    passed: bool
    reason: str | None = None


def _canon(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", round(float(value), 9))
    if isinstance(value, list | tuple):
        return ("l", tuple(_canon(v) for v in value))
    if isinstance(value, dict):
        return ("o", tuple(sorted((k, _canon(v)) for k, v in value.items())))
    return ("s", str(value))


def _row_key(row: dict[str, Any]) -> tuple:
    return tuple(sorted((k, _canon(v)) for k, v in row.items()))


def compare(test: dict, result: Result) -> str | None:
    """Why the result does not match the test's expectation, or None when it does."""
    if "expectColumns" in test and list(test["expectColumns"]) != result.columns:
        return f"columns {result.columns} != expected {test['expectColumns']}"
    if "expectCount" in test:
        if len(result.rows) != test["expectCount"]:
            return f"{len(result.rows)} rows != expected {test['expectCount']}"
        return None
    expected = test.get("expect", [])
    got = Counter(_row_key(r) for r in result.dicts())
    want = Counter(_row_key(r) for r in expected)
    if got != want:
        missing = list((want - got).elements())[:3]
        extra = list((got - want).elements())[:3]
        return f"rows differ: missing {missing}, unexpected {extra}"
    return None


def run_file(path: Path, con=None) -> list[CaseResult]:
    suite = orjson.loads(path.read_bytes())
    own = con is None
    con = con or connect()
    results: list[CaseResult] = []
    try:
        table = load_resources(con, suite.get("resources", []), name="_suite_resources")
        for test in suite.get("tests", []):
            name = test.get("title", "")
            tags = tuple(test.get("tags", suite.get("tags", [])))
            try:
                compiled = compile_view(test.get("view"))
                result = execute(con, compiled, table)
            except ViewError as exc:
                if test.get("expectError"):
                    results.append(CaseResult(path.name, name, tags, True))
                else:
                    results.append(CaseResult(path.name, name, tags, False, f"error: {exc}"))
                continue
            if test.get("expectError"):
                results.append(CaseResult(path.name, name, tags, False, "expected an error, the view ran"))
                continue
            reason = compare(test, result)
            results.append(CaseResult(path.name, name, tags, reason is None, reason))
    finally:
        if own:
            con.close()
    return results


def run_suite(tests_dir: Path) -> list[CaseResult]:
    files = sorted(tests_dir.glob("*.json"))
    if not files:
        raise ViewError(f"{tests_dir}: no test files (*.json)")
    con = connect()
    try:
        out: list[CaseResult] = []
        for f in files:
            try:
                out += run_file(f, con)
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                raise ViewError(f"{f}: not a SQL on FHIR test file: {exc}") from None
        return out
    finally:
        con.close()


def report(results: list[CaseResult]) -> dict[str, Any]:
    """The official test report format."""
    out: dict[str, Any] = {}
    for r in results:
        entry: dict[str, Any] = {"name": r.name, "result": {"passed": r.passed}}
        if r.reason:
            entry["result"]["reason"] = r.reason
        out.setdefault(r.file, {"tests": []})["tests"].append(entry)
    return out
