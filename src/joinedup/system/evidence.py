"""Live evidence for the integration self-assessment: the platform's own measurements, attached to framework items.

Every figure is computed in one pass over the shared record through `Gate.published_figures` (the board's
`assess-integration` activity; National Data Opt-out applied, since assessing the partnership is planning), using the
care domains' own service functions to read their resources: advice response times (care/referrals:
`measure_response_times`), key workers (care/plans: `key_worker_of`), overdue tasks (care/plans: `task_view`),
and the workforce view's tally (system/workforce: open and overdue tasks, handovers over 12 months, from tasks, care
teams and the tasks' version history), each organisation's time since its last write (the store's version
history) and the cost of care across settings (population/cost: the records go on to its summariser and SQL views,
priced with the PSSRU 2024 unit costs and published with the cost report's own suppression) in the same pass: the
records generator feeds the evidence `Accumulator`, the workforce `Tally` and the cost summariser together.
Only numbers leave the gate; counts are then small-number suppressed (`governance.deid.suppress`) before anything
is published, and a share whose numerator or denominator is suppressed is not shown at all.
Definitions and periods: knowledge/system/measures.yaml.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from joinedup import config
from joinedup.care.plans.service import PLAN_CODE, PLAN_SYSTEM
from joinedup.care.plans.tasks import EXT_OWNER_ORG, OPEN_TASK, task_view
from joinedup.care.plans.team import key_worker_of
from joinedup.care.referrals.service import measure_response_times
from joinedup.fhir import codes
from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.population.cost import engine as cost_engine
from joinedup.population.cost import people as cost_people
from joinedup.population.cost import service as cost_service
from joinedup.system import knowledge as kb
from joinedup.system import workforce
from joinedup.system.service import complete

YEAR = timedelta(days=365)
ACTIVE = {"active", "recurrence", "relapse"}
# the directory the evidence reads (services, roles) and the cost views' (organisations: practices and PCNs, roles)
DIRECTORY_TYPES = tuple(dict.fromkeys(("HealthcareService", "PractitionerRole", *cost_engine.DIRECTORY_TYPES)))


def _active_problem(c: dict[str, Any]) -> bool:
    status = {x.get("code") for x in (c.get("clinicalStatus") or {}).get("coding") or ()}
    verification = {x.get("code") for x in (c.get("verificationStatus") or {}).get("coding") or ()}
    if verification & {"entered-in-error", "refuted"}:
        return False
    return not status or bool(status & ACTIVE)


def _is_plan(cp: dict[str, Any]) -> bool:
    return cp.get("status") in ("active", "draft", "on-hold") and any(
        c.get("system") == PLAN_SYSTEM and c.get("code") == PLAN_CODE
        for cat in cp.get("category") or () for c in cat.get("coding") or ())


def _is_correction(m: dict[str, Any]) -> bool:
    want = codes.CORRECTION_REQUEST
    return any(c.get("system") == want["system"] and c.get("code") == want["code"]
               for cat in m.get("category") or () for c in cat.get("coding") or ())


def _owner_org(task: dict[str, Any]) -> str | None:
    for e in task.get("extension") or ():
        if e.get("url") == EXT_OWNER_ORG:
            return (e.get("valueReference") or {}).get("reference")
    return None


class Accumulator:
    """The evidence figures gathered one person's record at a time (push style): `add(patient, items)` for every
    record of the pass, then `result()` - the raw figures (numbers only). The records generator of one pass can so
    feed this, the workforce tally and the cost summariser together."""

    def __init__(self, directory: dict[str, list[Any]], *, today: date, since: str) -> None:
        self.directory = directory
        self.now = datetime.combine(today, datetime.max.time(), tzinfo=UTC).isoformat().replace("+00:00", "Z")
        self.day = today.isoformat()
        self.since = since
        self.f = {"people": 0, "multimorbidity": 0, "with_key_worker": 0, "with_plan_what_matters": 0,
                  "multi_org": 0, "overdue_cross_org_tasks": 0, "patient_written": 0, "corrections": 0,
                  "corrections_answered": 0}
        self.requests: list[dict] = []
        self.messages: list[dict] = []

    def add(self, patient: Any, items: list[Any]) -> None:
        f, since = self.f, self.since
        f["people"] += 1
        by_type: dict[str, list[dict]] = {}
        sources = set()
        tasks = []
        for s in [patient, *items]:
            by_type.setdefault(s.rtype, []).append(s.content)
            src = s.source or ((s.content.get("meta") or {}).get("source"))
            if s.rtype == "Task":
                tasks.append((s.content, src))
            if src and src.startswith("Organization/"):
                sources.add(src)
            if src and src.startswith("Patient/") and (s.last_updated or "") >= since:
                f["patient_written"] += 1
        for t, setter in tasks:
            owner = _owner_org(t)
            if t.get("status") in OPEN_TASK and task_view(t, self.day)["overdue"] and owner and setter and \
                    owner != setter:
                f["overdue_cross_org_tasks"] += 1
        comms = by_type.get("Communication", [])
        answered = {(r.get("reference") or "") for m in comms for r in m.get("inResponseTo") or ()}
        for m in comms:
            if _is_correction(m) and (m.get("sent") or "") >= since:
                f["corrections"] += 1
                if f"Communication/{m.get('id')}" in answered:
                    f["corrections_answered"] += 1
        self.requests += by_type.get("ServiceRequest", [])
        self.messages += comms
        problems = sum(1 for c in by_type.get("Condition", ()) if _active_problem(c))
        if problems < 2:
            return
        f["multimorbidity"] += 1
        if key_worker_of(by_type.get("CareTeam", []), self.now) is not None:
            f["with_key_worker"] += 1
        if any(_is_plan(cp) and (cp.get("description") or "").strip() for cp in by_type.get("CarePlan", ())):
            f["with_plan_what_matters"] += 1
        if len(sources) >= 3:
            f["multi_org"] += 1

    def result(self) -> dict[str, Any]:
        f = dict(self.f)
        advice = measure_response_times(requests=self.requests, messages=self.messages, since=self.since)
        f["advice"] = {"requests": advice["requests"], "answered": advice["answered"],
                       "unanswered": advice["unanswered"], "first_reply_n": advice["first_reply_hours"]["n"],
                       "first_reply_median": advice["first_reply_hours"]["median"],
                       "first_reply_p90": advice["first_reply_hours"]["p90"]}
        services = [s.content for s in self.directory.get("HealthcareService", ())
                    if s.content.get("active") is not False]
        f["directory"] = {"services": len(services),
                          "complete": sum(1 for hs in services if all(complete(hs).values()))}
        return f


def compute(records: Iterable[tuple[Any, list[Any]]], directory: dict[str, list[Any]], *, today: date,
            since: str) -> dict[str, Any]:
    """The raw figures (numbers only) from the population's records and the directory (pull style: the
    Accumulator fed by a loop)."""
    acc = Accumulator(directory, today=today, since=since)
    for patient, items in records:
        acc.add(patient, items)
    return acc.result()


PURPOSE = "planning:integration-assessment"
FRESH_SECONDS = 300  # figures are recomputed at most every five minutes (a pass over every record takes seconds)
_recent: dict[tuple[str | None, str], tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def figures(*, gate: Gate, who: Principal, today: date | None = None, fresh: bool = False) -> dict[str, Any]:
    """The raw figures for the board, through the gate (numbers only; not yet suppressed), with `computed_at`.
    Figures computed in the last FRESH_SECONDS are reused (the caller's right to them is checked and the access
    audited every time); `fresh` forces a new pass."""
    today = today or datetime.now(UTC).date()
    since = (today - YEAR).isoformat()
    key = (gate.database_url, today.isoformat())
    with _lock:
        hit = None if fresh else _recent.get(key)
    if hit is not None and time.monotonic() - hit[0] < FRESH_SECONDS:
        gate.check(who, "assess", None, entity=f"figures:{PURPOSE}")
        gate.record(who, "assess", allowed=True, reason="published figures (computed within the last "
                                                        f"{FRESH_SECONDS} s)", entity=f"figures:{PURPOSE}")
        return hit[1]

    now = time.time()

    def measure(records: Iterator[tuple[Any, list[Any]]], directory: dict[str, list[Any]], *,
                history: Iterable[dict[str, Any]] | None = None,
                last_writes: dict[str, str] | None = None) -> dict[str, Any]:
        acc = Accumulator(directory, today=today, since=since)
        tally = workforce.Tally(directory, as_at=today, history=history)

        def fed() -> Iterator[tuple[Any, list[Any]]]:
            # one pass: every record feeds the evidence and the workforce tally, and goes on (the types the cost
            # views and segments read) to the cost summariser, which consumes this generator
            for patient, items in records:
                acc.add(patient, items)
                tally.add(patient, items)
                yield patient, [s for s in items if s.rtype in cost_people.WANTED_TYPES]

        feed = fed()
        cost = cost_service.measure_cost(feed, directory, today=today)
        for _ in feed:  # the summariser reads every record; should it stop early, the other tallies still see all
            pass
        f = acc.result()
        f["workforce"] = tally.figures()["system"]
        # the cost figures nest as deep as figures may (4 levels): kept flat under "cost:" keys
        f.update({f"cost:{k}": v for k, v in cost.items()})
        f["freshness"] = workforce.freshness_hours(last_writes or {}, now=now)
        return f

    raw = gate.published_figures(who, purpose=PURPOSE, measure=measure, directory_types=DIRECTORY_TYPES,
                                 history_types=("Task",), history_since=workforce.period_start(today).isoformat(),
                                 last_writes=True)
    raw = {**raw, "computed_at": now}
    with _lock:
        _recent[key] = (time.monotonic(), raw)
    return raw


# -- publishing ----------------------------------------------------------------------------------------------------
def _count(n: int) -> int | str:
    return deid.suppress(n) if n else 0


def _share(num: int, den: int) -> dict[str, Any]:
    shown_num, shown_den = _count(num), _count(den)
    if den == 0:
        return {"value": None, "numerator": 0, "denominator": 0, "note": "nobody in the denominator"}
    if shown_num == "*" or shown_den == "*":
        return {"value": "*", "numerator": shown_num, "denominator": shown_den, "suppressed": True,
                "note": "small numbers: not published"}
    # the share of the published (rounded) counts: never more precise than the counts themselves
    value = round(100 * shown_num / shown_den, 1) if shown_den else None
    return {"value": value, "numerator": shown_num, "denominator": shown_den}


def _workforce(w: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The workforce view's system figures as evidence: on the day (the last point) and over the 12 months."""
    last = workforce.MONTHS - 1
    months = range(workforce.MONTHS)
    kw = sum(w.get(f"key_worker_handovers:{i}", 0) for i in months)
    moved = sum(w.get(f"reassignments:{i}", 0) for i in months)
    return {"open_tasks_overdue_share": _share(w.get(f"overdue:{last}", 0), w.get(f"open:{last}", 0)),
            "work_handovers": {"value": _count(kw + moved), "key_worker_handovers": _count(kw),
                               "task_reassignments": _count(moved), "see": "/workforce"}}


def _freshness(hours: dict[str, float]) -> dict[str, Any]:
    """Organisations (not people: not suppressed) whose last write is within the fresh window, of all that wrote."""
    limit = workforce.definitions()["freshness"]["fresh_hours"]
    if not hours:
        return {"value": None, "numerator": 0, "denominator": 0, "note": "no organisation has written yet"}
    fresh = sum(1 for h in hours.values() if h <= limit)
    ordered = sorted(hours.values())
    return {"value": round(100 * fresh / len(hours), 1), "numerator": fresh, "denominator": len(hours),
            "stalest_hours": ordered[-1], "median_hours": ordered[len(ordered) // 2], "see": "/workforce#feeds"}


HOSPITAL = "acute-hospital"  # the schedule's hospital setting; every other setting is care outside hospital
COST_BASIS = ("activity in the record priced at national unit costs (Unit Costs of Health and Social Care 2024 "
              "Manual, PSSRU/CHE; 2023/24 prices) - not payments, contracts or budgets")


def _cost_report(raw: dict[str, Any]) -> dict[str, Any]:
    """The cost of care as the cost report publishes it (population/cost/service.publish: its suppression - counts
    '*' or rounded, a cost over a suppressed count withheld, costs to the nearest GBP 100), from the flat `cost:`
    figures of the same pass."""
    return cost_service.publish({k[5:]: v for k, v in raw.items() if k.startswith("cost:")})


def _withheld(note: str) -> dict[str, Any]:
    return {"value": "*", "suppressed": True, "note": note}


def _cost_share_by_setting(report: dict[str, Any]) -> dict[str, Any]:
    """Each setting's share of the cost of care, from the published (rounded) costs; the value is the share spent
    outside hospital, withheld when the total or any setting's cost is withheld."""
    total = report["total"]
    settings = cost_engine.schedule()["settings"]
    out: dict[str, Any] = {"people": total["people"], "total_cost": total["cost"], "currency": "GBP",
                           "basis": COST_BASIS, "see": "/population/dashboard", "see_text": "cost of care dashboard"}
    if total["people"] == 0:
        return {**out, "value": None, "settings": [], "note": "nobody in the population in the period"}
    if total["people"] == "*":
        return {**out, **_withheld("small numbers: not published"), "settings": []}
    tcost = total["cost"] or 0
    rows = []
    for sid, display in settings.items():
        cost = total["settings"][sid]["cost"]
        share = ("*" if cost is None else round(100 * cost / tcost, 1) if tcost else None)
        rows.append({"setting": sid, "display": display, "cost": cost, "share": share})
    out["settings"] = rows
    if not tcost:
        return {**out, "value": None, "note": "no priced activity in the period"}
    if any(r["cost"] is None for r in rows):
        return {**out, **_withheld("a setting's cost rests on a small number: the share outside hospital is "
                                   "not published")}
    outside = sum(r["cost"] for r in rows if r["setting"] != HOSPITAL)
    return {**out, "value": round(100 * outside / tcost, 1)}


def _cost_per_person_by_multimorbidity(report: dict[str, Any]) -> dict[str, Any]:
    """Cost per person in each multimorbidity band of the cost engine; the value is the most multimorbid band's
    cost per person over the band with no condition (both as published, withheld when either is)."""
    bands = cost_engine.schedule()["segments"]["multimorbidity"]["bands"]
    low, high = bands[0], bands[-1]
    groups = report["segments"]["multimorbidity"]["groups"]
    rows = [{"group": g["group"], "people": g["people"], "cost": g["cost"], "cost_per_person": g["cost_per_person"]}
            for g in groups]
    by = {r["group"]: r for r in rows}
    out: dict[str, Any] = {"segments": rows, "compared": {"high": high, "low": low}, "currency": "GBP",
                           "basis": COST_BASIS, "see": "/population/dashboard", "see_text": "cost of care dashboard"}
    lo, hi = by.get(low), by.get(high)
    if not lo or not hi or 0 in (lo["people"], hi["people"]):
        return {**out, "value": None, "note": f"nobody in band {low if not lo or lo['people'] == 0 else high}"}
    if lo["cost_per_person"] is None or hi["cost_per_person"] is None:
        return {**out, **_withheld("small numbers: not published")}
    if not lo["cost_per_person"]:
        return {**out, "value": None, "note": f"no priced activity in band {low}"}
    return {**out, "value": round(hi["cost_per_person"] / lo["cost_per_person"], 1)}


def published(raw: dict[str, Any], *, today: date) -> dict[str, dict[str, Any]]:
    """Every measure of measures.yaml with its suppressed value and period, from the raw figures."""
    since = (today - YEAR).isoformat()
    periods = {"last-365-days": {"start": since, "end": today.isoformat()},
               "as-at": {"start": today.isoformat(), "end": today.isoformat()},
               "last-12-months": {"start": workforce.period_start(today).isoformat(), "end": today.isoformat()},
               "cost-12-months": {"start": cost_service.period(today)[0].isoformat(), "end": today.isoformat()}}
    a = raw["advice"]
    high = config.value("SUPPRESS_HIGH")
    median_ok = a["first_reply_n"] > high
    values: dict[str, dict[str, Any]] = {
        "advice_first_reply_hours": (
            {"value": a["first_reply_median"], "p90": a["first_reply_p90"], "replied": _count(a["first_reply_n"]),
             "requests": _count(a["requests"])} if median_ok else
            {"value": "*" if a["first_reply_n"] else None, "replied": _count(a["first_reply_n"]),
             "requests": _count(a["requests"]), "suppressed": bool(a["first_reply_n"]),
             "note": "too few replies to publish a median" if a["first_reply_n"] else "no replies in the period"}),
        "advice_unanswered": {"value": _count(a["unanswered"]), "requests": _count(a["requests"])},
        "key_worker_share": _share(raw["with_key_worker"], raw["multimorbidity"]),
        "overdue_cross_org_tasks": {"value": _count(raw["overdue_cross_org_tasks"])},
        "care_plan_what_matters_share": _share(raw["with_plan_what_matters"], raw["multimorbidity"]),
        "patient_written_entries": {"value": _count(raw["patient_written"])},
        "correction_requests_answered": _share(raw["corrections_answered"], raw["corrections"]),
        "multi_org_record_share": _share(raw["multi_org"], raw["multimorbidity"]),
        "directory_completeness": _share(raw["directory"]["complete"], raw["directory"]["services"]),
        **_workforce(raw["workforce"]), "feed_freshness": _freshness(raw["freshness"]),
    }
    cost = _cost_report(raw)
    values["cost_share_by_setting"] = _cost_share_by_setting(cost)
    values["cost_per_person_by_multimorbidity"] = _cost_per_person_by_multimorbidity(cost)
    out = {}
    for key, spec in kb.measures()["measures"].items():
        v = values[key]
        out[key] = {"measure": key, "title": spec["title"], "definition": " ".join(spec["definition"].split()),
                    "unit": spec["unit"], "period": periods[spec["period"]], **v}
    return out
