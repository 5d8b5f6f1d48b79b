"""Shared care record benchmark: bulk import throughput (a micro-benchmark on small generated resources; realistic
import is bench_import), then FHIR read/search over HTTP (32 clients).

Figures: import resources/s over >= 1M generated resources (SQLite, WAL); reads and searches per second with
p50/p99 latency from wrk against `joinedup serve --workers 2`. Scale with JOINEDUP_BENCH_RESOURCES.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import Served, write_result, wrk
from bench.datagen import write_population


def main() -> dict:
    n = int(os.environ.get("JOINEDUP_BENCH_RESOURCES", "1000000"))
    workers = int(os.environ.get("JOINEDUP_BENCH_IMPORT_WORKERS", "2"))
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        counts = write_population(tmp_path / "data", n)
        gen_s = time.perf_counter() - t0
        total = sum(counts.values())
        patients = counts["Patient"]
        print(f"generated {total:,} resources ({patients:,} patients) in {gen_s:.1f}s")

        db_url = f"sqlite:///{tmp_path / 'bench.db'}"
        os.environ["JOINEDUP_DATABASE_URL"] = db_url
        from joinedup.governance.accounts import add_user, issue_token
        from joinedup.governance.gate import get_gate
        from joinedup.governance.identity import SYSTEM
        from joinedup.interop.bulk_import import import_paths

        gate = get_gate(db_url)
        report = import_paths(gate, SYSTEM, [tmp_path / "data"], workers=workers)
        gate.flush_audit()
        print(f"imported {report.read:,} resources in {report.seconds:.1f}s = {report.rate:,.0f}/s "
              f"({report.rejected} rejected)")
        add_user(gate, name="bench", role="system", replace=True)
        token = issue_token(gate, "bench")

        read_script = f"""
math.randomseed(7)
request = function()
  return wrk.format("GET", string.format("/fhir/Patient/bp-%07d", math.random(0, {patients - 1})))
end
"""
        search_script = f"""
math.randomseed(11)
local codes = {{"8867-4", "8480-6", "2823-3", "4548-4"}}
request = function()
  local p = string.format("bp-%07d", math.random(0, {patients - 1}))
  local c = codes[math.random(1, 4)]
  return wrk.format("GET", "/fhir/Observation?patient=" .. p .. "&code=http://loinc.org|" .. c .. "&_count=20")
end
"""
        with Served(db_url, workers=2) as srv:
            wrk(srv.url + "/fhir/metadata", token=token, seconds=3)  # warm-up
            reads = wrk(srv.url, token=token, script=read_script, seconds=15)
            print(f"reads: {reads}")
            searches = wrk(srv.url, token=token, script=search_script, seconds=15)
            print(f"searches: {searches}")
    figures = {
        "resources": total,
        "import": {"resources_per_s": round(report.rate), "seconds": round(report.seconds, 1),
                   "rejected": report.rejected, "workers": workers, "database": "sqlite (WAL)",
                   "data": "micro-benchmark: small generated resources (bench.datagen); import on realistic records "
                           "(Synthea-shaped, synthetic ICS) is bench/results/import.json"},
        "read": reads,
        "search": searches,
        "floor": {"import_per_s": 5000, "reads_per_s": 1000, "read_p99_ms": 50},
        "goal": {"import_per_s": 20000, "reads_per_s": 4000},
    }
    figures["meets_floor"] = (report.rate >= 5000 and (reads["requests_per_s"] or 0) >= 1000
                              and (reads["p99_ms"] or 1e9) <= 50)
    write_result("store", figures)
    return figures


if __name__ == "__main__":
    main()
