"""Bulk import on realistic records, beside the physical limit of this machine.

Data sets (realistic only; `bench.datagen` stays a labelled micro-benchmark in bench_store):
  * synthea: the repository's public Synthea export (tests/data/synthea-10-patients) replicated with fresh ids
    (every UUID re-keyed per copy, so references stay consistent) to >= JOINEDUP_BENCH_SYNTHEA_RESOURCES (200,000);
  * ics-N: the synthetic integrated care system of `joinedup generate` for N people (JOINEDUP_BENCH_ICS_PEOPLE,
    default "20000"; "20000,100000" for the issue's full set).
Databases: SQLite always; PostgreSQL when JOINEDUP_BENCH_DATABASE_URL names a server database (it is dropped and
re-created as <name>_bench). JOINEDUP_BENCH_IMPORT_DATABASES=postgresql (or sqlite) keeps one of them only, and
JOINEDUP_BENCH_SYNTHEA_RESOURCES=0 or JOINEDUP_BENCH_ICS_PEOPLE="" leaves out a data set (an A/B of one row;
JOINEDUP_BENCH_IMPORT_RESULT=NAME writes it to bench/results/NAME.json instead of import.json).

For each data set and database the benchmark prints and records:
  * baseline: the same NDJSON lines loaded unvalidated into one table with no indexes (SQLite executemany in one
    transaction; PostgreSQL COPY) - the physical limit of this machine and database;
  * import: `import_paths` through the gate (validation, NHS-number check, indexes, audit), resources/s, MB/s,
    ratio to the baseline, peak memory of the largest process, database size per 1,000 resources;
  * re-import of the unchanged data (idempotence path), resources/s.
Each import runs in its own process (peak memory is that process tree's largest resident set).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, fresh_database, write_result

SAMPLE = ROOT / "tests" / "data" / "synthea-10-patients"
UUID = re.compile(rb"[0-9a-f]{8}(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def synthea_shaped(out: Path, target: int) -> int:
    """Replicate the Synthea sample with fresh ids until it holds >= target resources; returns the count."""
    files = {p.name.removesuffix(".gz"): gzip.decompress(p.read_bytes()).splitlines()
             for p in sorted(SAMPLE.glob("*.ndjson.gz")) if not p.name.startswith("log.")}
    per_copy = sum(len(lines) for lines in files.values())
    copies = -(-target // per_copy)
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        body = b"\n".join(lines) + b"\n"
        with (out / name).open("wb") as fh:
            for k in range(copies):
                prefix = b"%08x" % (0xB0000000 + k)
                fh.write(UUID.sub(lambda m, p=prefix: p + m.group(1), body))
    return per_copy * copies


def ics(out: Path, people: int) -> int:
    """The synthetic integrated care system for `people` people; returns its resource count."""
    exe = Path(sys.executable).with_name("joinedup")
    subprocess.run([str(exe), "generate", "--patients", str(people), "--seed", "7", "--out", str(out),
                    "--today", "2026-11-01", "--quiet"], check=True)
    return sum(_lines(p) for p in _ndjson(out))


def _ndjson(folder: Path) -> list[Path]:
    from joinedup.interop.bulk_import import discover

    return discover([folder])


def _lines(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _run_child(args: list[str]) -> tuple[str, float, float]:
    """Run `python -m bench.bench_import ARGS` in a child; returns (its last output line, peak RSS MB, CPU seconds
    of the child and its workers - the figure that a busy machine distorts least)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_import", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, env=dict(os.environ))
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child {args[0]} failed: {out[-2000:]}")
    return out.strip().splitlines()[-1], usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def _child_baseline(db_url: str, folder: str) -> None:
    """The physical limit: every line into one unindexed table, no parsing, one transaction."""
    import sqlalchemy as sa

    paths = _ndjson(Path(folder))
    engine = sa.create_engine(db_url)
    t0 = time.perf_counter()
    n = 0
    if engine.dialect.name == "sqlite":
        import sqlite3

        con = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE raw (line BLOB)")
        with con:
            for p in paths:
                opener = gzip.open if p.suffix == ".gz" else open
                with opener(p, "rb") as fh:
                    batch = [(line,) for line in fh if line.strip()]
                con.executemany("INSERT INTO raw VALUES (?)", batch)
                n += len(batch)
        con.close()
    else:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            raw.execute("CREATE TABLE raw (line text)")
            with raw.cursor() as cur:
                with cur.copy("COPY raw (line) FROM STDIN") as copy:
                    for p in paths:
                        opener = gzip.open if p.suffix == ".gz" else open
                        with opener(p, "rb") as fh:
                            for line in fh:
                                if line.strip():
                                    copy.write_row((line.rstrip(b"\n").decode(),))
                                    n += 1
    print(f"{n} {time.perf_counter() - t0:.4f}")


def _child_import(db_url: str, folder: str, workers: str) -> None:
    from joinedup.governance.gate import get_gate
    from joinedup.governance.identity import SYSTEM
    from joinedup.interop.bulk_import import import_paths

    gate = get_gate(db_url)
    with tempfile.TemporaryDirectory() as tmp:
        report = import_paths(gate, SYSTEM, [Path(folder)], workers=int(workers), rejects=Path(tmp) / "rejects.ndjson")
    gate.flush_audit()
    stages = json.dumps({k: round(v, 3) for k, v in report.stages.items()}, separators=(",", ":"))
    print(f"{report.read} {report.seconds:.4f} {report.created} {report.updated} {report.unchanged} {report.rejected}"
          f" {stages}")


def _database_bytes(db_url: str) -> int:
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    return int(size)


def measure(name: str, folder: Path, resources: int, kind: str, tmp: Path, workers: int) -> dict:
    mb = sum(p.stat().st_size for p in _ndjson(folder)) / 1e6
    base_url = fresh_database(kind, tmp, f"raw_{name}")
    line, _, _ = _run_child(["baseline", base_url, str(folder)])
    n, secs = line.split()
    baseline_rate = int(n) / float(secs)
    db_url = fresh_database(kind, tmp, f"imp_{name}")
    load_at_start = os.getloadavg()[0]
    line, peak_mb, cpu = _run_child(["import", db_url, str(folder), str(workers)])
    read, secs, created, updated, unchanged, rejected, stages = line.split()
    rate = int(read) / float(secs)
    size = _database_bytes(db_url)
    line, _, r_cpu = _run_child(["import", db_url, str(folder), str(workers)])
    r_read, r_secs, _, r_updated, r_unchanged, _, _ = line.split()
    result = {
        "data": name, "database": kind, "resources": resources, "input_mb": round(mb, 1), "workers": workers,
        "baseline_resources_per_s": round(baseline_rate),
        "import_resources_per_s": round(rate), "import_mb_per_s": round(mb / float(secs), 1),
        "import_seconds": round(float(secs), 1), "ratio_to_baseline": round(rate / baseline_rate, 3),
        "created": int(created), "updated": int(updated), "unchanged": int(unchanged), "rejected": int(rejected),
        "peak_memory_mb": round(peak_mb, 1), "database_mb_per_1000_resources": round(size / 1e6 / int(read) * 1000, 2),
        "reimport_resources_per_s": round(int(r_read) / float(r_secs)),
        "reimport_unchanged": int(r_unchanged), "reimport_updated": int(r_updated),
        # CPU time of the importing processes (start-up included) per 1,000 resources, and what that CPU cost
        # would allow on this machine's cores if nothing else ran: a projection, labelled as such
        "import_cpu_ms_per_1000": round(cpu / int(read) * 1e6), "reimport_cpu_ms_per_1000": round(r_cpu / int(r_read) * 1e6),
        "projected_import_per_s_idle_cores": round((os.cpu_count() or 1) * int(read) / cpu),
        "projected_reimport_per_s_idle_cores": round((os.cpu_count() or 1) * int(r_read) / r_cpu),
        "load_average_1min_at_start": round(load_at_start, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        # where the import's time went (bulk_import.STAGES), per 1,000 resources: CPU of parsing, validating and
        # indexing in the workers, CPU and elapsed time of their writes, and the end of the load (deferred indexes
        # built, statistics refreshed); PostgreSQL's own CPU is in none of these
        "stages_ms_per_1000": {k: round(v / int(read) * 1e6, 1) for k, v in json.loads(stages).items()},
    }
    print(f"{name:>12} {kind:<10} import {rate:>8,.0f}/s ({mb / float(secs):5.1f} MB/s)  baseline "
          f"{baseline_rate:>9,.0f}/s  ratio {rate / baseline_rate:5.3f}  re-import {result['reimport_resources_per_s']:>8,}/s"
          f"  peak {peak_mb:6.0f} MB  {result['database_mb_per_1000_resources']} MB/1000", flush=True)
    print(f"{'':>24} cpu {result['import_cpu_ms_per_1000']} ms/1000, stages ms/1000 {result['stages_ms_per_1000']}"
          f", load {result['load_average_1min_at_start']} -> {result['load_average_1min_at_end']}", flush=True)
    if kind == "sqlite":
        for p in tmp.glob(f"*_{name}.db*"):
            p.unlink()
    return result


def main() -> dict:
    target = int(os.environ.get("JOINEDUP_BENCH_SYNTHEA_RESOURCES", "200000"))
    people = [int(x) for x in os.environ.get("JOINEDUP_BENCH_ICS_PEOPLE", "20000").split(",") if x.strip()]
    workers = int(os.environ.get("JOINEDUP_BENCH_IMPORT_WORKERS", "2"))
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get("JOINEDUP_BENCH_DATABASE_URL") else [])
    if os.environ.get("JOINEDUP_BENCH_IMPORT_DATABASES"):  # e.g. "postgresql": one database's rows only
        kinds = [k for k in kinds if k in os.environ["JOINEDUP_BENCH_IMPORT_DATABASES"].split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-import-") as tmp_name:
        tmp = Path(tmp_name)
        sets = []
        if target > 0:  # JOINEDUP_BENCH_SYNTHEA_RESOURCES=0: the ICS sets only
            folder = tmp / "synthea"
            sets.append(("synthea", folder, synthea_shaped(folder, target)))
        for p in people:
            folder = tmp / f"ics-{p}"
            sets.append((f"ics-{p}", folder, ics(folder, p)))
        print("data: " + ", ".join(f"{s[0]} {s[2]:,} resources" for s in sets), flush=True)
        for name, folder, n in sets:
            for kind in kinds:
                runs.append(measure(name, folder, n, kind, tmp, workers))
            shutil.rmtree(folder)
    figures = {"runs": runs, "targets": {"import_per_s": 10000, "reimport_per_s": 50000},
               "note": "baseline = the same lines loaded unvalidated into one unindexed table in one transaction"}
    write_result(os.environ.get("JOINEDUP_BENCH_IMPORT_RESULT", "import"), figures)
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        _child_baseline(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "import":
        _child_import(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
