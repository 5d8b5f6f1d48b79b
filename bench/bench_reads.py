"""Reads on realistic records (issue 14 part 3), SQLite, with the durable audit (every read waits for its audit event).

Data: the repository's public Synthea sample replicated with fresh ids (`bench_import.synthea_shaped`) to
JOINEDUP_BENCH_READS_RESOURCES (default 35,800: 100 people), imported through the gate. Then, against
`joinedup serve --workers 2`:

* reads: `GET /fhir/Patient/{id}` for random people, 32 clients for 15 s (wrk): requests/s, p50/p99;
* entry reads: `GET /fhir/Condition/{id}` likewise (an entry of a record: the policy looks its person up);
* the summary API `GET /api/patients/{id}/summary` of the person with the largest record: p50/p95 (one client);
* `GET /fhir/Patient/{id}/$everything` of the person whose record is nearest 300 entries: p50/p95 (one client).

Beside each: the server's CPU per request (its process tree, from /proc), which a busy machine distorts far less
than rates and latencies, and for the wrk runs the load generator's own CPU per request (it shares the cores).

Writes bench/results/reads.json; goals from the issue: reads >= 4,000/s with p99 <= 30 ms, summary p95 <= 50 ms.
With JOINEDUP_BENCH_READS_DATABASE=postgresql the store is `<name>_reads` (dropped and created again) on the
PostgreSQL server JOINEDUP_BENCH_DATABASE_URL names, and the figures go to reads-postgresql.json.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.bench_import import synthea_shaped
from bench.common import Served, fresh_database, write_result, wrk

_SUBJECT = re.compile(rb'"(?:subject|patient|beneficiary)":\{"reference":"(?:urn:uuid:|Patient/)([^"]+)"')
_ID = re.compile(rb'^\{"resourceType":"(\w+)","id":"([^"]+)"')


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))], 2)


def _records(folder: Path) -> tuple[Counter, list[str], list[str]]:
    """(entries per person, patient ids, condition ids) from the NDJSON."""
    sizes: Counter[str] = Counter()
    patients, conditions = [], []
    for path in sorted(folder.glob("*.ndjson")):
        with path.open("rb") as fh:
            for line in fh:
                head = _ID.match(line)
                if head and head.group(1) == b"Patient":
                    patients.append(head.group(2).decode())
                    sizes[head.group(2).decode()] += 1
                    continue
                if head and head.group(1) == b"Condition":
                    conditions.append(head.group(2).decode())
                m = _SUBJECT.search(line)
                if m:
                    sizes[m.group(1).decode()] += 1
    return sizes, patients, conditions


def _lua_ids(path: str, ids: list[str], seed: int) -> str:
    listed = ",".join(f'"{i}"' for i in ids[:5000])
    return f"""
math.randomseed({seed})
local ids = {{{listed}}}
request = function()
  return wrk.format("GET", "{path}" .. ids[math.random(1, #ids)])
end
"""


def _tree_cpu(root: int) -> float:
    """CPU seconds used so far by a process and its descendants (from /proc): the server's cost, which a busy
    machine distorts far less than its requests/s."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        grew = bool(more)
        tree |= more
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def _with_cpu(srv: Served, run) -> tuple[dict, float]:
    before = _tree_cpu(srv.proc.pid)
    figures = run()
    return figures, _tree_cpu(srv.proc.pid) - before


def _children_cpu() -> float:
    """CPU seconds of this process's finished children: the load generator (wrk) once it has run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk_with_cpu(srv: Served, **kw) -> dict:
    """wrk against the server, with the server's CPU per request and the load generator's own (which shares the
    machine's cores with the server: a projection must count both)."""
    client = _children_cpu()
    figures, cpu = _with_cpu(srv, lambda: wrk(srv.url, **kw))
    n = max(1, figures["requests"] or 1)
    figures["server_cpu_ms_per_request"] = round(cpu * 1000 / n, 3)
    figures["client_cpu_ms_per_request"] = round((_children_cpu() - client) * 1000 / n, 3)
    return figures


def _timed(client: httpx.Client, url: str, n: int) -> list[float]:
    for _ in range(5):  # warm-up
        client.get(url)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text[:300]
    return out


def main() -> dict:
    target = int(os.environ.get("JOINEDUP_BENCH_READS_RESOURCES", "35800"))
    seconds = int(os.environ.get("JOINEDUP_BENCH_READS_SECONDS", "15"))
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-reads-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "synthea"
        total = synthea_shaped(data, target)
        kind = os.environ.get("JOINEDUP_BENCH_READS_DATABASE", "sqlite")
        db_url = fresh_database(kind, tmp, "reads")
        os.environ["JOINEDUP_DATABASE_URL"] = db_url
        from joinedup.governance.accounts import add_user, issue_token
        from joinedup.governance.gate import get_gate
        from joinedup.governance.identity import SYSTEM
        from joinedup.interop.bulk_import import import_paths

        gate = get_gate(db_url)
        report = import_paths(gate, SYSTEM, [data], workers=2, rejects=tmp / "rejects.ndjson")
        add_user(gate, name="bench-reads", role="system", display="Benchmark", replace=True)
        token = issue_token(gate, "bench-reads")
        gate.flush_audit()
        sizes, patients, conditions = _records(data)
        people = {p: sizes[p] for p in patients}
        largest, largest_n = max(people.items(), key=lambda kv: kv[1])
        near, near_n = min(people.items(), key=lambda kv: abs(kv[1] - 300))
        print(f"{total:,} resources ({report.read:,} imported, {report.rejected} rejected); largest record "
              f"{largest_n} entries; nearest 300: {near_n}", flush=True)
        with Served(db_url, workers=2) as srv:
            wrk(srv.url + "/fhir/metadata", token=token, seconds=3)  # warm-up
            load_before = os.getloadavg()[0]
            reads = _wrk_with_cpu(srv, token=token, script=_lua_ids("/fhir/Patient/", patients, 7), seconds=seconds)
            print(f"reads Patient: {reads}", flush=True)
            entries = _wrk_with_cpu(srv, token=token, script=_lua_ids("/fhir/Condition/", conditions, 11),
                                    seconds=seconds)
            print(f"reads Condition: {entries}", flush=True)
            with httpx.Client(base_url=srv.url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
                summary, summary_cpu = _with_cpu(srv, lambda: _timed(c, f"/api/patients/{largest}/summary", 100))
                everything, everything_cpu = _with_cpu(srv, lambda: _timed(c, f"/fhir/Patient/{near}/$everything",
                                                                           60))
                got = c.get(f"/fhir/Patient/{near}/$everything").json()
            load_after = os.getloadavg()[0]
    figures = {
        "data": f"Synthea sample replicated with fresh ids: {total:,} resources, {len(patients)} people",
        "database": ("sqlite (WAL)" if kind == "sqlite" else "postgresql (local, fsync on)")
                    + ", durable audit (each request waits for its audit event)",
        "server": "joinedup serve --workers 2",
        "reads_patient": reads,
        "reads_condition": entries,
        "summary_largest_record": {"entries": largest_n, "requests": len(summary), "p50_ms": _pct(summary, 50),
                                   "p95_ms": _pct(summary, 95), "mean_ms": round(statistics.fmean(summary), 2),
                                   # warm-up requests included (5 of 105)
                                   "server_cpu_ms_per_request": round(summary_cpu * 1000 / (len(summary) + 5), 2)},
        "everything_near_300": {"entries": near_n, "bundle_entries": len(got.get("entry") or []),
                                "requests": len(everything), "p50_ms": _pct(everything, 50),
                                "p95_ms": _pct(everything, 95),
                                "server_cpu_ms_per_request": round(everything_cpu * 1000 / (len(everything) + 5),
                                                                   2)},
        "load_average_1min": {"before": round(load_before, 1), "after": round(load_after, 1)},
        # what the CPU cost per read (the server's and the load generator's, on the same cores) allows on this
        # machine's cores if nothing else ran: a projection
        "projected_reads_per_s_idle_cores": round((os.cpu_count() or 1) * 1000
                                                  / max(reads["server_cpu_ms_per_request"]
                                                        + reads["client_cpu_ms_per_request"], 1e-3)),
        "goal": {"reads_per_s": 4000, "read_p99_ms": 30, "summary_p95_ms": 50},
    }
    write_result("reads" if kind == "sqlite" else f"reads-{kind}", figures)
    return figures


if __name__ == "__main__":
    main()
