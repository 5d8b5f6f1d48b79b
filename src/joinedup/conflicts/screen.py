"""Population screen: conflict detection (no resolution) over every record, streamed through the gate.

Records arrive one person at a time from `Gate.records` (checked once and audited as one population access with
its purpose and count), so memory stays constant in the population size; only the worklist rows of people with
findings are kept.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from joinedup.fhir import codes
from joinedup.governance.identity import Principal

from .detect import build_record, detect
from .knowledge import load_knowledge
from .models import SEVERITY_ORDER

SEVERITIES = ("critical", "high", "moderate", "low")
SCREEN_TYPES = {"Condition", "MedicationStatement", "MedicationRequest", "Observation", "AllergyIntolerance",
                "Immunization"}
NHS_NUMBER = codes.NHS_NUMBER
UNREGISTERED = "(no registered practice)"
PURPOSE = "conflict-screen"
WORKLIST_COLUMNS = ["patient", "name", "nhs_number", "birth_date", "practice", "practice_name", "highest",
                    "critical", "high", "moderate", "low", "total", "rules", "summaries"]
PRACTICE_COLUMNS = ["practice", "practice_name", "screened", "flagged", "critical", "high", "moderate", "low"]


class ScreenError(ValueError):
    """Bad screen parameters (message is one line, safe to show)."""


@dataclass
class ScreenResult:
    """A finished screen: the worklist (most severe first), counts per practice and totals."""

    worklist: list[dict[str, Any]]
    practices: list[dict[str, Any]]
    screened: int
    flagged: int
    seconds: float
    knowledge_version: str
    filters: dict[str, Any] = field(default_factory=dict)
    generated: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON document written by the CLI and served (paged) by the API."""
        return {"generated": self.generated, "knowledge_version": self.knowledge_version, "filters": self.filters,
                "screened": self.screened, "flagged": self.flagged, "seconds": round(self.seconds, 3),
                "practices": self.practices, "worklist": self.worklist}


def check_severity(severity: str | None) -> str:
    """Validate a minimum severity (default: low, i.e. every finding)."""
    s = (severity or "low").strip().lower()
    if s not in SEVERITY_ORDER:
        raise ScreenError(f"severity must be one of {', '.join(SEVERITIES)}, not '{severity}'")
    return s


def practice_of(patient: dict[str, Any], source: str | None = None) -> str:
    """Registered practice: the first Organization in Patient.generalPractitioner, else meta.source."""
    for gp in patient.get("generalPractitioner") or []:
        ref = gp.get("reference") if isinstance(gp, dict) else None
        if isinstance(ref, str) and ref.startswith("Organization/"):
            return ref
    src = (patient.get("meta") or {}).get("source") or source
    return src if isinstance(src, str) and src else UNREGISTERED


def _name(patient: dict[str, Any]) -> str:
    for n in patient.get("name") or []:
        if not isinstance(n, dict):
            continue
        if n.get("text"):
            return str(n["text"])
        given = " ".join(str(g) for g in n.get("given") or [])
        family = str(n.get("family") or "")
        if family or given:
            return f"{family.upper()}, {given}".strip(", ") if family else given
    return ""


def _nhs_number(patient: dict[str, Any]) -> str:
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == NHS_NUMBER and ident.get("value"):
            return str(ident["value"])
    return ""


def _practice_matcher(gate: Any, who: Principal, practice: str | None) -> Callable[[str], bool] | None:
    """Accept `Organization/id`, a bare id, a meta.source value or an organisation name."""
    if not practice:
        return None
    want = {practice.strip(), f"Organization/{practice.strip()}"}
    if "/" not in practice:
        result = gate.search(who, "Organization", [("name", practice.strip())], max_count=1000,
                             query_text=f"Organization?name={practice.strip()}")
        want.update(f"Organization/{s.id}" for s in result.matches)
    return lambda p: p in want


def iter_screen(*, gate: Any, who: Principal, severity: str | None = None, practice: str | None = None,
                today: date | None = None, progress: Callable[[int], None] | None = None,
                every: int = 500, shard: tuple[int, int] | None = None, include_deceased: bool = False
                ) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Stream (practice, row or None) per person in store order; a row only when the person is flagged. People
    recorded as deceased (`Patient.deceased[x]`) are left out altogether (not screened, not counted) unless
    `include_deceased`."""
    kb = load_knowledge()
    threshold = SEVERITY_ORDER[check_severity(severity)]
    matcher = _practice_matcher(gate, who, practice)
    today = today or date.today()
    n = 0
    for patient, items in gate.records(who, purpose=PURPOSE, types=SCREEN_TYPES, shard=shard):
        n += 1
        if progress is not None and n % every == 0:
            progress(n)
        p = patient.content
        if not include_deceased and (p.get("deceasedBoolean") is True or p.get("deceasedDateTime")):
            continue
        prac = practice_of(p, getattr(patient, "source", None))
        if matcher is not None and not matcher(prac):
            continue
        resources = [p, *(s.content for s in items)]
        findings = detect(kb, build_record(kb, resources, today=today), include_deceased=include_deceased)
        if not findings or SEVERITY_ORDER[findings[0].severity] > threshold:
            yield prac, None
            continue
        # one finding per rule and summary: duplicate records of one medicine from several sources would
        # otherwise be counted once per combination
        findings = list({(f.rule, f.summary): f for f in findings}.values())
        counts = dict.fromkeys(SEVERITIES, 0)
        for f in findings:
            counts[f.severity] += 1
        yield prac, {
            "patient": f"Patient/{patient.id}", "name": _name(p), "nhs_number": _nhs_number(p),
            "birth_date": str(p.get("birthDate") or ""), "practice": prac, "practice_name": "",
            "highest": findings[0].severity, **counts, "total": len(findings),
            "rules": list(dict.fromkeys(f.rule for f in findings)),
            "summaries": list(dict.fromkeys(f.summary for f in findings)),
        }
    if progress is not None:
        progress(n)


def _sort_key(row: dict[str, Any]) -> tuple:
    return (SEVERITY_ORDER[row["highest"]], -row["critical"], -row["high"], -row["moderate"], -row["low"],
            row["patient"])


def _practice_names(gate: Any, who: Principal, refs: list[str]) -> dict[str, str]:
    ids = [r.split("/", 1)[1] for r in refs if r.startswith("Organization/")]
    names: dict[str, str] = {}
    for i in range(0, len(ids), 100):
        chunk = ids[i:i + 100]
        result = gate.search(who, "Organization", [("_id", ",".join(chunk)), ("_count", "100")],
                             query_text="Organization?_id=(practices in screen)")
        for s in result.matches:
            names[f"Organization/{s.id}"] = str(s.content.get("name") or "")
    return names


def _tally(rows: Iterator[tuple[str, dict[str, Any] | None]], per_practice: dict[str, dict[str, Any]],
           worklist: list[dict[str, Any]]) -> int:
    screened = 0
    for prac, row in rows:
        screened += 1
        c = per_practice.get(prac)
        if c is None:
            c = per_practice[prac] = {"practice": prac, "practice_name": "", "screened": 0, "flagged": 0,
                                      **dict.fromkeys(SEVERITIES, 0)}
        c["screened"] += 1
        if row is not None:
            c["flagged"] += 1
            for s in SEVERITIES:
                c[s] += row[s]
            worklist.append(row)
    return screened


_shared_count = None


def _init_shard(counter) -> None:
    global _shared_count
    _shared_count = counter


def _screen_shard(db_url: str, who: Principal, severity: str, practice: str | None, today: date | None,
                  shard: tuple[int, int], include_deceased: bool = False
                  ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], int]:
    """One process's share of a population screen (spawned: its own connections and gate)."""
    from joinedup.governance.gate import get_gate

    gate = get_gate(db_url)
    last = 0

    def progress(n: int) -> None:
        nonlocal last
        if _shared_count is not None:
            with _shared_count.get_lock():
                _shared_count.value += n - last
        last = n

    per_practice: dict[str, dict[str, Any]] = {}
    worklist: list[dict[str, Any]] = []
    try:
        screened = _tally(iter_screen(gate=gate, who=who, severity=severity, practice=practice, today=today,
                                      progress=progress, every=200, shard=shard,
                                      include_deceased=include_deceased), per_practice, worklist)
    finally:
        gate.flush_audit()
    return per_practice, worklist, screened


def screen_population(*, gate: Any, who: Principal, severity: str | None = None, practice: str | None = None,
                      today: date | None = None, progress: Callable[[int], None] | None = None,
                      workers: int = 1, include_deceased: bool = False) -> ScreenResult:
    """Screen every record the principal may see: detection only, streamed (constant memory per person).

    workers > 1 splits the population between processes (each reads its share through the gate).
    """
    sev = check_severity(severity)
    started = time.perf_counter()
    per_practice: dict[str, dict[str, Any]] = {}
    worklist: list[dict[str, Any]] = []
    if workers <= 1:
        screened = _tally(iter_screen(gate=gate, who=who, severity=sev, practice=practice, today=today,
                                      progress=progress, include_deceased=include_deceased),
                          per_practice, worklist)
    else:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        screened = 0
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_shard,
                                 initargs=(counter,)) as pool:
            pending = {pool.submit(_screen_shard, gate.database_url, who, sev, practice, today, (k, workers),
                                   include_deceased) for k in range(workers)}
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if progress is not None:
                    progress(counter.value)
                for fut in done:
                    part, rows, n = fut.result()
                    screened += n
                    worklist.extend(rows)
                    for prac, c in part.items():
                        mine = per_practice.setdefault(prac, {**c, "screened": 0, "flagged": 0,
                                                               **dict.fromkeys(SEVERITIES, 0)})
                        for key in ("screened", "flagged", *SEVERITIES):
                            mine[key] += c[key]
    names = _practice_names(gate, who, sorted(per_practice)) if per_practice else {}
    for ref, c in per_practice.items():
        c["practice_name"] = names.get(ref, "")
    for row in worklist:
        row["practice_name"] = names.get(row["practice"], "")
    worklist.sort(key=_sort_key)
    practices = sorted(per_practice.values(), key=lambda c: (-c["flagged"], c["practice"]))
    return ScreenResult(worklist=worklist, practices=practices, screened=screened, flagged=len(worklist),
                        seconds=time.perf_counter() - started, knowledge_version=load_knowledge().version,
                        filters={"severity": sev, "practice": practice,
                                 **({"include_deceased": True} if include_deceased else {})},
                        generated=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def write_outputs(result: ScreenResult, *, out: Path, formats: set[str]) -> list[Path]:
    """Write worklist.csv + practices.csv and/or screen.json into `out` (created); returns the files written."""
    if out.exists() and not out.is_dir():
        raise ScreenError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScreenError(f"cannot create {out}: {exc.strerror or exc}") from None
    written: list[Path] = []
    if "csv" in formats:
        p = out / "worklist.csv"
        with p.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=WORKLIST_COLUMNS)
            w.writeheader()
            for row in result.worklist:
                w.writerow({**row, "rules": "; ".join(row["rules"]), "summaries": " | ".join(row["summaries"])})
        written.append(p)
        p = out / "practices.csv"
        with p.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=PRACTICE_COLUMNS)
            w.writeheader()
            w.writerows(result.practices)
        written.append(p)
    if "json" in formats:
        p = out / "screen.json"
        p.write_bytes(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2))
        written.append(p)
    return written
