"""Registers and care gaps from a person's facts (`population.risk.facts`), as data in registers.yaml.

A person is on a register when a Condition recognised as one of its keys is recorded and not resolved (the QOF
*RES_COD clusters are, in FHIR, Condition.clinicalStatus resolved / inactive / remission), they meet its age limit
and, for frailty, when their eFI is at least the register's threshold. Each register's care processes are `done`
when evidence (a coded or named Observation, Procedure, Encounter or CarePlan) is dated within `every_months` of the
date of the worklist, `due` when that evidence expires within `due_soon_days`, else `overdue` (never done counts
as overdue).
"""

from __future__ import annotations

import calendar
import csv
from datetime import date, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from joinedup.population.risk.facts import LOINC, SNOMED, PersonFacts, phrase_in
from joinedup.population.risk.scores import efi


@lru_cache(maxsize=1)
def knowledge() -> dict[str, Any]:
    text = resources.files("joinedup.knowledge").joinpath("population/registers.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=1)
def codelists() -> dict[str, frozenset[str]]:
    """The published register code lists (OpenCodelists, versions in knowledge/conditions.yaml `codelists:`), read
    from the same file condition recognition uses: list id -> SNOMED CT codes."""
    path = resources.files("joinedup.knowledge").joinpath("terminology/codelists/snomed_conditions.csv")
    lists: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            lists.setdefault(row["codelist"], set()).add(row["code"])
    return {k: frozenset(v) for k, v in lists.items()}


def register_ids() -> list[str]:
    return list(knowledge()["registers"])


def months_before(day: date, months: int) -> date:
    y, m = divmod(day.month - 1 - months, 12)
    year, month = day.year + y, m + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def months_after(day: date, months: int) -> date:
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def registers_of(facts: PersonFacts, today: date, *, frailty: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The registers this person is on, with the condition entry that puts them there."""
    regs = knowledge()["registers"]
    age = facts.age_on(today)
    out = []
    for rid, r in regs.items():
        if r.get("min_age") is not None and (age is None or age < r["min_age"]):
            continue
        keys = set(r["keys"])
        listed = codelists().get(r.get("codelist") or "", frozenset())
        evidence = next((c.reference for c in facts.conditions
                         if c.active and (keys & set(c.keys) or listed & c.snomed)), None)
        if evidence is None and r.get("efi_at_least") is not None:
            f = frailty if frailty is not None else efi(facts, today)
            if f["value"] >= r["efi_at_least"]:
                evidence = f"eFI {f['value']:.2f} ({f['category']})"
        if evidence is not None:
            out.append({"register": rid, "display": r["display"], "evidence": evidence})
    return out


def _codes(spec: dict[str, Any]) -> set[str]:
    return {f"{LOINC}|{c}" for c in spec.get("loinc") or []} | {f"{SNOMED}|{c}" for c in spec.get("snomed") or []}


@lru_cache(maxsize=256)
def _codes_of(rid: str, pid: str) -> frozenset[str]:
    spec = next(p for p in knowledge()["care_processes"][rid] if p["id"] == pid)
    return frozenset(_codes(spec))


def last_done(facts: PersonFacts, rid: str, spec: dict[str, Any], today: date) -> tuple[date, str] | None:
    codes = _codes_of(rid, spec["id"])
    phrases = spec.get("text") or []
    best: tuple[date, str] | None = None
    for ev in facts.evidence:
        if ev.day > today:
            continue
        if (codes & ev.codes) or any(phrase_in(p, ev.text) for p in phrases):
            if best is None or ev.day > best[0]:
                best = (ev.day, ev.reference)
    return best


def care_processes(facts: PersonFacts, rid: str, today: date) -> list[dict[str, Any]]:
    kb = knowledge()
    soon = timedelta(days=kb["due_soon_days"])
    out = []
    for spec in kb["care_processes"].get(rid) or []:
        done = last_done(facts, rid, spec, today)
        if done is None:
            status, due_by = "overdue", None
        else:
            due_by = months_after(done[0], spec["every_months"])
            status = "overdue" if due_by <= today else "due" if due_by - today <= soon else "done"
        out.append({"process": spec["id"], "display": spec["display"], "every_months": spec["every_months"],
                    "status": status, "last_done": done[0].isoformat() if done else None,
                    "evidence": done[1] if done else None, "due_by": due_by.isoformat() if due_by else None,
                    "source": spec["source"]})
    return out


def person_registers(facts: PersonFacts, today: date, *, frailty: dict[str, Any] | None = None) -> dict[str, Any]:
    regs = registers_of(facts, today, frailty=frailty)
    for r in regs:
        r["care_processes"] = care_processes(facts, r["register"], today)
    gaps = [dict(process=p["process"], display=p["display"], register=r["register"], status=p["status"],
                 last_done=p["last_done"], due_by=p["due_by"])
            for r in regs for p in r["care_processes"] if p["status"] != "done"]
    return {"patient": f"Patient/{facts.id}", "registers": regs, "gaps": gaps,
            "overdue": sum(1 for g in gaps if g["status"] == "overdue"),
            "due": sum(1 for g in gaps if g["status"] == "due")}
