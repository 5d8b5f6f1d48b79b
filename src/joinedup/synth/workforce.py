"""Work between organisations for the synthetic ICS (issue 16.4: the workforce view needs it): key worker handovers
on each person's multidisciplinary care team, and tasks set by one care team member for a member in another
organisation, with due dates, completion (some late, some still open), cancellations and reassignments.

Rates and their sources: knowledge/synth/workforce.yaml. Everything here draws from random streams of its own
(seeded by the run's seed and the person's index), so adding it changes nothing else the generator draws or names,
and the same seed still gives byte-identical output.

Recorded as JoinedUp records them: a key worker handover as care/plans/team.handover writes it (the old participant
becomes "Previous coordinator" with period.end, the new one "Key worker (care coordinator)" from period.start, and a
key-worker-handover extension entry with when/from/to/toOrganization/reason); a task as care/plans/tasks writes it
(Task.owner, the task-owner-organization extension, due date Task.restriction.period.end), completion in
Task.executionPeriod.end, and a reassignment - which a feed sends as the task's current state only - in a
task-reassignment extension entry (when/from/to/fromOrganization/toOrganization/reason).
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from joinedup.fhir import codes

EXT_HANDOVER = codes.EXTENSION + "key-worker-handover"
EXT_REASSIGNMENT = codes.EXTENSION + "task-reassignment"
EXT_OWNER_ORG = codes.EXTENSION + "task-owner-organization"
KEY_WORKER_ROLE = "Key worker (care coordinator)"
PREVIOUS_ROLE = "Previous coordinator"
COORDINATOR_ROLES = {"care coordinator", KEY_WORKER_ROLE.lower()}
BY = "Care coordination team (synthetic)"


@lru_cache(maxsize=1)
def rates() -> dict[str, Any]:
    return yaml.safe_load(resources.files("joinedup.knowledge").joinpath("synth/workforce.yaml").read_text("utf-8"))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def _ref_id(ref: dict[str, Any] | None) -> str:
    return ((ref or {}).get("reference") or "").split("/", 1)[-1]


def _colleagues(system: Any) -> dict[str, list[str]]:
    """Practitioner id -> the others in the same staff group of the same organisation (who could take work over)."""
    groups: list[list[str]] = []
    for p in system.practices:
        groups += [p["gps"], p["nurses"], p["pharmacists"]]
    groups += list(system.acute.get("consultants", {}).values()) + list(system.acute.get("nurses", {}).values())
    groups += [system.community.get(k, []) for k in ("nurses", "matrons", "physios", "coordinators")]
    groups += [system.mental_health.get(k, []) for k in ("consultants", "nurses")]
    groups.append(system.local_authority.get("social_workers", []))
    out: dict[str, list[str]] = {}
    for g in groups:
        for pid in g:
            out.setdefault(pid, [x for x in g if x != pid])
    return out


def emit(p: Any, team: dict[str, Any]) -> None:
    """Add key worker handovers to the person's care team (before it is emitted) and emit their tasks."""
    key_worker_history(p, team)
    tasks(p, team)


# -- key worker handovers ------------------------------------------------------------------------------------------
def key_worker_history(p: Any, team: dict[str, Any]) -> None:
    c = p.c
    parts = team["participant"]
    kw = next((x for x in parts if (x["role"][0].get("text") or "").lower() in COORDINATOR_ROLES), None)
    if kw is None:
        return
    rng = random.Random(f"{c.seed}:{p.i}:workforce:key-worker")
    k = rates()["key_worker"]
    lo = max(c.t0, c.today_ord - k["named_within_days"])
    lo = min(lo, p.end - 30)
    start = lo if p.end - 7 <= lo else rng.randrange(lo, p.end - 7)
    kw["period"] = {"start": c.dt(start, rng.randrange(540, 1020, 15))}
    s = c.system
    pool = [(x, c.cm) for x in s.community["coordinators"] + s.community["matrons"]]
    pool += [(x, c.la) for x in s.local_authority["social_workers"]]
    rate = k["handovers_per_year"] / 365.0
    day = float(start)
    current = kw
    while len(pool) > 1:
        day += rng.expovariate(rate)
        if day >= p.end:
            break
        when = c.dt(int(day), rng.randrange(540, 1020, 15))
        old = _ref_id(current["member"])
        new, org = rng.choice([x for x in pool if x[0] != old])
        current["role"] = [{"text": PREVIOUS_ROLE}]
        current["period"] = {**current.get("period", {}), "end": when}
        current = {"role": [{"text": KEY_WORKER_ROLE}], "member": {"reference": f"Practitioner/{new}"},
                   "onBehalfOf": dict(c.org_ref[org]), "period": {"start": when}}
        parts.append(current)
        team.setdefault("extension", []).append({"url": EXT_HANDOVER, "extension": [
            {"url": "when", "valueDateTime": when},
            {"url": "from", "valueReference": {"reference": f"Practitioner/{old}"}},
            {"url": "to", "valueReference": {"reference": f"Practitioner/{new}"}},
            {"url": "toOrganization", "valueReference": dict(c.org_ref[org])},
            {"url": "reason", "valueString": rng.choice(k["reasons"])},
            {"url": "by", "valueString": BY}]})
        p.key_worker = new


# -- tasks between organisations -----------------------------------------------------------------------------------
def _active_on(part: dict[str, Any], when: str) -> bool:
    period = part.get("period") or {}
    return (not period.get("start") or period["start"] <= when) and (not period.get("end") or period["end"] > when)


def tasks(p: Any, team: dict[str, Any]) -> None:
    c = p.c
    r = rates()
    t = r["tasks"]
    rng = random.Random(f"{c.seed}:{p.i}:workforce:tasks")
    parts = [x for x in team["participant"] if (x.get("member") or {}).get("reference", "").startswith("Practitioner/")]
    if len({_ref_id(x.get("onBehalfOf")) for x in parts}) < 2:
        return  # everyone in one organisation: no work between organisations
    lo = max(c.t0, c.today_ord - t["window_days"])
    hi = p.end - 1
    if hi <= lo:
        return
    has_kw = any((x["role"][0].get("text") or "").lower() in COORDINATOR_ROLES | {PREVIOUS_ROLE.lower()}
                 for x in parts)
    lam = (t["per_year"] + (t["per_year_key_worker"] if has_kw else 0) + t["per_admission"] * p.admissions / c.years)
    n = _poisson(rng, lam * (hi - lo) / 365.0)
    colleagues = getattr(c, "_workforce_colleagues", None)
    if colleagues is None:
        colleagues = c._workforce_colleagues = _colleagues(c.system)
    for j in range(1, n + 1):
        day = rng.randrange(lo, hi)
        authored = c.dt(day, rng.randrange(480, 1080, 5))
        active = [x for x in parts if _active_on(x, authored)]
        setter = rng.choice(active) if active else None
        owners = [x for x in active if setter and _ref_id(x.get("onBehalfOf")) != _ref_id(setter.get("onBehalfOf"))]
        if not setter or not owners:
            continue
        owner = rng.choice(owners)
        p.emit("Task", _task(p, rng, r, f"tk-{p.i:07d}-{j:04d}", day, authored, setter, owner, colleagues))


def _task(p: Any, rng: random.Random, r: dict[str, Any], tid: str, day: int, authored: str, setter: dict[str, Any],
          owner: dict[str, Any], colleagues: dict[str, list[str]]) -> dict[str, Any]:
    c, t = p.c, r["tasks"]
    due_day = day + rng.choices(t["due_days"], t["due_weights"])[0]
    roll = rng.random()
    status, done = "open", None
    if roll < t["cancelled"]:
        status, done = "cancelled", day + rng.randrange(1, due_day - day + 1)
    elif roll >= t["cancelled"] + t["never_done"]:
        status = "completed"
        done = due_day + 1 + int(rng.expovariate(1 / t["late_mean_days"])) if rng.random() < t["late"] else \
            day + rng.randrange(0, due_day - day + 1)
    if done is not None and done >= p.end:  # not done by the reference date (or the person's death)
        status, done = "open", None
    if status == "open" and p.death:
        status, done = "cancelled", p.end
    setter_org, owner_org = _ref_id(setter["onBehalfOf"]), _ref_id(owner["onBehalfOf"])
    owner_id = _ref_id(owner["member"])
    ext: list[dict[str, Any]] = []
    last = done if done is not None else c.today_ord
    if rng.random() < r["reassignment"]["share"] and last - day >= 2 and colleagues.get(owner_id):
        when = c.dt(day + rng.randrange(1, last - day), rng.randrange(480, 1080, 5))
        new = rng.choice(colleagues[owner_id])
        ext.append({"url": EXT_REASSIGNMENT, "extension": [
            {"url": "when", "valueDateTime": when},
            {"url": "from", "valueReference": {"reference": f"Practitioner/{owner_id}"}},
            {"url": "to", "valueReference": {"reference": f"Practitioner/{new}"}},
            {"url": "fromOrganization", "valueReference": {"reference": f"Organization/{owner_org}"}},
            {"url": "toOrganization", "valueReference": {"reference": f"Organization/{owner_org}"}},
            {"url": "reason", "valueString": rng.choice(r["reassignment"]["reasons"])}]})
        owner_id = new
    minute = rng.randrange(480, 1080, 5)
    if done is not None and c.dt(done, minute) <= authored:  # done the day it was set: after it was set
        minute = min(1435, int(authored[11:13]) * 60 + int(authored[14:16]) + 5)
    modified = c.dt(done, minute) if done is not None else authored
    if ext and done is None:
        modified = ext[0]["extension"][0]["valueDateTime"]
    task: dict[str, Any] = {
        "resourceType": "Task", "id": tid, "meta": c.meta[setter_org],
        "status": status if status != "open" else ("requested" if c.today_ord - day < 7 else "in-progress"),
        "intent": "order", "priority": "routine", "description": rng.choice(t["descriptions"]),
        "for": p.pref, "authoredOn": authored, "lastModified": modified,
        "requester": {"reference": setter["member"]["reference"]},
        "owner": {"reference": f"Practitioner/{owner_id}"},
        "restriction": {"period": {"end": c.day(due_day)}},
        "extension": [{"url": EXT_OWNER_ORG, "valueReference": {"reference": f"Organization/{owner_org}"}}, *ext],
    }
    if status in ("completed", "cancelled"):
        task["executionPeriod"] = {"start": authored, "end": c.dt(done, minute)}
    return task
