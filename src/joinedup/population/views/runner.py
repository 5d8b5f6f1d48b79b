"""Run compiled views on DuckDB: over NDJSON files directly, over resources in memory, and over the store through
the Gate (written to a temporary NDJSON file first, then the same compiled SQL)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .compiler import CompiledView, ViewError, compile_view

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz", ".ndjson.zst")
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".ndjson": "ndjson", ".jsonl": "ndjson"}
_TYPE_PREFIX = re.compile(r"^([A-Z][A-Za-z]+)(?:[.\-_][^/]*)?$")


def connect():
    import duckdb

    con = duckdb.connect()
    con.sql("SET lambda_syntax = 'DISABLE_SINGLE_ARROW'")
    return con


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def load_view(path: Path) -> dict:
    """A ViewDefinition from a JSON file; ViewError when it cannot be read or is not JSON."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ViewError(f"{path}: {exc.strerror or exc}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ViewError(f"{path}: not JSON: {exc}") from None


def ndjson_files(source: Path, resource: str) -> list[Path]:
    """The NDJSON files of a directory (or the one file given) that may hold `resource` resources.

    Bulk Data exports name files by type (Patient.ndjson, Observation.000.ndjson.gz): only those of the view's
    type are read; files whose name does not start with a resource type are read too (the view filters by
    resourceType in any case).
    """
    from . import model

    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ViewError(f"--source {source}: no such file or directory")
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name.endswith(NDJSON_SUFFIXES))
    out = []
    for p in files:
        m = _TYPE_PREFIX.match(p.name)
        prefix = m.group(1) if m else None
        if prefix and model.is_resource_type(prefix):
            if prefix == resource:
                out.append(p)
        else:
            out.append(p)
    return out


def file_queries(compiled: CompiledView, files: list[Path]) -> list[str]:
    """The view's queries over NDJSON files, to be tried in order: first a typed read of only the fields the view
    uses (DuckDB's JSON reader builds them as it parses, with no JSON text in between), then the JSON-path query
    over the files' objects, which reads anything.

    The typed read either gives the JSON paths' rows or fails: a value of another JSON type than the view's use of
    it (a list where FHIR has an object: not valid FHIR, or another resource type's element of the same name in a
    file of several types) stops it, and the next query runs; lines of other types are dropped by the view's
    resourceType test in both."""
    out = []
    if files:
        typed = compiled.files_query("[" + ", ".join(_sql_text(str(p)) for p in files) + "]")
        if typed:
            out.append(typed)
    return out + [compiled.query(ndjson_relation(files))]


def ndjson_relation(files: list[Path]) -> str:
    """SQL for a relation with one JSON column `resource` over NDJSON files."""
    if not files:
        return "(SELECT CAST(NULL AS JSON) AS resource WHERE false)"
    names = ", ".join(_sql_text(str(p)) for p in files)
    return f"(SELECT json AS resource FROM read_ndjson_objects([{names}]))"


def _run_error(exc: Exception) -> ViewError:
    text = " ".join(str(exc).split())
    text = re.sub(r"^(Invalid Input|Conversion|Binder|Out of Range|Parser|Invalid) Error: ", "", text)
    return ViewError(f"running the view: {text}")


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def execute(con, compiled: CompiledView, source_sql: str) -> Result:
    try:
        cur = con.sql(compiled.query(source_sql))
        rows = cur.fetchall()
    except Exception as exc:  # duckdb.Error: a runtime check of the view failed, or bad data
        if _is_duckdb_error(exc):
            raise _run_error(exc) from None
        raise
    return Result([c.name for c in compiled.columns], rows)


def run_on_resources(view: Any, resources: Iterable[dict], con=None) -> Result:
    """Run a view over resources held in memory (tests, the conformance suite)."""
    compiled = compile_view(view)
    own = con is None
    con = con or connect()
    try:
        table = load_resources(con, resources)
        return execute(con, compiled, table)
    finally:
        if own:
            con.close()


def load_resources(con, resources: Iterable[dict], name: str = "_resources") -> str:
    con.sql(f"CREATE OR REPLACE TEMP TABLE {name} (resource JSON)")
    rows = [(orjson.dumps(r).decode(),) for r in resources]
    if rows:
        con.executemany(f"INSERT INTO {name} VALUES (?)", rows)
    return name


def materialise(con, queries: list[str], table: str = "_view_rows", *, temp: bool = True) -> None:
    """CREATE the table from the first of `queries` that runs (see file_queries); the last one's error if none."""
    for i, query in enumerate(queries):
        try:
            con.sql(f"CREATE {'OR REPLACE TEMP ' if temp else ''}TABLE {table} AS {query}")
            return
        except Exception as exc:
            if i == len(queries) - 1 or not _is_duckdb_error(exc):
                raise


def _is_duckdb_error(exc: Exception) -> bool:
    return exc.__class__.__module__.startswith("duckdb") or exc.__class__.__name__.endswith("Exception")


def write_output(con, compiled: CompiledView, queries: list[str], out: Path) -> int:
    """Write the view's rows to a .csv, .parquet or .ndjson file; returns the number of rows. `queries`: the
    view's queries over its source, tried in order (file_queries)."""
    fmt = output_format(out)
    options = {"csv": "FORMAT csv, HEADER true", "parquet": "FORMAT parquet", "ndjson": "FORMAT json"}[fmt]
    tmp = out.with_name(f".{out.name}.partial{out.suffix}")
    try:
        materialise(con, queries)
        n = con.sql("SELECT count(*) FROM _view_rows").fetchall()[0][0]
        con.sql(f"COPY _view_rows TO {_sql_text(str(tmp))} ({options})")
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if _is_duckdb_error(exc):
            raise _run_error(exc) from None
        raise
    os.replace(tmp, out)
    return n


def output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ViewError(f"--out {out}: the file name must end in .csv, .parquet or .ndjson")
    return OUTPUT_FORMATS[suffix]


def run_view_on_files(view: Any, source: Path, out: Path) -> tuple[CompiledView, int]:
    compiled = compile_view(view)
    output_format(out)
    files = ndjson_files(source, compiled.resource)
    con = connect()
    try:
        return compiled, write_output(con, compiled, file_queries(compiled, files), out)
    finally:
        con.close()


# -- the store, through the Gate --------------------------------------------------------------------------------
@dataclass
class StoreRun:
    rows: int
    people: int
    path: str  # "de-identified" or "identifiable"
    purpose: str


def store_resources(gate, who, resource: str, *, purpose: str) -> tuple[Iterator[dict], dict[str, Any]]:
    """Resources of one type from the store, by the Gate path the principal's role allows.

    An analyst (pseudonymised analytics) gets de-identified records (Gate.deidentified_records: National Data
    Opt-out excluded, pseudonyms, no free text, coarse dates). Everyone else gets Gate.records: a professional only
    the people they have a legitimate relationship with, each entry filtered as on every other path; a secondary
    purpose (research, planning, ...) excludes opted-out people. Types outside a person's record (Organization,
    Practitioner, ...) come from the Gate's export, which only the integration account may run.
    """
    from joinedup.governance.policy import has_activity

    info: dict[str, Any] = {"people": 0, "purpose": purpose}
    person_types = _person_types()
    analyst = has_activity(who, "pseudonymised-analytics") and who.role != "system"

    def from_records() -> Iterator[dict]:
        wanted = None if resource == "Patient" else {resource}
        if analyst:
            info["path"] = "de-identified"
            for record in gate.deidentified_records(who, purpose=purpose, types=wanted or {"Patient"}):
                info["people"] += 1
                for res in record:
                    if res.get("resourceType") == resource:
                        yield res
            return
        info["path"] = "identifiable"
        for patient, items in gate.records(who, purpose=purpose, types=wanted or {"Patient"}):
            info["people"] += 1
            if resource == "Patient":
                if patient.content is not None:
                    yield patient.content
                continue
            for s in items:
                if s.rtype == resource and s.content is not None:
                    yield s.content

    def from_export() -> Iterator[dict]:
        info["path"] = "export"
        for s in gate.export(who, [resource], label=f"view:{resource}"):
            if s.content is not None:
                yield s.content

    if resource in person_types:
        return from_records(), info
    if analyst:
        raise ViewError(f"{resource} is not part of a person's record: de-identified views cover person records "
                        "only")
    return from_export(), info


def _person_types() -> set[str]:
    from joinedup.fhir.search_params import registry

    return set(registry().compartment) | {"Patient"}


def run_view_on_store(view: Any, gate, who, out: Path, *, purpose: str) -> tuple[CompiledView, StoreRun]:
    """Run a view over the store: resources read through the Gate into a temporary NDJSON file, then the same
    compiled SQL as for files."""
    compiled = compile_view(view)
    output_format(out)
    resources, info = store_resources(gate, who, compiled.resource, purpose=purpose)
    con = connect()
    with tempfile.TemporaryDirectory(prefix="joinedup-view-") as tmp:
        path = Path(tmp) / f"{compiled.resource}.ndjson"
        with path.open("wb") as fh:
            for res in resources:
                fh.write(orjson.dumps(res) + b"\n")
        try:
            n = write_output(con, compiled, file_queries(compiled, [path]), out)
        finally:
            con.close()
    return compiled, StoreRun(n, info["people"], info.get("path", "identifiable"), purpose)
