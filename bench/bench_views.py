"""Benchmark: SQL on FHIR views compiled to DuckDB SQL against hand-written DuckDB SQL for the same flattening;
prints figures and writes bench/results/views.json.

Data: the Synthea 10-patient bulk export (tests/data/synthea-10-patients) replicated with fresh ids (every UUID
shifted per copy, so references still join) to at least 200,000 resources in a temporary directory, plus the
Observations of a synthetic ICS (`joinedup generate`; the Synthea sample holds no Observations). Each view and its
hand-written SQL are materialised into a table (so no column can be skipped), best of at least REPEATS runs (more for a view of milliseconds, see `_enough`), and their rows
are checked identical. The engine runs each view as `joinedup views run` does (runner.file_queries): files named for
the view's type are read with typed columns holding only the fields the view uses (read_json), else through JSON paths
over the files' objects (read_ndjson_objects, as the hand-written SQL does); `engine_read` says which. With `--spark`
the same views also run on Spark (local mode).

Peers, side by side on the same files (each peer's time covers reading and parsing the files and evaluating the view,
as the engine's does):
- `--peers`: the `sqlonfhir` package (PyPI, 0.0.2), installed into a virtual environment of its own under
  bench/.peers/ (not a dependency of JoinedUp), best of at least REPEATS runs; its rows are compared too.
- `--reference DIR`: the SQL-on-FHIR v2 reference implementation, sof-js, from DIR (the `sof-js` folder of a checkout
  of https://github.com/FHIR/sql-on-fhir-v2 with `npm install` run in it), one run per view: every view's rows are
  compared with the engine's, value by value (numbers as numbers, so 98.0 and 98 are the same value).

Run: python -m bench.bench_views [--copies N] [--patients N] [--spark] [--peers] [--reference SOF_JS_DIR]
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import ROOT, write_result
from joinedup.population.views.compiler import compile_view
from joinedup.population.views.runner import connect, file_queries, ndjson_files

SAMPLES = ROOT / "tests" / "data" / "synthea-10-patients"
PEERS = ROOT / "bench" / "peers"
PEERS_VENV = ROOT / "bench" / ".peers" / "venv"
SQLONFHIR = "sqlonfhir==0.0.2"
# Columns sqlonfhir 0.0.2 cannot evaluate (found by running each column alone): it is timed, side by side with the
# engine, on the view without them.
SQLONFHIR_CANNOT = {
    "observation_flat": {"encounter": "getReferenceKey() on an absent reference raises IndexError"},
    "medication_request": {"dose_index": "%rowIndex is not supported ('undefined environment variable')"},
}


def _without(select: list[dict], drop: set[str]) -> list[dict]:
    out = []
    for part in select:
        part = dict(part)
        if "column" in part:
            part["column"] = [c for c in part["column"] if c["name"] not in drop]
        if "select" in part:
            part["select"] = _without(part["select"], drop)
        out.append(part)
    return out
REPEATS = 3
MIN_SECONDS = 1.0
UUID = re.compile(r"([0-9a-f]{8})(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"

VIEWS = {
    "patient_demographics": {
        "resource": "Patient", "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "gender", "path": "gender", "type": "code"},
            {"name": "birth_date", "path": "birthDate", "type": "date"},
            {"name": "deceased", "path": "deceased.ofType(dateTime)", "type": "dateTime"},
            {"name": "family", "path": "name.where(use = 'official').family.first()", "type": "string"},
            {"name": "given", "path": "name.where(use = 'official').given.first()", "type": "string"},
            {"name": "city", "path": "address.first().city", "type": "string"},
            {"name": "postcode", "path": "address.first().postalCode", "type": "string"},
            {"name": "race", "path": f"extension('{RACE}').extension('ombCategory').value.ofType(Coding).code.first()",
             "type": "code"},
        ]}]},
    "observation_flat": {
        "resource": "Observation", "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
            {"name": "encounter", "path": "encounter.getReferenceKey(Encounter)", "type": "string"},
            {"name": "status", "path": "status", "type": "code"},
            {"name": "category", "path": "category.coding.code.first()", "type": "code"},
            {"name": "loinc", "path": "code.coding.where(system = 'http://loinc.org').code.first()",
             "type": "code"},
            {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
            {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
            {"name": "unit", "path": "value.ofType(Quantity).code", "type": "code"},
        ]}]},
    "condition": {
        "resource": "Condition", "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
            {"name": "encounter", "path": "encounter.getReferenceKey(Encounter)", "type": "string"},
            {"name": "snomed", "path": f"code.coding.where(system = '{SNOMED}').code.first()", "type": "code"},
            {"name": "clinical_status", "path": "clinicalStatus.coding.code.first()", "type": "code"},
            {"name": "verification", "path": "verificationStatus.coding.code.first()", "type": "code"},
            {"name": "onset", "path": "onset.ofType(dateTime)", "type": "dateTime"},
            {"name": "abatement", "path": "abatement.ofType(dateTime)", "type": "dateTime"},
            {"name": "recorded", "path": "recordedDate", "type": "dateTime"},
        ]}]},
    "medication_request": {
        "resource": "MedicationRequest", "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "string"},
                {"name": "status", "path": "status", "type": "code"},
                {"name": "intent", "path": "intent", "type": "code"},
                {"name": "rxnorm", "path": f"medication.ofType(CodeableConcept).coding.where(system = '{RXNORM}')"
                                           ".code.first()", "type": "code"},
                {"name": "authored", "path": "authoredOn", "type": "dateTime"}]},
            {"forEachOrNull": "dosageInstruction", "column": [
                {"name": "dose_index", "path": "%rowIndex", "type": "integer"},
                {"name": "as_needed", "path": "asNeeded.ofType(boolean)", "type": "boolean"},
                {"name": "frequency", "path": "timing.repeat.frequency", "type": "integer"},
                {"name": "period", "path": "timing.repeat.period", "type": "decimal"},
                {"name": "period_unit", "path": "timing.repeat.periodUnit", "type": "code"},
                {"name": "dose", "path": "doseAndRate.first().dose.ofType(Quantity).value", "type": "decimal"}]}]},
}

# The same flattenings written by hand, as an analyst would (one JSON path per column).
HAND = {
    "patient_demographics": """
        SELECT j->>'$.id' AS id, j->>'$.gender' AS gender, j->>'$.birthDate' AS birth_date,
               j->>'$.deceasedDateTime' AS deceased,
               list_filter(json_extract(j, '$.name[*]'), lambda n: n->>'use' = 'official')[1]->>'family' AS family,
               list_filter(json_extract(j, '$.name[*]'), lambda n: n->>'use' = 'official')[1]->>'$.given[0]' AS given,
               j->>'$.address[0].city' AS city, j->>'$.address[0].postalCode' AS postcode,
               list_filter(json_extract(list_filter(json_extract(j, '$.extension[*]'), lambda e: e->>'url' = '%s')[1],
                                        '$.extension[*]'),
                           lambda e: e->>'url' = 'ombCategory')[1]->>'$.valueCoding.code' AS race
        FROM {src} WHERE j->>'$.resourceType' = 'Patient'""".replace("%s", RACE),
    "observation_flat": """
        SELECT j->>'$.id' AS id, regexp_extract(j->>'$.subject.reference', 'Patient/(.*)$', 1) AS patient,
               regexp_extract(j->>'$.encounter.reference', 'Encounter/(.*)$', 1) AS encounter,
               j->>'$.status' AS status, j->>'$.category[0].coding[0].code' AS category,
               list_filter(json_extract(j, '$.code.coding[*]'), lambda c: c->>'system' = 'http://loinc.org')[1]->>'code' AS loinc,
               j->>'$.effectiveDateTime' AS effective, CAST(j->>'$.valueQuantity.value' AS DOUBLE) AS value,
               j->>'$.valueQuantity.code' AS unit
        FROM {src} WHERE j->>'$.resourceType' = 'Observation'""",
    "condition": """
        SELECT j->>'$.id' AS id, regexp_extract(j->>'$.subject.reference', 'Patient/(.*)$', 1) AS patient,
               regexp_extract(j->>'$.encounter.reference', 'Encounter/(.*)$', 1) AS encounter,
               list_filter(json_extract(j, '$.code.coding[*]'), lambda c: c->>'system' = '%s')[1]->>'code' AS snomed,
               j->>'$.clinicalStatus.coding[0].code' AS clinical_status,
               j->>'$.verificationStatus.coding[0].code' AS verification,
               j->>'$.onsetDateTime' AS onset, j->>'$.abatementDateTime' AS abatement,
               j->>'$.recordedDate' AS recorded
        FROM {src} WHERE j->>'$.resourceType' = 'Condition'""".replace("%s", SNOMED),
    "medication_request": """
        SELECT j->>'$.id' AS id, regexp_extract(j->>'$.subject.reference', 'Patient/(.*)$', 1) AS patient,
               j->>'$.status' AS status, j->>'$.intent' AS intent,
               list_filter(json_extract(j, '$.medicationCodeableConcept.coding[*]'), lambda c: c->>'system' = '%s')[1]->>'code'
                 AS rxnorm,
               j->>'$.authoredOn' AS authored, d.i AS dose_index, CAST(d.v->>'$.asNeededBoolean' AS BOOLEAN) AS as_needed,
               CAST(d.v->>'$.timing.repeat.frequency' AS INTEGER) AS frequency,
               CAST(d.v->>'$.timing.repeat.period' AS DOUBLE) AS period, d.v->>'$.timing.repeat.periodUnit' AS period_unit,
               CAST(d.v->>'$.doseAndRate[0].doseQuantity.value' AS DOUBLE) AS dose
        FROM {src} CROSS JOIN LATERAL (
            SELECT unnest(l) AS v, generate_subscripts(l, 1) - 1 AS i FROM (
              SELECT CASE WHEN coalesce(len(json_extract(j, '$.dosageInstruction[*]')), 0) = 0 THEN [NULL::JSON]
                          ELSE json_extract(j, '$.dosageInstruction[*]') END AS l)) AS d
        WHERE j->>'$.resourceType' = 'MedicationRequest'""".replace("%s", RXNORM),
}


def replicate(out: Path, copies: int) -> int:
    """Write `copies` copies of the Synthea sample with fresh ids; returns the number of resources."""
    n = 0
    for src in sorted(SAMPLES.glob("*.ndjson.gz")):
        if src.name.startswith("log"):
            continue
        lines = gzip.open(src, "rt", encoding="utf-8").read().splitlines()
        with (out / src.name.removesuffix(".gz")).open("w", encoding="utf-8") as fh:
            for k in range(copies):
                def shift(m: re.Match, k: int = k) -> str:
                    return f"{(int(m.group(1), 16) + k) % 2**32:08x}{m.group(2)}"

                for line in lines:
                    if line.strip():
                        fh.write(UUID.sub(shift, line) + "\n")
                        n += 1
    return n


def _enough(runs: int, spent: float) -> bool:
    """At least REPEATS runs, and more while under MIN_SECONDS in all, so that a view of milliseconds is timed as
    steadily as one of seconds (the best run counts, for the engine and for the peers alike)."""
    return runs >= REPEATS and spent >= MIN_SECONDS


def timed(con, sql: str) -> float:
    best, runs, spent = float("inf"), 0, 0.0
    while not _enough(runs, spent):
        runs += 1
        start = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE _bench AS {sql}")
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return best


def engine_query(con, compiled, files: list[Path]) -> tuple[str, str]:
    """The query `joinedup views run` runs over these files (runner.file_queries: the first that runs) and which
    read it is: "typed" (read_json with typed columns) or "json paths" (read_ndjson_objects)."""
    queries = file_queries(compiled, files)
    for i, query in enumerate(queries):
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _probe AS {query}")  # every column, as the CLI writes them
        except Exception:
            if i == len(queries) - 1:
                raise
            continue
        return query, "typed" if i < len(queries) - 1 else "json paths"
    raise AssertionError("no query")  # pragma: no cover


def rows_of(con, sql: str) -> list[tuple]:
    return sorted(con.execute(sql).fetchall(), key=repr)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    copies = int(argv[argv.index("--copies") + 1]) if "--copies" in argv else 28
    patients = int(argv[argv.index("--patients") + 1]) if "--patients" in argv else 8000
    tmp = Path(tempfile.mkdtemp(prefix="joinedup-bench-views-"))
    try:
        synthea, ics = tmp / "synthea", tmp / "ics"
        synthea.mkdir()
        t0 = time.perf_counter()
        resources = replicate(synthea, copies)
        from joinedup.synth.service import generate

        generate(patients=patients, seed=42, out=ics, workers=2)
        print(f"data: {resources:,} Synthea-shaped resources ({copies} copies) and {patients:,} synthetic people "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)
        con = connect()
        con.execute("SET preserve_insertion_order = false")
        figures: dict[str, dict] = {}
        for name, view in VIEWS.items():
            compiled = compile_view(view)
            where = ics if compiled.resource == "Observation" else synthea
            files = ndjson_files(where, compiled.resource)
            names = ", ".join("'" + str(p) + "'" for p in files)
            hand = HAND[name].replace("{src}", f"(SELECT json AS j FROM read_ndjson_objects([{names}]))")
            engine_sql, read = engine_query(con, compiled, files)
            identical = rows_of(con, engine_sql) == rows_of(con, hand)
            n_rows = con.execute(f"SELECT count(*) FROM ({engine_sql})").fetchone()[0]
            t_engine, t_hand = timed(con, engine_sql), timed(con, hand)
            figures[name] = {"resource": compiled.resource, "rows": n_rows, "engine_seconds": round(t_engine, 3),
                             "hand_written_seconds": round(t_hand, 3), "ratio": round(t_engine / t_hand, 2),
                             "rows_identical": identical, "engine_read": read,
                             "rows_per_second": round(n_rows / t_engine)}
            print(f"{name}: {n_rows:,} rows, engine {t_engine:.2f}s, hand-written {t_hand:.2f}s "
                  f"(x{t_engine / t_hand:.2f}), identical rows: {identical}", flush=True)
        peers = {}
        if "--peers" in argv or "--reference" in argv:
            peers = _peers(con, argv, synthea, ics)
        con.close()
        result = {"synthea_resources": resources, "synthea_copies": copies, "synthetic_people": patients,
                  "repeats": REPEATS, "views": figures,
                  "max_ratio": max(f["ratio"] for f in figures.values()),
                  "all_rows_identical": all(f["rows_identical"] for f in figures.values())}
        if peers:
            result["peers"] = peers
        if "--spark" in argv:
            result["spark"] = _spark(synthea, ics)
        write_result("views", result)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _value(v):
    """One cell as a comparable value: numbers as floats (JSON has one number type), everything else as it is."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return round(float(v), 9)
    return str(v)


def _rows(rows: list[dict], columns: list[str]) -> list[tuple]:
    return sorted((tuple(_value(r.get(c)) for c in columns) for r in rows), key=repr)


def _peer_venv() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SQLONFHIR], check=True)
    return python


def _run_peer(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout)


def _peers(con, argv: list[str], synthea: Path, ics: Path) -> dict:
    """Time sqlonfhir and/or sof-js on each view and compare their rows with the engine's."""
    out: dict[str, dict] = {}
    python = _peer_venv() if "--peers" in argv else None
    reference = Path(argv[argv.index("--reference") + 1]).resolve() if "--reference" in argv else None
    for name, view in VIEWS.items():
        # Only the files named for the type: sqlonfhir fails on a line with no resourceType (the ICS's ground truth).
        resource = view["resource"]
        files = [str(f) for f in ndjson_files(ics if resource == "Observation" else synthea, resource)
                 if f.name.startswith(resource)]
        entry: dict[str, object] = {}
        if python is not None:
            cannot = SQLONFHIR_CANNOT.get(name, {})
            entry["sqlonfhir"] = _beside(con, [str(python), str(PEERS / "sqlonfhir_run.py")], name,
                                         {**view, "select": _without(view["select"], set(cannot))}, files,
                                         timed_runs=True) | {"columns_left_out": cannot}
            print(f"{name}: sqlonfhir {entry['sqlonfhir']}", flush=True)
        if reference is not None:
            entry["sof_js"] = _beside(con, ["node", str(PEERS / "sof_run.mjs"), str(reference)], name, view, files,
                                      timed_runs=False)
            print(f"{name}: sof-js {entry['sof_js']}", flush=True)
        out[name] = entry
    return out


def _beside(con, command: list[str], name: str, view: dict, files: list[str], *, timed_runs: bool) -> dict:
    """One peer (`command VIEW.json FILE...`, printing {"seconds", "rows"}) beside the engine on the same view and
    files: the peer's rows compared with the engine's, and both timed (the peer's best of at least REPEATS runs when
    `timed_runs`, else its one run: sof-js takes minutes a view)."""
    sql, _ = engine_query(con, compile_view(view), [Path(f) for f in files])
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description]
    ours = _rows([dict(zip(columns, r)) for r in cursor.fetchall()], columns)
    view_file = Path(tempfile.mkdtemp()) / f"{name}.json"
    view_file.write_text(json.dumps(view), encoding="utf-8")
    try:
        best, got, runs, spent = float("inf"), {}, 0, 0.0
        while runs == 0 or (timed_runs and not _enough(runs, spent)):
            got = _run_peer([*command, str(view_file), *files])
            if "error" in got:
                return {"error": got["error"]}
            runs, spent, best = runs + 1, spent + got["seconds"], min(best, got["seconds"])
    finally:
        shutil.rmtree(view_file.parent, ignore_errors=True)
    theirs = _rows(got["rows"], columns)  # the last run's rows (every run evaluates the same view on the same files)
    engine = timed(con, sql)
    return {"seconds": round(best, 3), "engine_seconds": round(engine, 4), "runs": runs, "rows": len(theirs),
            "rows_identical": theirs == ours,
            "rows_differing": sum(((Counter(theirs) - Counter(ours)) + (Counter(ours) - Counter(theirs))).values()),
            "engine_faster_by": round(best / engine, 1)}


def _spark(synthea: Path, ics: Path) -> dict:
    from joinedup.population.views import spark

    out: dict[str, dict] = {}
    start = time.perf_counter()
    spark.session()
    out["session_start_seconds"] = round(time.perf_counter() - start, 1)
    for name, view in VIEWS.items():
        target = Path(tempfile.mkdtemp()) / f"{name}.parquet"
        start = time.perf_counter()
        compiled, n = spark.run_view_on_files(view, ics if view["resource"] == "Observation" else synthea, target)
        out[name] = {"rows": n, "seconds": round(time.perf_counter() - start, 2)}
        shutil.rmtree(target.parent, ignore_errors=True)
        print(f"spark {name}: {n:,} rows in {out[name]['seconds']}s", flush=True)
    return out


if __name__ == "__main__":
    main()
