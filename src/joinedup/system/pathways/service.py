"""Pathway analytics through the gate.

Figures (the process map, variants, gaps, guideline comparisons) are computed inside the gate over the whole
population of people who have not opted out (National Data Opt-out: planning is a secondary use) and only numbers
leave: `Gate.published_figures` with the analyst's activity (and for the integration account), or the board's for the
partnership board. `publish` then suppresses every count (`governance.deid.suppress`, JOINEDUP_SUPPRESS_LOW/HIGH/
ROUND: counts from LOW to HIGH shown as "fewer than HIGH+1", others rounded) and withholds any median or share
resting on a suppressed count.

The record-level event log (`event_log`) follows the principal's path: an analyst gets de-identified records
(`Gate.deidentified_records`: pseudonyms, dates to the month, opt-outs excluded); anyone else `Gate.records` with a
purpose (a professional only the people they have a legitimate relationship with; a secondary purpose excludes
opt-outs).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from joinedup import config
from joinedup.fhir.errors import FhirError
from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.governance.policy import has_activity
from joinedup.system.service import promise_of

from .analysis import Figures, Period, Promise, promise_from
from .definitions import activities, activity_of_code, code_of, name_of, pathways
from .events import Trace, trace

RECORD_TYPES = {"Encounter", "Appointment", "Communication", "ServiceRequest", "Task", "CarePlan", "EpisodeOfCare",
                "Condition"}
SECONDARY = ("planning", "research", "commissioning", "analytics")
PURPOSES = ("direct-care", *SECONDARY)
ADVICE_OFFER = "advice-and-guidance"
DEFAULT_DAYS = 365


def is_analyst(who: Principal) -> bool:
    return who.role != "system" and has_activity(who, "pseudonymised-analytics")


def period_of(start: str | None, end: str | None, *, today: date | None = None) -> Period:
    """The period from `start` to `end` inclusive (ISO dates); by default the 365 days to today. Bad input: 400."""
    today = today or datetime.now(UTC).date()

    def day(value: str | None, name: str) -> date | None:
        if value is None or not value.strip():
            return None
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise FhirError(400, f"{name} '{value}' is not a date (use YYYY-MM-DD)", code="invalid") from None

    last = day(end, "to") or today
    first = day(start, "from") or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise FhirError(400, f"from {first.isoformat()} is after to {last.isoformat()}", code="invalid")
    return Period(datetime(first.year, first.month, first.day, tzinfo=UTC),
                  datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1))


def promises(directory: dict[str, list[Any]]) -> dict[str, Promise]:
    """The response-time promise for each service and organisation asked, from the services directory: a
    HealthcareService's own; for an organisation, the longest promise among its services offering advice and
    guidance (advice) or among all its services (referrals) - the benefit of the doubt goes to the service."""
    out: dict[str, Promise] = {}
    for s in directory.get("HealthcareService", []):
        hs = s.content if hasattr(s, "content") else s
        if not hs or hs.get("active") is False:
            continue
        p = promise_from(promise_of(hs))
        if p is None:
            continue
        advice = any(c.get("code") == ADVICE_OFFER for cc in hs.get("characteristic") or ()
                     for c in cc.get("coding") or ())
        for kind in ("advice", "referral") if advice else ("referral",):
            out[f"{kind}:HealthcareService/{hs.get('id')}"] = p
            org = ((hs.get("providedBy") or {}).get("reference") or "")
            if org.startswith("Organization/"):
                key = f"{kind}:{org}"
                if key not in out or p.deadline(_EPOCH) > out[key].deadline(_EPOCH):
                    out[key] = p
    return out


_EPOCH = datetime(2001, 1, 1, tzinfo=UTC)  # a Monday: compares promises in working and calendar days alike


def raw_figures(gate: Gate, who: Principal, *, period: Period, now: datetime | None = None) -> dict[str, Any]:
    """The figures for `period` as at `now`, through the gate (numbers only, not yet suppressed)."""
    now = now or datetime.now(UTC)

    def measure(records, directory) -> dict[str, Any]:
        fig = Figures(period, now, promises(directory))
        for patient, items in records:
            fig.add(trace(patient.content, [s.content for s in items if s.content is not None]))
        return fig.result()

    args = {"purpose": "planning:pathways", "measure": measure, "types": RECORD_TYPES,
            "directory_types": ("HealthcareService",)}
    if who.role != "system" and has_activity(who, "assess-integration") and \
            not has_activity(who, "pseudonymised-analytics"):
        return gate.published_figures(who, **args)
    return gate.published_figures(who, action="extract", **args)


def _count(n: int) -> int | str:
    return deid.suppress(n) if n else 0


def shown(value: int | str) -> str:
    """A published count in words: '*' becomes 'fewer than N'."""
    if value == "*":
        return f"fewer than {config.value('SUPPRESS_HIGH') + 1}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _share(num: int, den: int) -> int | None:
    if not den or _count(num) == "*" or _count(den) == "*":
        return None
    return round(100 * num / den)


def publish(raw: dict[str, Any], *, period: Period, now: datetime | None = None) -> dict[str, Any]:
    """The figures as published: every count suppressed, each figure with its definition and period."""
    now = now or datetime.now(UTC)
    defs = pathways()
    high = config.value("SUPPRESS_HIGH")
    nodes = [{"code": code, "name": name_of(activity_of_code(code)), "count": _count(n),
              "order": activities()[activity_of_code(code)]["order"]}
             for code, n in raw["activities"].items()]
    edges, hidden = [], 0
    for key, e in raw["edges"].items():
        a, b = key.split(">")
        c = _count(e["count"])
        if c == "*":
            hidden += 1
            continue
        edges.append({"from": a, "to": b, "from_name": name_of(activity_of_code(a)),
                      "to_name": name_of(activity_of_code(b)), "count": c, "median_days": e["median_days"]})
    hidden += max(0, raw["edge_kinds"] - len(raw["edges"]))
    variants, rare = [], 0
    for key, n in raw["variants"].items():
        c = _count(n)
        if c == "*":
            rare += 1
            continue
        steps = [name_of(activity_of_code(x)) for x in key.split(">") if x != "+"]
        variants.append({"steps": steps, "more": key.endswith(">+"), "count": c})
    gaps = []
    for gid, g in defs["gaps"].items():
        r = raw["gaps"][gid]
        gaps.append({"id": gid, "title": g["title"], "definition": " ".join(g["definition"].split()),
                     "source": " ".join(g["source"].split()), "verification": g["verification"],
                     "count": _count(r["count"]), "denominator": _count(r["denominator"]),
                     "share": _share(r["count"], r["denominator"])})
    guides = []
    for gid, g in defs["guidelines"].items():
        r = raw["guidelines"][gid]
        den = _count(r["denominator"])
        guides.append({"id": gid, "title": g["title"], "definition": " ".join(g["definition"].split()),
                       "source": " ".join(g["source"].split()), "verification": g["verification"],
                       "url": g.get("url"), "within_days": g["within_days"], "within": _count(r["within"]),
                       "denominator": den, "share": _share(r["within"], r["denominator"]),
                       "median_days": r["median_days"] if den not in ("*", 0) else None})
    last = period.end - timedelta(days=1)
    return {
        "period": {"from": period.start.date().isoformat(), "to": last.date().isoformat()},
        "as_of": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "people": _count(raw["people"]), "events": _count(raw["events"]),
        "map": {"nodes": sorted(nodes, key=lambda n: n["order"]), "edges": edges, "hidden_edges": hidden,
                "definition": "How often one step of a person's journey is directly followed by another in the "
                              "period (each person's steps in time order), and the median days between them. "
                              "Steps and where they come from: knowledge/system/pathways.yaml."},
        "variants": variants, "rare_variants": rare + max(0, raw["variant_kinds"] - len(raw["variants"])),
        "variant_definition": "A variant is a person's whole sequence of steps in the period, repeated steps in a "
                              "row counted once, cut after 12 steps ('and more').",
        "gaps": gaps, "guidelines": guides,
        "suppression": f"Counts from {config.value('SUPPRESS_LOW')} to {high} are shown as 'fewer than {high + 1}' "
                       f"and other counts are rounded to the nearest {config.value('SUPPRESS_ROUND')}; a median or "
                       "share resting on a suppressed count is not shown. People who have registered a National "
                       "Data Opt-out are not counted.",
    }


def figures(gate: Gate, who: Principal, *, start: str | None = None, end: str | None = None,
            now: datetime | None = None) -> dict[str, Any]:
    """The published (suppressed) pathway figures for the period from `start` to `end`."""
    period = period_of(start, end)
    return publish(raw_figures(gate, who, period=period, now=now), period=period, now=now)


def event_log(gate: Gate, who: Principal, *, purpose: str, period: Period | None = None
              ) -> tuple[Iterator[Trace], dict[str, Any]]:
    """Each person's trace by the gate path the principal's role allows; `info` says which (`path`, `people`)."""
    if purpose not in PURPOSES:
        raise FhirError(400, f"purpose '{purpose}' is not one of {', '.join(PURPOSES)}", code="invalid")
    analyst = is_analyst(who)
    if analyst and purpose not in SECONDARY:
        raise FhirError(403, "an analyst works on de-identified records for planning, research, commissioning or "
                             "analytics, not direct care", code="forbidden")
    info: dict[str, Any] = {"people": 0, "path": "de-identified" if analyst else "identifiable", "purpose": purpose}

    def keep(t: Trace) -> Trace:
        if period is not None:
            t.events = [e for e in t.events if e.time in period]
        info["people"] += 1 if t.events else 0
        return t

    def traces() -> Iterator[Trace]:
        if analyst:
            for record in gate.deidentified_records(who, purpose=purpose, types=RECORD_TYPES):
                yield keep(trace(record[0], record[1:]))
            return
        for patient, items in gate.records(who, purpose=purpose, types=RECORD_TYPES):
            if patient.content is not None:
                yield keep(trace(patient.content, [s.content for s in items if s.content is not None]))

    return traces(), info


def codes_in_order() -> list[str]:
    return [code_of(a) for a, _ in sorted(activities().items(), key=lambda kv: kv[1]["order"])]
