"""One pass over people's records inside the gate: the resources written to NDJSON for the SQL views, then each
person's population segment (for the cost figures) and their registers, care processes and risk bands (for the
dashboard), computed for everyone at once in SQL over those files by `registers.population` (the rules of the risk
and register engines, which the person view applies one record at a time). Only counts leave this module."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from joinedup.population.registers import population

# the bands of population/service.py (risk distribution), repeated by name only: the values come from there
from joinedup.population.service import BANDS, RECORD_TYPES, multimorbidity_band

# the types whose entries count for the person whose record holds them (registers.population)
OWNED_TYPES = frozenset({"Condition", "Observation", "Procedure", "CarePlan", "Encounter", "MedicationRequest",
                         "MedicationStatement"})
WANTED_TYPES = frozenset(RECORD_TYPES) | {"Patient", "Encounter", "EpisodeOfCare", "Appointment", "Communication",
                                          "CarePlan", "Condition"}


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
              practice_key: dict[str, str] | None = None, *, with_registers: bool = True,
              timings: dict[str, dict[str, float]] | None = None) -> Tally:
    """Write every record's resources (the types the views read) to NDJSON files by type in `folder` and tally each
    living registered person's segments, registers, care processes and risk bands by practice.

    The registers, care processes and risk bands of everyone are then computed at once in SQL over those files
    (`registers.population`: the same rules as the person view, person by person); an entry whose subject is not
    the person whose record holds it (a linked record) is noted so that it counts for that person. `timings` gets
    the wall and CPU seconds of each part."""
    tally = Tally()
    handles: dict[str, Any] = {}
    keys = practice_key or {}
    owners: list[tuple[str, str, str]] = []
    t, c = time.perf_counter(), time.process_time()
    try:
        for patient, items in records:
            content = patient.content or {"resourceType": "Patient", "id": patient.id}
            _write(handles, folder, [content])
            contents = [s.content for s in items if s.content]
            _write(handles, folder, contents)
            pid = content.get("id")
            mine = f"Patient/{pid}"
            for res in contents:
                if res.get("resourceType") in OWNED_TYPES and (res.get("subject") or {}).get("reference") != mine:
                    owners.append((res["resourceType"], str(res.get("id")), str(pid)))
    finally:
        for fh in handles.values():
            fh.close()
    owners_file = folder / population.OWNERS_FILE
    population.write_owners(owners_file, owners)
    if timings is not None:
        timings["write_records"] = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c}
    with population.Population(folder, today, owners=owners_file, timings=timings) as pop:
        counted = pop.tallies()
    # segments for everyone registered (the cost counts people who died in the period); the registers, care
    # processes and risk figures only for the living
    tally.segments = counted["segments"]
    if not with_registers:
        return tally
    for name in ("people", "registers", "processes", "risk"):
        for practice, value in counted[name].items():
            key = keys.get(practice, practice)
            if name == "people":
                tally.people[key] = tally.people.get(key, 0) + value
                continue
            row = getattr(tally, name).setdefault(key, {})
            for k, n in value.items():
                row[k] = row.get(k, 0) + n
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
