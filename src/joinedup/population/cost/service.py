"""Cost and activity of care across settings, through the gate.

Figures are computed inside `Gate.published_figures` (as the outcome measures are: people who opted out of secondary
use excluded, only numbers leave, audited) for analysts (action "extract"), the partnership board ("assess") and the
integration account. Published with the platform's small-number suppression (`governance.deid.suppress`): counts of
people and of contacts from JOINEDUP_SUPPRESS_LOW to _HIGH are '*', others rounded; a cost or a rate resting on a
suppressed count of people or contacts is withheld (null). Costs are rounded to the nearest GBP 100."""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.governance.policy import has_activity
from joinedup.population.registers.engine import months_before

from . import engine, people

PURPOSE = "planning:cost-of-care"
BREAKDOWNS = ("setting", "practice", "pcn", "multimorbidity", "frailty", "cms")
SUPPRESSION = ("counts of people and contacts from JOINEDUP_SUPPRESS_LOW to JOINEDUP_SUPPRESS_HIGH are shown as '*', "
               "others rounded to a multiple of JOINEDUP_SUPPRESS_ROUND (governance.deid.suppress); a cost or a "
               "rate resting on a suppressed count of people or contacts is withheld (null); costs are rounded to the nearest "
               "GBP 100, hours and weeks of care to the nearest 10, costs per person to the penny")


def period(today: date) -> tuple[date, date]:
    """The 12 months ending on `today` (the outcome measures' period)."""
    return months_before(today, 12) + timedelta(days=1), today


def action_for(who: Principal) -> str:
    if who.role != "system" and has_activity(who, "assess-integration") and \
            not has_activity(who, "pseudonymised-analytics"):
        return "assess"
    return "extract"


def measure_cost(records, directory, *, today: date) -> dict[str, Any]:
    """The figure function run inside the gate (also by `--source DIR` runs over files)."""
    first, last = period(today)
    with tempfile.TemporaryDirectory(prefix="joinedup-cost-") as tmp:
        folder = Path(tmp)
        people.write_directory(folder, directory)
        tally = people.summarise(records, folder, today, with_registers=False)
        seg = folder / "segments.csv"
        engine.write_segments(seg, tally.segments)
        return engine.compute(folder, seg, first=first, last=last)


def raw_figures(gate: Gate, who: Principal, *, today: date | None = None) -> dict[str, Any]:
    today = today or date.today()
    return gate.published_figures(
        who, purpose=PURPOSE, action=action_for(who),
        types=set(people.WANTED_TYPES) - {"Patient"}, directory_types=engine.DIRECTORY_TYPES,
        measure=lambda records, directory: measure_cost(records, directory, today=today))


def _count(n: Any) -> int | str:
    return deid.suppress(int(n)) if n else 0


def _money(v: float | None) -> int | None:
    """A published cost: to the nearest GBP 100 (with a price per contact, an exact cost would give the exact count
    that the rounding of counts hides)."""
    return None if v is None else int(round(v / 100.0)) * 100


def _cell(all_row: dict[str, Any], settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One group's figures as published: people, cost, cost per person, and per setting contacts per person."""
    n = int(all_row.get("people", 0))
    shown = _count(n)
    hidden = shown == "*" or n == 0
    out: dict[str, Any] = {"people": shown, "people_with_activity": _count(all_row.get("people_with_activity", 0)),
                           "cost": None if hidden else _money(all_row.get("cost", 0.0)),
                           "cost_per_person": None if hidden else round(all_row.get("cost", 0.0) / n, 2)}
    per = {}
    for setting in engine.schedule()["settings"]:
        s = settings.get(setting) or {"contacts": 0, "units": 0.0, "cost": 0.0, "people": 0}
        contacts, users = _count(s["contacts"]), _count(s["people"])
        withheld = hidden or "*" in (contacts, users)  # a cost over a suppressed count would give the count back
        per[setting] = {"contacts": contacts, "people": users,
                        "cost": None if withheld else _money(s["cost"]),
                        "cost_per_person": None if withheld else round(s["cost"] / n, 2),
                        "contacts_per_person": None if withheld else round(s["contacts"] / n, 3)}
    out["settings"] = per
    return out


def _unit(activity: str) -> str | None:
    """What an activity's units are when they are not simply its count (hours, weeks), else None."""
    rule = engine.activities()[activity]
    if rule.get("units") == "hours":
        return "hours"
    if "type_text" in rule:
        return "weeks"
    return None


def _groups(grouped: dict[str, dict[str, dict[str, Any]]], order: list[str] | None = None) -> list[dict[str, Any]]:
    keys = [k for k in (order or []) if k in grouped] + sorted(k for k in grouped if k not in (order or []))
    return [{"group": k, **_cell(grouped[k]["all"], {s: v for s, v in grouped[k].items() if s != "all"})}
            for k in keys]


def schedule_summary() -> dict[str, Any]:
    """The unit costs and assumptions as shown on the page and in the report."""
    s = engine.schedule()
    return {"version": s["version"], "currency": s["currency"], "price_year": s["price_year"], "source": s["source"],
            "unit_costs": [{"id": k, **v} for k, v in s["unit_costs"].items()],
            "assumptions": [{"id": k, **v} for k, v in s["assumptions"].items()],
            "settings": s["settings"],
            "activities": [{"activity": r["activity"], "setting": r["setting"], "price": r["price"],
                            **({"short_price": r["short_price"]} if r.get("short_price") else {})}
                           for r in s["encounter_rules"] + s["episode_rules"]]}


def publish(raw: dict[str, Any]) -> dict[str, Any]:
    s = engine.schedule()
    p = raw["period"]
    total = raw["total"]
    out = {"purpose": PURPOSE, "period_start": date.fromordinal(int(p["first"])).isoformat(),
           "period_end": date.fromordinal(int(p["last"])).isoformat(),
                      "definition": ("Activity in the 12 months to the period end of the people registered with a practice and "
                          "alive at some time in the period (records linked to them included), each contact "
                          "or care-package week priced with the national unit cost of the schedule; cost per "
                          "person = total cost / people in the group"),
           "total": _cell(total["all"], {k: v for k, v in total.items() if k != "all"}),
           "activities": [{"activity": k, "setting": engine.activities()[k]["setting"],
                           "count": _count(v["count"]), "people": _count(v["people"]),
                           "unit": _unit(k),
                           "units": (None if "*" in (_count(v["people"]), _count(v["count"])) or _unit(k) is None
                                     else int(round(v["units"] / 10.0)) * 10),
                           "cost": None if "*" in (_count(v["people"]), _count(v["count"])) else _money(v["cost"])}
                          for k, v in sorted(raw["activities"].items())],
           "segments": {kind: {"display": s["segments"][kind]["display"],
                               "groups": _groups(raw[f"segment:{kind}"], s["segments"][kind]["bands"])}
                        for kind in engine.SEGMENT_KINDS},
           "practice": _groups(raw["practice"]), "pcn": _groups(raw["pcn"]),
           "not_counted": {k: _count(v) for k, v in raw["not_counted"].items()},
           "schedule": schedule_summary(), "suppression": SUPPRESSION,
           "excluded": "people who opted out of secondary use (National Data Opt-out)",
           "settings": s["settings"]}
    return out


def run(gate: Gate, who: Principal, *, today: date | None = None) -> dict[str, Any]:
    return publish(raw_figures(gate, who, today=today))


def rows(report: dict[str, Any], by: str | None = None) -> list[dict[str, Any]]:
    """The report as flat rows (CSV): one per group and setting, for the breakdown asked for (default: all)."""
    out = []

    def add(breakdown: str, group: str, cell: dict[str, Any]) -> None:
        out.append({"breakdown": breakdown, "group": group, "setting": "all", "people": cell["people"],
                    "contacts": "", "cost": cell["cost"], "cost_per_person": cell["cost_per_person"],
                    "contacts_per_person": ""})
        for setting, v in cell["settings"].items():
            out.append({"breakdown": breakdown, "group": group, "setting": setting, "people": cell["people"],
                        "contacts": v["contacts"], "cost": v["cost"], "cost_per_person": v["cost_per_person"],
                        "contacts_per_person": v["contacts_per_person"]})

    if by in (None, "setting"):
        add("total", "all", report["total"])
    for kind in ("practice", "pcn"):
        if by in (None, kind):
            for g in report[kind]:
                add(kind, g["group"], g)
    for kind in engine.SEGMENT_KINDS:
        if by in (None, kind):
            for g in report["segments"][kind]["groups"]:
                add(kind, g["group"], g)
    return out
