"""Population health at scale (issue 18, part 7): every outcome measure, every register with its care processes, the
risk segments and the cost of care, timed on generated populations of increasing size; the same cost computation on
DuckDB and on Spark (to find where Spark wins); and the population dashboard's page time from precomputed figures.
Writes bench/results/population_scale.json.

Data: a generated ICS (`joinedup generate`, written in chunks - 5,000 people each at 100,000 - Patient.0000.ndjson
with Encounter.0000.ndjson, ...). Sizes are the first k chunks of it (BENCH_SCALE_ICS=DIR reuses one; otherwise
BENCH_SCALE_PATIENTS people, default 100,000, are generated first, which takes long on a loaded machine). Each size
runs the production code over the files (the engine's own cost, without the store; `bench_population` times the
per-person scores one by one, this times the whole dashboard's computation):

* registers: every register with its care processes and the risk bands (eFI, Cambridge score, long-term conditions,
  regular medicines) for everyone at once in SQL (`registers.population`: the SQL on FHIR views flattened on DuckDB,
  each distinct code recognised once, the rules of the data files as tables), as `population/cost/people.summarise`
  runs it inside the gate; each part and each register's care processes timed apart. `--person-path` also times
  the person view's path run for everyone (reading and grouping each record, recognising facts, every register and
  each register's care processes in Python, person by person: how the registers were computed before);
* measures: the SQL on FHIR views flattened once (DuckDB), then each measure in total and by every breakdown;
* cost: the cost tables and every breakdown (DuckDB), and the same statements (`cost.engine.tables`, common to both
  dialects) on Spark in local mode, with the SQL on FHIR views compiled for Spark; totals are checked equal;
* dashboard: the published document built at the largest size, kept in a SQLite store through
  `Gate.save_precomputed`, `joinedup serve` started, and the page fetched as an analyst.

The machine is shared by other agents (2 cores): every figure is recorded with its CPU seconds (this process;
Spark's JVM is another process, its CPU is not counted) and the 1-minute load average when it was taken. Sizes not
measured are projected linearly from the two largest measured and marked `projected`.

Run: python -m bench.bench_population_scale [--sizes 5000,20000,100000] [--spark] [--spark-max N] [--person-path]
     python -m bench.bench_population_scale --engines-only --sizes 5000,20000,50000,100000
       (the DuckDB-Spark comparison alone, every population segment left empty, Spark warmed up on the smallest
        size first; writes bench/results/population_scale_engines.json)
     BENCH_SCALE_ICS=DIR python -m bench.bench_population_scale --spark-all --sizes 5000,20000,1000000
       (every measure (each with every breakdown), every register with its care processes and risk bands, and the
        cost, on DuckDB and on Spark at each size: wall seconds, this process's CPU and the CPU of Spark's JVM (read
        from /proc for the java process among this process's children), whether both engines gave the same results,
        and where straight lines through the two largest sizes cross, in wall and in CPU seconds; Spark warmed up
        once on the first chunk; writes bench/results/population_scale_spark.json; --derive-spark recomputes the
        projections of that file)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Served, write_result  # noqa: E402

DIRECTORY = ("Organization", "PractitionerRole", "Practitioner", "Location", "HealthcareService")


class Timed:
    """Wall and CPU seconds of a block, with the load average at its end."""

    def __init__(self, into: dict[str, Any], name: str) -> None:
        self.into, self.name = into, name

    def __enter__(self) -> Timed:
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.into[self.name] = {"seconds": round(time.perf_counter() - self.t, 2),
                                "cpu_seconds": round(time.process_time() - self.c, 2),
                                "load_1min": round(os.getloadavg()[0], 1)}


def _chunks(ics: Path) -> list[str]:
    """Complete chunks of a generated ICS, in order (a chunk whose Patient file is empty is not complete)."""
    found = sorted(p.name.split(".")[1] for p in ics.glob("Patient.*.ndjson") if p.stat().st_size > 0)
    manifest = ics / "manifest.json"
    if not manifest.exists() and found:  # generation still running or stopped: the newest chunk may be partial
        found = found[:-1]
    return found


def _subset(ics: Path, chunks: list[str], out: Path) -> Path:
    """A folder holding the first chunks of the ICS (symbolic links) and its directory files."""
    out.mkdir(parents=True, exist_ok=True)
    for t in DIRECTORY:
        src = ics / f"{t}.ndjson"
        if src.exists():
            (out / src.name).symlink_to(src)
    for chunk in chunks:
        for src in ics.glob(f"*.{chunk}.ndjson"):
            (out / src.name).symlink_to(src)
    return out


def _people(folder: Path) -> int:
    n = 0
    for p in folder.glob("Patient.*.ndjson"):
        with p.open("rb") as fh:
            n += sum(1 for line in fh if b'"generalPractitioner"' in line)
    return n


def registers_sql(folder: Path, work: Path, today: date, out: dict[str, Any]) -> Path:
    """Every register with its care processes and the risk bands in SQL (`registers.population`, DuckDB over the SQL
    on FHIR views, as `cost.people.summarise` runs them inside the gate), timed part by part and each register's
    care processes apart: returns the segments CSV for the cost."""
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.registers import population

    parts: dict[str, dict[str, float]] = {}
    parts_t: dict[str, Any] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with population.Population(folder, today, timings=parts) as pop:
        with Timed(parts_t, "tallies"):
            counted = pop.tallies()
        sizes = {rid: n for rid, n in pop.db.fetch(
            "SELECT register, count(*) FROM member m JOIN person p ON p.id = m.person "
            "WHERE p.practice IS NOT NULL AND NOT p.deceased GROUP BY 1 ORDER BY 1")}
    out["registers"] = {"seconds": round(time.perf_counter() - t0, 2),
                        "cpu_seconds": round(time.process_time() - c0, 2), "load_1min": round(os.getloadavg()[0], 1),
                        "engine": "DuckDB (registers.population)",
                        "parts": {k: {"seconds": round(v["seconds"], 2), "cpu_seconds": round(v["cpu_seconds"], 2)}
                                  for k, v in parts.items() if not k.startswith("care_processes:")},
                        "care_processes_per_register": {
                            k.split(":", 1)[1]: {"seconds": round(v["seconds"], 3),
                                                 "cpu_seconds": round(v["cpu_seconds"], 3)}
                            for k, v in parts.items() if k.startswith("care_processes:")},
                        "tallies": {k: v for k, v in parts_t["tallies"].items() if k != "load_1min"},
                        "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                        "register_sizes_living_registered": sizes}
    seg = work / "segments.csv"
    cost_engine.write_segments(seg, counted["segments"])
    return seg


def registers_and_segments(folder: Path, work: Path, today: date, out: dict[str, Any]) -> Path:
    """The per-person part (the person view's path, run for everyone: `--person-path`), timed piece by piece:
    returns the segments CSV for the cost."""
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.cost import people
    from joinedup.population.registers import engine as registers
    from joinedup.population.risk import facts as person_facts
    from joinedup.population.risk import scores
    from joinedup.population.service import _band

    per_register: dict[str, float] = {}
    parts = {"read_and_group": 0.0, "recognise_facts": 0.0, "efi_and_cms": 0.0, "registers_of": 0.0}
    segs = []
    t0, c0 = time.perf_counter(), time.process_time()
    it = people.iter_ndjson_records(folder)
    while True:
        t = time.perf_counter()
        try:
            patient, items = next(it)
        except StopIteration:
            parts["read_and_group"] += time.perf_counter() - t
            break
        t1 = time.perf_counter()
        parts["read_and_group"] += t1 - t
        facts = person_facts.build(patient.content, [s.content for s in items])
        t2 = time.perf_counter()
        parts["recognise_facts"] += t2 - t1
        if facts.practice is None or facts.deceased:
            continue
        frailty = scores.efi(facts, today)
        cms = scores.cambridge(facts, today)["score"]
        t3 = time.perf_counter()
        parts["efi_and_cms"] += t3 - t2
        regs = registers.registers_of(facts, today, frailty=frailty)
        t4 = time.perf_counter()
        parts["registers_of"] += t4 - t3
        for r in regs:
            t5 = time.perf_counter()
            registers.care_processes(facts, r["register"], today)
            per_register[r["register"]] = per_register.get(r["register"], 0.0) + time.perf_counter() - t5
        conditions = sum(1 for r in regs if r["register"] != "frailty")
        segs.append((facts.id, people.multimorbidity_band(conditions),
                     frailty["category"] if frailty["applies"] else "under 65",
                     _band("cambridge_multimorbidity_score", cms)))
    out["registers_person_by_person"] = {
                        "seconds": round(time.perf_counter() - t0, 2),
                        "cpu_seconds": round(time.process_time() - c0, 2), "load_1min": round(os.getloadavg()[0], 1),
                        "parts_seconds": {k: round(v, 2) for k, v in parts.items()},
                        "care_processes_per_register_seconds": {k: round(v, 3) for k, v in sorted(per_register.items())}}
    seg = work / "segments.csv"
    cost_engine.write_segments(seg, segs)
    return seg


def measures_duckdb(folder: Path, today: date, out: dict[str, Any]) -> None:
    from joinedup.population.measures import definitions as mdefs
    from joinedup.population.measures import engine as mengine

    timings: dict[str, Any] = {}
    with Timed(timings, "flatten_views"):
        flat = mengine.Flattened(folder)
    try:
        for d in mdefs.measures().values():
            with Timed(timings, d["id"]):
                for by in [None, *d["breakdowns"]]:
                    flat.figures(d, today=today, by=by)
    finally:
        flat.close()
    out["measures"] = timings


def cost_duckdb(folder: Path, seg: Path, today: date, out: dict[str, Any]) -> dict[str, Any]:
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.cost import service as cost

    first, last = cost.period(today)
    timings: dict[str, Any] = {}
    with Timed(timings, "cost_duckdb"):
        raw = cost_engine.compute(folder, seg, first=first, last=last)
    out.update(timings)
    return raw


def cost_spark(folder: Path, seg: Path, today: date, out: dict[str, Any]) -> dict[str, float]:
    """The same cost statements on Spark: views compiled for Spark over the NDJSON text, then every table and the
    total and per-setting aggregates."""
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.cost import service as cost
    from joinedup.population.views import spark as sparkviews
    from joinedup.population.views.compiler import compile_view
    from joinedup.population.views.runner import ndjson_files

    spark = sparkviews.session()
    first, last = cost.period(today)
    t, c = time.perf_counter(), time.process_time()
    made = []
    for name, view in cost_engine.views().items():
        compiled = compile_view(view, "spark")
        files = ndjson_files(folder, compiled.resource)
        if files:
            frame = spark.read.text([str(p) for p in files]).withColumnRenamed("value", "resource")
        else:
            frame = spark.createDataFrame([], "resource string")
        src = f"src_{name}"
        frame.createOrReplaceTempView(src)
        spark.sql(compiled.query(src)).createOrReplaceTempView(f"v_{name}")
        made += [src, f"v_{name}"]
    spark.read.csv(str(seg), header=True, schema="person string, multimorbidity string, frailty string, cms string"
                   ).createOrReplaceTempView("segment")
    for name, sql in cost_engine.tables(first, last, "spark"):
        spark.sql(sql).cache().createOrReplaceTempView(name)
        made.append(name)
    people_sql, settings_sql = cost_engine.grouped_sql(None)
    total = spark.sql(people_sql).collect()
    settings = spark.sql(settings_sql).collect()
    for kind in ("q.practice_ods", *cost_engine.SEGMENT_KINDS):
        for q in cost_engine.grouped_sql(kind):
            spark.sql(q).collect()
    out["cost_spark"] = {"seconds": round(time.perf_counter() - t, 2), "cpu_seconds_python": round(
        time.process_time() - c, 2), "load_1min": round(os.getloadavg()[0], 1)}
    for name in made:
        spark.catalog.dropTempView(name)
    spark.catalog.clearCache()
    return {"people": float(total[0]["people"]), "cost": float(total[0]["cost"]),
            "contacts": float(sum(r["contacts"] for r in settings))}


def dashboard_page(folder: Path, today: date, out: dict[str, Any]) -> None:
    """Build the published document from the files, keep it through the gate, serve the app and time the page."""
    import httpx

    from joinedup.governance.accounts import add_user
    from joinedup.governance.gate import get_gate
    from joinedup.governance.identity import SYSTEM
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.cost import people
    from joinedup.population.dashboard import precompute
    from joinedup.population.measures import definitions as mdefs
    from joinedup.population.measures import engine as mengine
    from joinedup.population.registers.engine import months_before

    days = {name: months_before(today, back) for name, back in precompute.PERIODS.items()}
    chosen = list(mdefs.measures().values())
    timings: dict[str, float] = {}
    t = time.perf_counter()
    directory = people.iter_ndjson_directory(folder, set(mengine.DIRECTORY_TYPES) | set(cost_engine.DIRECTORY_TYPES))
    raw = precompute.figures_of(people.iter_ndjson_records(folder), directory, today=today, days=days, chosen=chosen,
                                timings=timings)
    orgs = {}
    for s in directory.get("Organization", []):
        c = s.content
        ods = next((i.get("value") for i in c.get("identifier") or []
                    if i.get("system") == "https://fhir.nhs.uk/Id/ods-organization-code"), None)
        part = ((c.get("partOf") or {}).get("reference") or "").removeprefix("Organization/") or None
        orgs[s.id] = {"id": s.id, "name": c.get("name") or s.id, "ods": ods, "part_of": part}
    doc = precompute.publish(raw, orgs=orgs, today=today, days=days, chosen=chosen)
    out["precompute_from_files"] = {"seconds": round(time.perf_counter() - t, 2),
                                    "parts_seconds": {k: round(v, 2) for k, v in timings.items()},
                                    "load_1min": round(os.getloadavg()[0], 1),
                                    "document_bytes": len(json.dumps(doc))}
    with tempfile.TemporaryDirectory(prefix="joinedup-dash-bench-") as tmp:
        url = f"sqlite:///{tmp}/dash.db"
        gate = get_gate(url)
        gate.save_precomputed(SYSTEM, precompute.KEY, doc, purpose=precompute.PURPOSE, seconds=None)
        add_user(gate, name="bench.analyst", role="analyst", password="bench-pw", replace=True)
        with Served(url, workers=1) as served, httpx.Client(base_url=served.url, timeout=60) as c:
            page = c.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            r = c.post("/login", data={"username": "bench.analyst", "password": "bench-pw", "next": "/",
                                       "csrf_token": token})
            assert r.status_code in (303, 200), r.status_code
            times = []
            for _ in range(7):
                t = time.perf_counter()
                r = c.get("/population/dashboard")
                times.append(time.perf_counter() - t)
                assert r.status_code == 200 and 'id="fig-cost-setting"' in r.text
            f = c.get("/population/dashboard", params={"area": f"practice:{next(iter(doc['organisations']['practice']))}",
                                                       "by": "age"})
            assert f.status_code == 200
            times.sort()
            out["dashboard_page"] = {"best_seconds": round(times[0], 3), "median_seconds": round(times[3], 3),
                                     "worst_seconds": round(times[-1], 3), "bytes": len(r.content),
                                     "load_1min": round(os.getloadavg()[0], 1)}


def _before_sql_registers() -> dict[str, Any]:
    """The figures measured before the registers moved to SQL (the person-by-person pass), per size, for
    before/after: taken from the results file this run replaces, and carried over by later runs."""
    from bench.common import RESULTS

    path = RESULTS / "population_scale.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    if "before_sql_registers" in doc:
        return doc["before_sql_registers"]
    return {str(r["size"]): {"registers": {k: r["registers"][k] for k in ("seconds", "cpu_seconds", "load_1min")},
                             "registers_parts_seconds": r["registers"].get("parts_seconds"),
                             "care_processes_per_register_seconds":
                                 r["registers"].get("care_processes_per_register_seconds"),
                             "measures": r.get("measures"), "every_measure_seconds": r.get("every_measure_seconds"),
                             "cost_duckdb": r.get("cost_duckdb")}
            for r in doc.get("runs", [])}


def _project(points: list[tuple[int, float]], n: int) -> float | None:
    """Linear projection to n people from the two largest measured sizes."""
    pts = sorted(p for p in points if p[1] is not None)
    if len(pts) < 2:
        return None
    (n1, t1), (n2, t2) = pts[-2], pts[-1]
    slope = (t2 - t1) / (n2 - n1) if n2 != n1 else 0.0
    return round(t2 + slope * (n - n2), 1)


def derive(figures: dict[str, Any]) -> None:
    """Figures derived from the measured runs: linear projections to the sizes beyond the largest measured (100,000
    and 1,000,000 people), marked projected. Spark is compared with DuckDB by `--engines-only` (warmed up), not here:
    the first Spark run of a process includes the JVM's warm-up."""
    runs = figures["runs"]
    largest = max(r["size"] for r in runs)
    proj: dict[str, Any] = {}
    for name, key in (("every_measure_seconds", lambda r: r["every_measure_seconds"]),
                      ("every_measure_cpu_seconds", lambda r: r.get("every_measure_cpu_seconds")),
                      ("every_register_seconds", lambda r: r["every_register_seconds"]),
                      ("every_register_cpu_seconds", lambda r: r["registers"]["cpu_seconds"]),
                      ("every_measure_and_register_cpu_seconds",
                       lambda r: r.get("every_measure_and_register_cpu_seconds")),
                      ("cost_duckdb_seconds", lambda r: r["cost_duckdb"]["seconds"])):
        pts = [(r["size"], key(r)) for r in runs]
        proj[name] = {str(n): _project(pts, n) for n in (100_000, 1_000_000) if n > largest}
    figures["projections"] = {"projected": True, "from": "straight line through the two largest measured sizes",
                              **proj}
    figures.pop("spark_cut_over", None)
    figures["spark_comparison"] = "bench/results/population_scale_engines.json (--engines-only)"


def _descendants_named(name: str) -> list[int]:
    """Processes among this process's descendants whose command is `name` (Spark's JVM: java)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.find("(") + 1:stat.rfind(")")], stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(rest[1]), []).append((int(d.name), comm))
    found, todo = [], [os.getpid()]
    while todo:
        for pid, comm in children.get(todo.pop(), []):
            todo.append(pid)
            if comm == name:
                found.append(pid)
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds of processes (utime and stime of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])
    return total / os.sysconf("SC_CLK_TCK")


class EngineTimed(Timed):
    """Wall seconds, this process's CPU and the CPU of Spark's JVM (when it runs) of a block."""

    def __enter__(self) -> EngineTimed:
        self.jvm = _descendants_named("java")
        self.j = _cpu_seconds(self.jvm)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        jvm = _descendants_named("java")
        if jvm:
            got = self.into[self.name]
            got["jvm_cpu_seconds"] = round(_cpu_seconds(jvm) - (self.j if jvm == self.jvm else 0.0), 2)
            got["cpu_seconds_all"] = round(got["cpu_seconds"] + got["jvm_cpu_seconds"], 2)


def _same(a: Any, b: Any) -> bool:
    """Equal figures; floats to 1e-9 relative (a sum of doubles may be added up in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-3)
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _every_measure(folder: Path, today: date, engine: str, into: dict[str, Any]) -> dict[Any, Any]:
    """Every measure with every breakdown on one engine, timed (flattening, then each measure)."""
    from joinedup.population.measures import definitions as mdefs
    from joinedup.population.measures import engine as mengine

    out: dict[Any, Any] = {}
    parts: dict[str, Any] = {}
    with EngineTimed(parts, "flatten_views"):
        flat = mengine.Flattened(folder, engine)
    try:
        for d in mdefs.measures().values():
            with EngineTimed(parts, d["id"]):
                for by in [None, *d["breakdowns"]]:
                    out[(d["id"], by)] = flat.figures(d, today=today, by=by)
    finally:
        flat.close()
    into["measures_parts"] = parts
    return out


def _every_register(folder: Path, today: date, engine: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from joinedup.population.registers import population

    with population.Population(folder, today, engine=engine) as pop:
        people, tallies = pop.people(), pop.tallies()
    tallies["segments"] = sorted(tallies["segments"])
    return people, tallies


def spark_all(args: argparse.Namespace) -> None:
    """Every measure, register and the cost on DuckDB and on Spark at each size (issue 18 part 7), with the results
    of the two compared."""
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.views import spark as sparkviews

    ics = Path(os.environ["BENCH_SCALE_ICS"])
    manifest = json.loads((ics / "manifest.json").read_text())
    today, per_chunk = date.fromisoformat(manifest["today"]), manifest["chunk_size"]
    chunks = _chunks(ics)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    figures: dict[str, Any] = {
        "note": "every measure (with every breakdown), every register with its care processes and risk bands, and "
                "the cost, on DuckDB (in this process) and on Spark (local[*], its JVM a child process) on this "
                "2-core machine shared with other agents; cpu_seconds: this process, jvm_cpu_seconds: Spark's JVM "
                "(/proc), cpu_seconds_all: both; "
                + ("Spark warmed up once on the first chunk (not counted)" if args.spark_warm_up else
                   "Spark not warmed up: the first size includes the JVM's warm-up"),
        "ics": {"chunks_available": len(chunks), "people_per_chunk": per_chunk, "today": today.isoformat()},
        "runs": []}
    t = time.perf_counter()
    sparkviews.session()
    figures["spark_session_start_seconds"] = round(time.perf_counter() - t, 1)
    with tempfile.TemporaryDirectory(prefix="joinedup-spark-all-") as tmp:
        if args.spark_warm_up:
            warm = _subset(ics, chunks[:1], Path(tmp) / "warm")
            _every_register(warm, today, "spark")
            _every_measure(warm, today, "spark", {})
        for size in sizes:
            k = max(1, size // per_chunk)
            if k > len(chunks):
                print(f"--- {size} people: only {len(chunks) * per_chunk} generated, skipped", flush=True)
                continue
            folder = _subset(ics, chunks[:k], Path(tmp) / f"n{size}")
            run: dict[str, Any] = {"size": size, "registered_people": _people(folder)}
            print(f"--- {size} people", flush=True)
            got: dict[str, Any] = {}
            for engine in ("duckdb", "spark"):
                e: dict[str, Any] = {}
                with EngineTimed(e, "every_register"):
                    people, tallies = _every_register(folder, today, engine)
                with EngineTimed(e, "every_measure"):
                    measures = _every_measure(folder, today, engine, e)
                seg = Path(tmp) / f"segments-{size}-{engine}.csv"
                cost_engine.write_segments(seg, tallies["segments"])
                if engine == "duckdb":
                    with EngineTimed(e, "cost"):
                        raw = cost_engine.compute(folder, seg, first=_cost_period(today)[0],
                                                  last=_cost_period(today)[1])
                    cost = {"people": float(raw["total"]["all"]["people"]), "cost": raw["total"]["all"]["cost"],
                            "contacts": float(sum(v["contacts"] for k2, v in raw["total"].items() if k2 != "all"))}
                else:
                    with EngineTimed(e, "cost"):
                        cost = cost_spark(folder, seg, today, {})
                e["every_measure_and_register_seconds"] = round(e["every_register"]["seconds"]
                                                                + e["every_measure"]["seconds"], 2)
                e["all_seconds"] = round(e["every_measure_and_register_seconds"] + e["cost"]["seconds"], 2)
                run[engine] = e
                got[engine] = (people, tallies, measures, cost)
                print(engine, json.dumps({k2: v for k2, v in e.items() if k2 != "measures_parts"}), flush=True)
            d, s = got["duckdb"], got["spark"]
            run["same_results"] = {"registers": d[0] == s[0] and d[1] == s[1], "measures": _same(d[2], s[2]),
                                   "cost": d[3]["people"] == s[3]["people"] and d[3]["contacts"] == s[3]["contacts"]
                                   and abs(d[3]["cost"] - s[3]["cost"]) < 0.01}
            figures["runs"].append(run)
            print(json.dumps(run["same_results"]), flush=True)
            write_result("population_scale_spark", figures)  # each size kept as soon as measured
    spark_projections(figures)
    write_result("population_scale_spark", figures)


def spark_projections(figures: dict[str, Any]) -> None:
    """Each run's CPU seconds (every measure, register and the cost: DuckDB's process; Spark's JVM and this
    process), and straight lines through the two largest sizes, in wall seconds and in CPU seconds (the CPU line does
    not depend on the machine's load, which the wall line does), projected to 1,000,000 people."""
    runs = figures["runs"]
    for r in runs:
        for engine in ("duckdb", "spark"):
            e = r[engine]
            e["all_cpu_seconds"] = round(sum(e[k].get("cpu_seconds_all", e[k]["cpu_seconds"])
                                             for k in ("every_register", "every_measure", "cost")), 2)
    if len(runs) < 2:
        return
    for name, key, what in (("spark_cut_over", "all_seconds", "wall seconds"),
                            ("spark_cut_over_cpu", "all_cpu_seconds", "CPU seconds")):
        (n1, d1, s1), (n2, d2, s2) = [(r["size"], r["duckdb"][key], r["spark"][key]) for r in runs[-2:]]
        dd, ds = (d2 - d1) / (n2 - n1), (s2 - s1) / (n2 - n1)
        if dd <= 0 or ds <= 0:  # time fell with size: warm-up or the machine's load, not the engines' growth
            figures[name] = {"people": None, "why": "a time fell from the smaller size to the larger "
                             "(warm-up or load): no growth to project; measure larger sizes"}
            continue
        figures[name] = _cut_over(n2, d2, s2, dd, ds, f"every measure, register and the cost, {what}")
        figures[name]["projected_1000000"] = {"duckdb": round(d2 + dd * (1_000_000 - n2)),
                                              "spark": round(s2 + ds * (1_000_000 - n2))}


def _cut_over(n2: int, d2: float, s2: float, dd: float, ds: float, what: str) -> dict[str, Any]:
    """Where straight lines through the two largest sizes cross (DuckDB at d2 seconds growing dd a person, Spark at
    s2 growing ds), projected."""
    return {"people": None if ds >= dd else round(n2 + (s2 - d2) / (dd - ds)), "projected": True,
            "duckdb_seconds_per_100k_people": round(dd * 100_000, 1),
            "spark_seconds_per_100k_people": round(ds * 100_000, 1),
            "how": f"where straight lines through the two largest sizes ({what}) cross; None: Spark's time grows as "
                   "fast or faster here, so on this machine it never catches up"}


def _cost_period(today: date) -> tuple[date, date]:
    from joinedup.population.cost import service as cost

    return cost.period(today)


def engines_only(args: argparse.Namespace) -> None:
    """The cost computation on DuckDB and on Spark at each size, after one warm-up run of Spark."""
    from joinedup.population.cost import engine as cost_engine
    from joinedup.population.views import spark as sparkviews

    ics = Path(os.environ["BENCH_SCALE_ICS"])
    manifest = json.loads((ics / "manifest.json").read_text())
    today, per_chunk = date.fromisoformat(manifest["today"]), manifest["chunk_size"]
    chunks = _chunks(ics)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    figures: dict[str, Any] = {"note": "DuckDB and Spark (local[*] on this 2-core machine, shared with other agents) "
                                       "on the same cost statements (cost.engine.tables), segments left empty; Spark "
                                       "warmed up once on the smallest size (not counted)", "runs": []}
    t = time.perf_counter()
    sparkviews.session()
    figures["spark_session_start_seconds"] = round(time.perf_counter() - t, 1)
    with tempfile.TemporaryDirectory(prefix="joinedup-engines-") as tmp:
        seg = Path(tmp) / "segments.csv"
        cost_engine.write_segments(seg, [])
        warm = _subset(ics, chunks[:max(1, sizes[0] // per_chunk)], Path(tmp) / "warm")
        cost_spark(warm, seg, today, {})
        for size in sizes:
            folder = _subset(ics, chunks[:max(1, size // per_chunk)], Path(tmp) / f"n{size}")
            run: dict[str, Any] = {"size": size}
            raw = cost_duckdb(folder, seg, today, run)
            got = cost_spark(folder, seg, today, run)
            run["same_totals"] = (got["people"] == raw["total"]["all"]["people"]
                                  and abs(got["cost"] - raw["total"]["all"]["cost"]) < 0.01)
            figures["runs"].append(run)
            print(json.dumps(run), flush=True)
    runs = figures["runs"]
    if len(runs) >= 2:
        (n1, d1, s1), (n2, d2, s2) = [(r["size"], r["cost_duckdb"]["seconds"], r["cost_spark"]["seconds"])
                                      for r in runs[-2:]]
        dd, ds = (d2 - d1) / (n2 - n1), (s2 - s1) / (n2 - n1)
        figures["spark_cut_over"] = _cut_over(n2, d2, s2, dd, ds, "the cost, wall seconds")
        for name, d0, slope in (("duckdb", d2, dd), ("spark", s2, ds)):
            figures[f"{name}_projected_1000000_seconds"] = round(d0 + slope * (1_000_000 - n2), 1)
    write_result("population_scale_engines", figures)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=os.environ.get("BENCH_SCALE_SIZES", ""))
    ap.add_argument("--spark", action="store_true", default=os.environ.get("BENCH_SCALE_SPARK") == "1")
    ap.add_argument("--spark-max", type=int, default=int(os.environ.get("BENCH_SCALE_SPARK_MAX", "100000")))
    ap.add_argument("--dashboard-size", type=int, default=int(os.environ.get("BENCH_SCALE_DASHBOARD", "0")),
                    help="people for the dashboard's document (default: the largest size)")
    ap.add_argument("--engines-only", action="store_true")
    ap.add_argument("--spark-all", action="store_true",
                    help="every measure, register and the cost on DuckDB and Spark at --sizes (BENCH_SCALE_ICS)")
    ap.add_argument("--no-spark-warm-up", dest="spark_warm_up", action="store_false",
                    help="--spark-all: no warm-up run of Spark before the first size")
    ap.add_argument("--person-path", action="store_true", default=os.environ.get("BENCH_SCALE_PERSON_PATH") == "1",
                    help="also time the registers person by person (the person view's path, as before the SQL pass)")
    ap.add_argument("--derive-only", action="store_true", help="recompute the derived figures of the last results")
    ap.add_argument("--derive-spark", action="store_true",
                    help="recompute the projections of the last --spark-all results")
    args = ap.parse_args(argv if argv is not None else [])
    if args.derive_only:
        from bench.common import RESULTS

        doc = json.loads((RESULTS / "population_scale.json").read_text())
        derive(doc)
        (RESULTS / "population_scale.json").write_text(json.dumps(doc, indent=2) + "\n")
        return
    if args.engines_only:
        engines_only(args)
        return
    if args.spark_all:
        spark_all(args)
        return
    if args.derive_spark:
        from bench.common import RESULTS

        path = RESULTS / "population_scale_spark.json"
        doc = json.loads(path.read_text())
        spark_projections(doc)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return
    from joinedup.synth import service as synth

    figures: dict[str, Any] = {"note": "machine shared with other agents (2 cores): wall seconds vary with the load "
                                       "average recorded beside each figure; cpu_seconds are this process's"}
    figures["before_sql_registers"] = _before_sql_registers()
    ics_env = os.environ.get("BENCH_SCALE_ICS")
    keep = None
    if ics_env:
        ics = Path(ics_env)
    else:
        keep = tempfile.TemporaryDirectory(prefix="joinedup-scale-")
        ics = Path(keep.name) / "ics"
        n = int(os.environ.get("BENCH_SCALE_PATIENTS", "100000"))
        gen: dict[str, Any] = {}
        with Timed(gen, "generate"):
            synth.generate(patients=n, seed=18, out=ics)
        figures["generate"] = {"patients": n, **gen["generate"]}
    manifest = ics / "manifest.json"
    today = date.fromisoformat(json.loads(manifest.read_text())["today"]) if manifest.exists() else date(2026, 6, 30)
    chunks = _chunks(ics)
    per_chunk = (json.loads(manifest.read_text()).get("chunk_size") if manifest.exists() else None) or 250
    available = len(chunks) * per_chunk
    default = {max(per_chunk, (available // 20) // per_chunk * per_chunk),
               max(per_chunk, (available // 5) // per_chunk * per_chunk), available}
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} or default)
    sizes = [s for s in sizes if s <= available] or [available]
    figures["ics"] = {"chunks_available": len(chunks), "people_per_chunk": per_chunk, "people_available": available,
                      "today": today.isoformat()}
    runs = []
    spark_start = None
    with tempfile.TemporaryDirectory(prefix="joinedup-scale-work-") as tmp:
        for size in sizes:
            k = max(1, size // per_chunk)
            work = Path(tmp) / f"n{size}"
            folder = _subset(ics, chunks[:k], work / "ics")
            run: dict[str, Any] = {"size": size, "registered_people": _people(folder)}
            print(f"--- {size} people", flush=True)
            seg = registers_sql(folder, work, today, run)
            if args.person_path:
                registers_and_segments(folder, work, today, run)
            measures_duckdb(folder, today, run)
            raw = cost_duckdb(folder, seg, today, run)
            duck = {"people": float(raw["total"]["all"]["people"]), "cost": round(raw["total"]["all"]["cost"], 2),
                    "contacts": float(sum(v["contacts"] for k2, v in raw["total"].items() if k2 != "all"))}
            run["cost_totals_duckdb"] = duck
            if args.spark and size <= args.spark_max:
                if spark_start is None:
                    from joinedup.population.views import spark as sparkviews

                    t = time.perf_counter()
                    sparkviews.session()
                    spark_start = round(time.perf_counter() - t, 1)
                got = cost_spark(folder, seg, today, run)
                run["cost_totals_spark"] = {k2: round(v, 2) for k2, v in got.items()}
                run["spark_same_as_duckdb"] = (got["people"] == duck["people"] and got["contacts"] == duck["contacts"]
                                               and abs(got["cost"] - duck["cost"]) < 0.01)
            m = run["measures"]
            run["every_measure_seconds"] = round(sum(v["seconds"] for v in m.values()), 2)
            run["every_measure_cpu_seconds"] = round(sum(v["cpu_seconds"] for v in m.values()), 2)
            run["every_register_seconds"] = run["registers"]["seconds"]
            run["every_measure_and_register_seconds"] = round(run["every_measure_seconds"]
                                                              + run["every_register_seconds"], 2)
            run["every_measure_and_register_cpu_seconds"] = round(run["every_measure_cpu_seconds"]
                                                                  + run["registers"]["cpu_seconds"], 2)
            runs.append(run)
            print(json.dumps(run, indent=1), flush=True)
        figures["runs"] = runs
        if spark_start is not None:
            figures["spark_session_start_seconds"] = spark_start
        dash_size = args.dashboard_size or runs[-1]["size"]
        dash: dict[str, Any] = {}
        dashboard_page(_subset(ics, chunks[:max(1, dash_size // per_chunk)], Path(tmp) / "dash" / "ics"), today, dash)
        figures["dashboard"] = {"size": dash_size, **dash}
    if keep is not None:
        keep.cleanup()
    derive(figures)
    write_result("population_scale", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
