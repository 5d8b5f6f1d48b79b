"""Shared outcome measures through the gate.

Figures are computed inside `Gate.published_figures` over the records of everyone who has not opted out (National
Data Opt-out: planning is a secondary use), and only numbers leave: with the analyst's `pseudonymised-analytics`
activity (action "extract", as de-identified extracts) or the partnership board's `assess-integration` (action
"assess"); the integration account may run either. Clinicians and other roles are refused by the gate. Every
published count then passes the platform's small-number suppression (`governance.deid.suppress`:
JOINEDUP_SUPPRESS_LOW/HIGH/ROUND), and a rate, share, mean or centile resting on a suppressed count is withheld."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.governance.policy import has_activity

from . import definitions as defs
from . import engine

PURPOSE = "planning:outcome-measures"
COUNTS = ("numerator", "denominator", "requests", "answered", "unanswered")


def catalogue() -> list[dict[str, Any]]:
    """Every measure's definition (no figures): for `GET /api/measures` and `joinedup measures list`."""
    return [defs.summary(d) for d in defs.measures().values()]


def chosen(measure_id: str | None, by: str | None) -> list[dict[str, Any]]:
    """The measures asked for, checked before anything is read (MeasureInputError: unknown measure or breakdown)."""
    if by is not None and by not in defs.BREAKDOWNS:
        raise defs.MeasureInputError(f"unknown breakdown '{by}' (one of {', '.join(defs.BREAKDOWNS)})")
    items = [defs.measure(measure_id)] if measure_id else list(defs.measures().values())
    if measure_id:
        defs.check_breakdown(items[0], by)
    elif by is not None:
        items = [d for d in items if by in d["breakdowns"]]
    return items


def raw_figures(gate: Gate, who: Principal, *, measure_id: str | None = None, by: str | None = None,
                today: date | None = None) -> dict[str, Any]:
    """Unsuppressed figures, computed inside the gate (numbers only)."""
    items = chosen(measure_id, by)
    today = today or date.today()

    def measure(records: Iterator[tuple[Any, list[Any]]], directory: dict[str, list[Any]]) -> dict[str, Any]:
        def resources() -> Iterator[dict[str, Any]]:
            for patient, entries in records:
                if patient.content:
                    yield patient.content
                for s in entries:
                    if s.content:
                        yield s.content
            for stored in directory.values():
                for s in stored:
                    if s.content:
                        yield s.content

        with tempfile.TemporaryDirectory(prefix="joinedup-measures-") as tmp:
            engine.write_resources(Path(tmp), resources())
            return engine.compute(Path(tmp), items, today=today, by=by)

    args = {"purpose": PURPOSE, "measure": measure, "types": set(engine.RESOURCE_TYPES) - {"Patient"},
            "directory_types": engine.DIRECTORY_TYPES}
    if who.role != "system" and has_activity(who, "assess-integration") and \
            not has_activity(who, "pseudonymised-analytics"):
        return gate.published_figures(who, **args)
    return gate.published_figures(who, action="extract", **args)


def _count(n: Any) -> int | str:
    return deid.suppress(int(n)) if n else 0


def _published(defn: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hidden = False
    for k in COUNTS:
        if k in cell:
            out[k] = _count(cell[k])
            hidden = hidden or out[k] == "*"
    for k in ("value", "mean_delay_days", "median_days", "p90_days"):
        if k not in cell:
            continue
        v = cell[k]
        resting = ("answered",) if k in ("median_days", "p90_days") else ("numerator", "denominator")
        if v is None or any(out.get(r) == "*" for r in resting) or (k == "value" and hidden):
            out[k] = None
        else:
            out[k] = round(float(v), 3 if defn["kind"] == "mean_index" else 2)
    return out


def publish(raw: dict[str, Any], *, by: str | None) -> dict[str, Any]:
    """The figures as published: each measure with its definition, period, total and breakdown, counts suppressed."""
    measures = []
    for mid, fig in raw.items():
        defn = defs.measure(mid)
        p = fig["period"]["all"]
        entry = {**defs.summary(defn),
                 "period_start": date.fromordinal(int(p["first"])).isoformat(),
                 "period_end": date.fromordinal(int(p["last"])).isoformat(),
                 "total": _published(defn, fig["total"]["all"])}
        if by:
            entry["by"] = by
            entry["groups"] = [{"group": k, **_published(defn, v)} for k, v in fig.get("groups", {}).items()]
        measures.append(entry)
    return {"purpose": PURPOSE, "measures": measures, "breakdowns": defs.BREAKDOWNS,
            "suppression": "counts from JOINEDUP_SUPPRESS_LOW to JOINEDUP_SUPPRESS_HIGH are shown as '*', others "
                           "rounded to a multiple of JOINEDUP_SUPPRESS_ROUND (governance.deid.suppress); a value "
                           "resting on a suppressed count is withheld (null)",
            "excluded": "people who opted out of secondary use (National Data Opt-out)"}


def run(gate: Gate, who: Principal, *, measure_id: str | None = None, by: str | None = None,
        today: date | None = None) -> dict[str, Any]:
    return publish(raw_figures(gate, who, measure_id=measure_id, by=by, today=today), by=by)
