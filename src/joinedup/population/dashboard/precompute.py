"""`joinedup population precompute`: every dashboard figure computed once, through the gate, and kept published.

One pass over the records inside `Gate.published_figures` (people who opted out of secondary use excluded, only
numbers leave, audited) writes them to NDJSON and computes over those files, for the current period and the one
before it, every outcome measure in total and by each of its breakdowns (the measures engine: SQL on FHIR views,
DuckDB), the cost and activity of care (population/cost), and, as at the reference date, the register sizes with
their care processes done, due or overdue and the risk segments, for the whole ICS, each PCN and each practice (in
SQL for everyone at once: `registers.population`). They are then published with the platform's small-number
suppression (the measures' own `publish`, the cost report's `publish`, `governance.deid.suppress` for the rest: a
count is suppressed at the level it is shown, never added up from suppressed counts) and kept by
`Gate.save_precomputed`, so the dashboard reads one stored document and answers in well under a second."""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.population import service as population
from joinedup.population.cost import engine as cost_engine
from joinedup.population.cost import people
from joinedup.population.cost import service as cost
from joinedup.population.measures import definitions as mdefs
from joinedup.population.measures import engine as mengine
from joinedup.population.measures import service as measures
from joinedup.population.registers import engine as registers
from joinedup.population.registers.engine import months_before

KEY = "population-dashboard"
PURPOSE = "planning:population-dashboard"
PERIODS = {"current": 0, "previous": 12}  # months back from the reference date
STATUSES = ("done", "due", "overdue")


def _levels(per_practice: dict[str, dict[str, int]], orgs: dict[str, dict[str, Any]]
            ) -> dict[str, dict[str, dict[str, int]]]:
    """Raw counts per practice -> {"ics": {"all": ...}, "pcn": {ods: ...}, "practice": {ods: ...}} (unsuppressed)."""
    pcn_of = _pcn_of(orgs)
    out: dict[str, dict[str, dict[str, int]]] = {"ics": {"all": {}}, "pcn": {}, "practice": {}}
    for practice, counts in per_practice.items():
        targets = [out["ics"]["all"], out["practice"].setdefault(practice, {})]
        if pcn_of.get(practice):
            targets.append(out["pcn"].setdefault(pcn_of[practice], {}))
        for k, n in counts.items():
            for t in targets:
                t[k] = t.get(k, 0) + n
    return out


def _pcn_of(orgs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Practice ODS code -> PCN ODS code, from the directory."""
    out = {}
    for o in orgs.values():
        parent = orgs.get(o.get("part_of") or "")
        if o.get("ods") and parent and parent.get("ods"):
            out[o["ods"]] = parent["ods"]
    return out


def figures_of(records, directory, *, today: date, days: dict[str, date], chosen: list[dict[str, Any]],
               timings: dict[str, float]) -> dict[str, Any]:
    """Every dashboard figure, unsuppressed numbers only: the function run inside `Gate.published_figures` (and by
    the population-scale benchmark over files). `timings` gets the seconds of each part."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="joinedup-dashboard-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        people.write_directory(folder, directory)
        parts: dict[str, dict[str, float]] = {}
        tally = people.summarise(records, folder, today, people.practice_codes(directory), timings=parts)
        timings["records_registers_risk"] = time.perf_counter() - t
        for name, spent in parts.items():  # writing the records, then the registers' SQL pass part by part
            if not name.startswith("care_processes:"):
                timings[f"records_registers_risk:{name}"] = spent["seconds"]
        seg = folder / "segments.csv"
        cost_engine.write_segments(seg, tally.segments)
        out["tally|people"] = tally.people
        for name, table in (("registers", tally.registers), ("processes", tally.processes),
                            ("risk", tally.risk)):
            for practice, counts in table.items():
                out[f"tally|{name}|{practice}"] = counts
        t = time.perf_counter()
        flat = mengine.Flattened(folder)
        try:
            for pname, day in days.items():
                for d in chosen:
                    for by in [None, *d["breakdowns"]]:
                        out[f"measure|{pname}|{by or 'total'}|{d['id']}"] = flat.figures(d, today=day, by=by)
        finally:
            flat.close()
        timings["measures"] = time.perf_counter() - t
        t = time.perf_counter()
        for pname, day in days.items():
            first, last = cost.period(day)
            raw = cost_engine.compute(folder, seg, first=first, last=last)
            for k, v in raw.items():
                out[f"cost|{pname}|{k}"] = v
        timings["cost"] = time.perf_counter() - t
    return out


def compute(gate: Gate, who: Principal, *, today: date | None = None) -> dict[str, Any]:
    """Every dashboard figure, published (suppressed), as one document."""
    today = today or date.today()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    days = {name: months_before(today, back) for name, back in PERIODS.items()}
    chosen = list(mdefs.measures().values())

    raw = gate.published_figures(who, purpose=PURPOSE, action="extract", measure=lambda records, directory: figures_of(
                                     records, directory, today=today, days=days, chosen=chosen, timings=timings),
                                 types=set(people.WANTED_TYPES) - {"Patient"},
                                 directory_types=tuple(set(mengine.DIRECTORY_TYPES) | set(cost_engine.DIRECTORY_TYPES)))
    t = time.perf_counter()
    orgs = population.organisations(gate, who)
    doc = publish(raw, orgs=orgs, today=today, days=days, chosen=chosen)
    timings["publish"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    doc["timings_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return doc


def publish(raw: dict[str, Any], *, orgs: dict[str, dict[str, Any]], today: date, days: dict[str, date],
            chosen: list[dict[str, Any]]) -> dict[str, Any]:
    kb = registers.knowledge()
    pcn_of = _pcn_of(orgs)
    names = {o["ods"]: o["name"] for o in orgs.values() if o.get("ods")}
    practices = sorted({k.split("|", 2)[2] for k in raw if k.startswith("tally|registers|")} |
                       set(raw.get("tally|people", {})))
    doc: dict[str, Any] = {
        "version": 1, "date": today.isoformat(),
        "periods": {p: {"end": d.isoformat()} for p, d in days.items()},
        "organisations": {"practice": {p: {"name": names.get(p, p), "pcn": pcn_of.get(p)} for p in practices},
                          "pcn": {c: {"name": names.get(c, c)} for c in sorted(set(pcn_of.get(p) for p in practices)
                                                                                - {None})}},
        "suppression": measures.publish({}, by=None)["suppression"],
        "excluded": "people who opted out of secondary use (National Data Opt-out); registers, care processes and risk "
                    "segments also leave out people recorded as deceased",
        "purpose": PURPOSE,
    }
    # outcome measures: the measures' own publish (definitions, periods, suppression)
    mout: dict[str, dict[str, Any]] = {}
    for key, fig in raw.items():
        if not key.startswith("measure|"):
            continue
        _, pname, by, mid = key.split("|", 3)
        published = measures.publish({mid: fig}, by=None if by == "total" else by)["measures"][0]
        mout.setdefault(pname, {}).setdefault(mid, {})[by] = published
    doc["measures"] = mout
    doc["measure_order"] = [d["id"] for d in chosen]
    # cost: the cost report's publish for each period
    cout = {}
    for pname in days:
        prefix = f"cost|{pname}|"
        part = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        cout[pname] = cost.publish(part)
    doc["cost"] = cout
    # registers, care processes and risk segments, suppressed at each level
    per = {name: {k.split("|", 2)[2]: v for k, v in raw.items() if k.startswith(f"tally|{name}|")}
           for name in ("registers", "processes", "risk")}
    people_levels = _levels({p: {"people": n} for p, n in raw.get("tally|people", {}).items()}, orgs)
    reg_levels = _levels(per["registers"], orgs)
    proc_levels = _levels(per["processes"], orgs)
    risk_levels = _levels(per["risk"], orgs)
    doc["registers"] = {level: {g: _registers(reg_levels[level].get(g, {}), proc_levels[level].get(g, {}),
                                              people_levels[level].get(g, {}).get("people", 0), kb)
                                for g in people_levels[level]} for level in ("ics", "pcn", "practice")}
    doc["risk"] = {level: {g: _risk(risk_levels[level].get(g, {}), people_levels[level].get(g, {}).get("people", 0))
                           for g in people_levels[level]} for level in ("ics", "pcn", "practice")}
    doc["register_catalogue"] = {rid: {"display": r["display"], "source": r["source"],
                                       "processes": {p["id"]: {"display": p["display"], "every_months": p["every_months"],
                                                               "source": p["source"]}
                                                     for p in kb["care_processes"].get(rid) or []}}
                                 for rid, r in kb["registers"].items()}
    doc["register_rules"] = kb["business_rules"]
    doc["risk_bands"] = {"cms": [b for _, b in population.BANDS["cambridge_multimorbidity_score"]],
                         "multimorbidity": ["0", "1", "2-3", "4+"], "efi": ["fit", "mild", "moderate", "severe"],
                         "regular_medicines": [b for _, b in population.BANDS["regular_medicines"]]}
    return doc


def _registers(sizes: dict[str, int], processes: dict[str, int], list_size: int, kb: dict[str, Any]
               ) -> dict[str, Any]:
    out = {"list_size": deid.suppress(list_size) if list_size else 0, "registers": {}}
    for rid in kb["registers"]:
        n = sizes.get(rid, 0)
        shown = deid.suppress(n) if n else 0
        procs = {}
        for p in kb["care_processes"].get(rid) or []:
            counts = {s: processes.get(f"{rid}|{p['id']}|{s}", 0) for s in STATUSES}
            total = sum(counts.values())
            cell: dict[str, Any] = {s: (deid.suppress(c) if c else 0) for s, c in counts.items()}
            hidden = shown == "*" or total == 0 or any(v == "*" for v in cell.values())
            for s in STATUSES:
                cell[f"{s}_pct"] = None if hidden else round(100.0 * counts[s] / total, 1)
            procs[p["id"]] = cell
        prevalence = None if shown == "*" or not list_size or out["list_size"] == "*" else round(100.0 * n / list_size, 2)
        out["registers"][rid] = {"people": shown, "prevalence_pct": prevalence, "processes": procs}
    return out


def _risk(counts: dict[str, int], people_n: int) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for key, n in counts.items():
        score, band = key.split("|", 1)
        out.setdefault(score, {})[band] = deid.suppress(n) if n else 0
    return {"people": deid.suppress(people_n) if people_n else 0, "scores": out}


def run(gate: Gate, who: Principal, *, today: date | None = None) -> dict[str, Any]:
    """Compute, publish and keep the dashboard's figures; returns what was kept (with when)."""
    started = time.perf_counter()
    doc = compute(gate, who, today=today)
    seconds = time.perf_counter() - started
    doc["computed_at"] = gate.save_precomputed(who, KEY, doc, purpose=PURPOSE, seconds=seconds)
    return doc
