"""One pass over people's records inside the gate: each person's population segment (for the cost figures) and their
registers, care processes and risk bands (for the dashboard), from the risk and register engines (which work person
by person), plus the resources written to NDJSON for the SQL views. Only counts leave this module."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from joinedup.population.registers import engine as registers
from joinedup.population.risk import facts as person_facts
from joinedup.population.risk import scores

# the bands of population/service.py (risk distribution), repeated by name only: the values come from there
from joinedup.population.service import BANDS, RECORD_TYPES, _band

WANTED_TYPES = frozenset(RECORD_TYPES) | {"Patient", "Encounter", "EpisodeOfCare", "Appointment", "Communication",
                                          "CarePlan", "Condition"}


def multimorbidity_band(n: int) -> str:
    return "0" if n == 0 else "1" if n == 1 else "2-3" if n <= 3 else "4+"


@dataclass
class Tally:
    """Counts per practice (ODS code or id) gathered person by person."""

    people: dict[str, int] = field(default_factory=dict)
    registers: dict[str, dict[str, int]] = field(default_factory=dict)       # practice -> register -> people
    processes: dict[str, dict[str, int]] = field(default_factory=dict)       # practice -> "reg|proc|status" -> n
    risk: dict[str, dict[str, int]] = field(default_factory=dict)            # practice -> "score|band" -> people
    segments: list[tuple[str, str, str, str]] = field(default_factory=list)  # person, mm, frailty, cms

    def add(self, table: dict[str, dict[str, int]], practice: str, key: str) -> None:
        row = table.setdefault(practice, {})
        row[key] = row.get(key, 0) + 1


def summarise(records: Iterable[tuple[Any, list[Any]]], folder: Path, today: date,
              practice_key: dict[str, str] | None = None, *, with_registers: bool = True) -> Tally:
    """Write every record's resources (the types the views read) to NDJSON files by type in `folder` and tally each
    living registered person's segments, registers, care processes and risk bands by practice."""
    tally = Tally()
    handles: dict[str, Any] = {}
    keys = practice_key or {}
    try:
        for patient, items in records:
            content = patient.content or {"resourceType": "Patient", "id": patient.id}
            _write(handles, folder, [content])
            contents = [s.content for s in items if s.content]
            _write(handles, folder, contents)
            facts = person_facts.build(content, contents)
            if facts.practice is None:
                continue
            frailty = scores.efi(facts, today)
            regs = registers.registers_of(facts, today, frailty=frailty)
            conditions = sum(1 for r in regs if r["register"] != "frailty")
            cms = scores.cambridge(facts, today)["score"]
            frailty_band = frailty["category"] if frailty["applies"] else "under 65"
            # segments for everyone registered (the cost counts people who died in the period); the registers,
            # care processes and risk figures only for the living
            tally.segments.append((facts.id, multimorbidity_band(conditions), frailty_band,
                                   _band("cambridge_multimorbidity_score", cms)))
            if not with_registers or facts.deceased:
                continue
            practice = keys.get(facts.practice, facts.practice)
            tally.people[practice] = tally.people.get(practice, 0) + 1
            tally.add(tally.risk, practice, f"cms|{_band('cambridge_multimorbidity_score', cms)}")
            tally.add(tally.risk, practice, f"multimorbidity|{multimorbidity_band(conditions)}")
            if frailty["applies"]:
                tally.add(tally.risk, practice, f"efi|{frailty['category']}")
            tally.add(tally.risk, practice, f"regular_medicines|{_band('regular_medicines', len(facts.medicines))}")
            for r in regs:
                tally.add(tally.registers, practice, r["register"])
                for p in registers.care_processes(facts, r["register"], today):
                    tally.add(tally.processes, practice, f"{r['register']}|{p['process']}|{p['status']}")
    finally:
        for fh in handles.values():
            fh.close()
    return tally


def write_directory(folder: Path, directory: dict[str, list[Any]]) -> None:
    handles: dict[str, Any] = {}
    try:
        for stored in directory.values():
            _write(handles, folder, [s.content for s in stored if s.content])
    finally:
        for fh in handles.values():
            fh.close()


def practice_codes(directory: dict[str, list[Any]]) -> dict[str, str]:
    """Organisation id -> ODS code, from the directory entries handed to the figures."""
    out = {}
    for s in directory.get("Organization", []):
        c = s.content or {}
        ods = next((i.get("value") for i in c.get("identifier") or []
                    if i.get("system") == "https://fhir.nhs.uk/Id/ods-organization-code"), None)
        out[s.id] = ods or s.id
    return out


def _write(handles: dict[str, Any], folder: Path, resources: Iterable[dict[str, Any]]) -> None:
    for res in resources:
        t = res.get("resourceType")
        if t is None:
            continue
        fh = handles.get(t)
        if fh is None:
            fh = handles[t] = (folder / f"{t}.ndjson").open("ab")
        fh.write(orjson.dumps(res) + b"\n")


def iter_ndjson_records(folder: Path) -> Iterator[tuple[Any, list[Any]]]:
    """Records grouped by person from a directory of NDJSON files (a generated ICS or a Bulk Data export), shaped
    as the gate hands them over (objects with .id and .content), for `--source DIR` runs and benchmarks. A generated
    ICS writes its people in chunks (Patient.0000.ndjson with Encounter.0000.ndjson, ...): read chunk by chunk, so
    memory holds one chunk at a time."""
    chunks = sorted({p.name.split(".")[1] for p in folder.glob("Patient.*.ndjson") if p.name.count(".") == 2})
    for chunk in chunks or [None]:
        paths = (sorted(folder.glob(f"*.{chunk}.ndjson")) if chunk is not None else
                 [p for p in sorted(folder.glob("*.ndjson")) if p.name != "ground-truth.ndjson"])
        yield from _grouped(paths)


def _grouped(paths: list[Path]) -> Iterator[tuple[Any, list[Any]]]:
    people: dict[str, dict[str, Any]] = {}
    items: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        if path.name.split(".")[0] not in WANTED_TYPES:
            continue
        with path.open("rb") as fh:
            for line in fh:
                r = orjson.loads(line)
                t = r.get("resourceType")
                if t == "Patient":
                    people[r["id"]] = r
                elif t in WANTED_TYPES:
                    ref = ((r.get("subject") or r.get("patient") or {}).get("reference") or "")
                    if ref.startswith("Patient/"):
                        items.setdefault(ref[8:], []).append(r)
    for pid, p in people.items():
        yield _Stored(pid, p), [_Stored(r.get("id", ""), r) for r in items.get(pid, [])]


def iter_ndjson_directory(folder: Path, types: Iterable[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for t in types:
        for path in sorted(folder.glob(f"{t}*.ndjson")):
            with path.open("rb") as fh:
                for line in fh:
                    r = orjson.loads(line)
                    out.setdefault(t, []).append(_Stored(r.get("id", ""), r))
    return out


@dataclass
class _Stored:
    id: str
    content: dict[str, Any]


__all__ = ["BANDS", "Tally", "iter_ndjson_directory", "iter_ndjson_records", "multimorbidity_band", "practice_codes",
           "summarise", "write_directory"]
