"""The workforce view (issue 16.4): for each team, caseload, open and overdue work and handovers over the last 12
months, so that leaders see where integration strains.

Figures are computed inside the gate (`Gate.published_figures` with the board's `assess` action: National Data
Opt-out applied, only numbers leave) from care teams (CareTeam participants and their periods, key-worker-handover
entries), tasks (Task.owner with the task-owner-organization extension, due date Task.restriction.period.end,
completion Task.executionPeriod.end, task-reassignment entries) and the stored version history of tasks (an owner
changed by an update is a reassignment too), against the directory (PractitionerRole -> HealthcareService ->
Organization). Every count is then small-number suppressed (`governance.deid.suppress`) and a share resting on a
suppressed count is withheld; team and organisation names come from the directory (`Gate.published_names`).
Definitions: knowledge/system/workforce.yaml.

`Tally` is also fed by the self-assessment's live evidence pass (system/evidence.py), so the report and this view
count the same way.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources as pkg_resources
from typing import Any

import yaml

from joinedup.care.plans.tasks import EXT_OWNER_ORG, OPEN_TASK
from joinedup.care.plans.team import EXT_HANDOVER, KEY_WORKER_RE, PREVIOUS_ROLE
from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

EXT_REASSIGNMENT = codes.EXTENSION + "task-reassignment"
PURPOSE = "planning:workforce"
MONTHS = 12
RECORD_TYPES = {"CareTeam", "Task"}
DIRECTORY_TYPES = ("PractitionerRole", "HealthcareService")
NAME_TYPES = ("HealthcareService", "Organization")
POINT_KINDS = ("caseload", "key_worker", "open", "overdue")
KINDS = (*POINT_KINDS, "handovers")
ACTIVE_TEAM = (None, "active", "proposed")
FRESH_SECONDS = 300


@lru_cache(maxsize=1)
def definitions() -> dict[str, Any]:
    return yaml.safe_load(pkg_resources.files("joinedup.knowledge").joinpath("system/workforce.yaml").read_text(
        encoding="utf-8"))


# -- the period ------------------------------------------------------------------------------------------------------
def points(as_at: date) -> list[date]:
    """The last day of each of the 11 months before `as_at`'s month, then `as_at` itself."""
    out = []
    first = as_at.replace(day=1)
    for k in range(MONTHS - 1, 0, -1):
        y, m = divmod(first.month - 1 - k, 12)
        month_start = date(first.year + y, m + 1, 1)
        nxt = date(month_start.year + (month_start.month == 12), month_start.month % 12 + 1, 1)
        out.append(nxt - timedelta(days=1))
    out.append(as_at)
    return out


def period_start(as_at: date) -> date:
    return points(as_at)[0].replace(day=1)


def check_as_at(value: str | None, *, today: date | None = None) -> date:
    """The day the figures are for (default today): 400 when it is not a date, or is in the future."""
    today = today or datetime.now(UTC).date()
    if value is None or not str(value).strip():
        return today
    try:
        day = date.fromisoformat(str(value).strip())
    except ValueError:
        raise FhirError(400, f"as_at '{str(value)[:40]}' is not a date (use YYYY-MM-DD)", code="invalid",
                        expression=["as_at"]) from None
    if day > today:
        raise FhirError(400, f"as_at {day.isoformat()} is in the future: figures describe the record up to today "
                             f"({today.isoformat()})", code="invalid", expression=["as_at"])
    return day


# -- counting --------------------------------------------------------------------------------------------------------
def _ref_id(ref: Any, rtype: str) -> str | None:
    value = (ref or {}).get("reference") if isinstance(ref, dict) else None
    if not value or "/" not in value:
        return None
    t, _, i = value.rpartition("/")
    return i if t.split("/")[-1] == rtype and i else None


def _ext(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    """The entries of a complex extension: [{part url: value}]."""
    out = []
    for e in resource.get("extension") or ():
        if e.get("url") == url:
            out.append({p.get("url"): next((v for k, v in p.items() if k.startswith("value")), None)
                        for p in e.get("extension") or ()})
    return out


def _role_text(part: dict[str, Any]) -> str:
    for r in part.get("role") or ():
        text = r.get("text") or next((c.get("display") for c in r.get("coding") or () if c.get("display")), None)
        if text:
            return text
    return ""


def _owner_org(task: dict[str, Any]) -> str | None:
    for e in task.get("extension") or ():
        if e.get("url") == EXT_OWNER_ORG:
            return _ref_id(e.get("valueReference"), "Organization")
    return None


class Tally:
    """Counts per team, organisation and the whole system, fed one person's record at a time (`add`), numbers only
    (`figures`). `directory`: PractitionerRole and HealthcareService entries; `history`: stored versions of tasks."""

    def __init__(self, directory: dict[str, list[Any]], *, as_at: date,
                 history: Iterable[dict[str, Any]] | None = None) -> None:
        self.days = [d.isoformat() for d in points(as_at)]
        self.months = [d[:7] for d in self.days]
        self.start = period_start(as_at).isoformat()
        self.end = as_at.isoformat()
        self.service_org: dict[str, str] = {}
        for s in directory.get("HealthcareService", ()):
            org = _ref_id((s.content if hasattr(s, "content") else s).get("providedBy"), "Organization")
            if org:
                self.service_org[s.id if hasattr(s, "id") else s["id"]] = org
        self.roles: dict[str, list[tuple[str | None, list[str]]]] = {}
        for s in directory.get("PractitionerRole", ()):
            r = s.content if hasattr(s, "content") else s
            prac = _ref_id(r.get("practitioner"), "Practitioner")
            if not prac or r.get("active") is False:
                continue
            services = [sid for h in r.get("healthcareService") or () if (sid := _ref_id(h, "HealthcareService"))
                        and sid in self.service_org]
            self.roles.setdefault(prac, []).append((_ref_id(r.get("organization"), "Organization"), services))
        self.count: Counter[tuple[str, str]] = Counter()
        self.people = 0
        self.owner_changes = self._owner_changes(history or ())

    # who is in which team
    def teams_of(self, practitioner: str | None, organization: str | None) -> list[str]:
        """Team keys ('s:<service id>', or 'o:<organisation id>' when no service is known) of a professional acting
        for an organisation (any of theirs when None)."""
        keys: list[str] = []
        for org, services in self.roles.get(practitioner or "", ()):
            if organization and org and org != organization:
                continue
            keys += [f"s:{s}" for s in services if not organization or self.service_org.get(s) == organization]
            if not services and (organization or org):
                keys.append(f"o:{organization or org}")
        if not keys and organization:
            keys.append(f"o:{organization}")
        return sorted(set(keys))

    def org_of(self, key: str) -> str:
        return f"o:{self.service_org.get(key[2:], key[2:])}" if key.startswith("s:") else key

    def _bump(self, keys: Iterable[str], kind: str, i: int, n: int = 1) -> None:
        """One count for each team, once for each of their organisations and once for the system."""
        keys = set(keys)
        if not keys:
            return
        for k in keys:
            self.count[(k, f"{kind}:{i}")] += n
        for o in {self.org_of(k) for k in keys}:
            self.count[("org:" + o, f"{kind}:{i}")] += n
        self.count[("system", f"{kind}:{i}")] += n

    def month_of(self, when: str | None) -> int | None:
        if not when or when[:10] < self.start or when[:10] > self.end:
            return None
        try:
            return self.months.index(when[:7])
        except ValueError:
            return None

    # task owners over time
    @staticmethod
    def _owner_changes(history: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Task id -> owner changes seen between its stored versions that no task-reassignment entry records."""
        versions: dict[str, list[dict[str, Any]]] = {}
        for row in history:
            if row.get("rtype") == "Task" and not row.get("deleted") and row.get("content"):
                versions.setdefault(row["id"], []).append(row)
        out: dict[str, list[dict[str, Any]]] = {}
        for tid, rows in versions.items():
            rows.sort(key=lambda r: r["version"])
            for old, new in zip(rows, rows[1:]):
                a, b = old["content"], new["content"]
                before = (_ref_id(a.get("owner"), "Practitioner"), _owner_org(a))
                after = (_ref_id(b.get("owner"), "Practitioner"), _owner_org(b))
                recorded = len(_ext(b, EXT_REASSIGNMENT)) > len(_ext(a, EXT_REASSIGNMENT))
                if before != after and not recorded:
                    out.setdefault(tid, []).append({"when": new["last_updated"], "from": before, "to": after})
        return out

    def _events(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        for e in _ext(task, EXT_REASSIGNMENT):
            events.append({"when": e.get("when") or "",
                           "from": (_ref_id(e.get("from"), "Practitioner"), _ref_id(e.get("fromOrganization"),
                                                                                    "Organization")),
                           "to": (_ref_id(e.get("to"), "Practitioner"), _ref_id(e.get("toOrganization"),
                                                                              "Organization"))})
        events += self.owner_changes.get(task.get("id") or "", [])
        return sorted(events, key=lambda e: e["when"])

    # one person's record
    def add(self, patient: Any, items: list[Any]) -> None:
        self.people += 1
        p = patient.content
        died = (p.get("deceasedDateTime") or "")[:10] or ("0000-00-00" if p.get("deceasedBoolean") else None)
        alive = [not died or died > d for d in self.days]
        caseload: list[set[str]] = [set() for _ in self.days]
        key_worker: list[set[str]] = [set() for _ in self.days]
        for s in items:
            if s.rtype == "CareTeam" and s.content.get("status") in ACTIVE_TEAM:
                self._care_team(s.content, alive, caseload, key_worker)
            elif s.rtype == "Task":
                self._task(s.content, s.last_updated)
        for i in range(len(self.days)):
            self._bump(caseload[i], "caseload", i)
            self._bump(key_worker[i], "key_worker", i)

    def _care_team(self, team: dict[str, Any], alive: list[bool], caseload: list[set[str]],
                   key_worker: list[set[str]]) -> None:
        for part in team.get("participant") or ():
            member, org = part.get("member"), _ref_id(part.get("onBehalfOf"), "Organization")
            prac = _ref_id(member, "Practitioner")
            teams = self.teams_of(prac, org) if prac else ([f"o:{o}"] if (o := _ref_id(member, "Organization")
                                                                           or org) else [])
            if not teams:
                continue
            role = _role_text(part)
            is_kw = bool(KEY_WORKER_RE.search(role)) or role == PREVIOUS_ROLE
            period = part.get("period") or {}
            start, end = (period.get("start") or "")[:10], (period.get("end") or "")[:10]
            for i, d in enumerate(self.days):
                if alive[i] and (not start or start <= d) and (not end or end > d):
                    caseload[i].update(teams)
                    if is_kw:
                        key_worker[i].update(teams)
        for h in _ext(team, EXT_HANDOVER):
            i = self.month_of(h.get("when"))
            if i is None:
                continue
            sides = self.teams_of(_ref_id(h.get("from"), "Practitioner"), None) if h.get("from") else []
            sides += self.teams_of(_ref_id(h.get("to"), "Practitioner"), _ref_id(h.get("toOrganization"),
                                                                                 "Organization"))
            self._bump(sides, "handovers", i)
            self.count[("system", f"key_worker_handovers:{i}")] += 1

    def _task(self, task: dict[str, Any], stored_at: str | None) -> None:
        authored = (task.get("authoredOn") or stored_at or "")[:10]
        if not authored:
            return
        status = task.get("status")
        closed = None
        if status not in OPEN_TASK:
            closed = ((task.get("executionPeriod") or {}).get("end") or task.get("lastModified") or stored_at
                      or authored)[:10]
        due = (((task.get("restriction") or {}).get("period") or {}).get("end") or "")[:10]
        current = (_ref_id(task.get("owner"), "Practitioner"), _owner_org(task))
        events = self._events(task)
        for i, d in enumerate(self.days):
            if authored > d or (closed is not None and closed <= d):
                continue
            owner = current
            before = [e for e in events if e["when"][:10] <= d]
            if before:
                owner = before[-1]["to"]
            elif events:
                owner = events[0]["from"]
            teams = self.teams_of(*owner)
            self._bump(teams, "open", i)
            if due and due < d:
                self._bump(teams, "overdue", i)
        for e in events:
            i = self.month_of(e["when"])
            if i is not None:
                self._bump(self.teams_of(*e["from"]) + self.teams_of(*e["to"]), "handovers", i)
                self.count[("system", f"reassignments:{i}")] += 1

    def figures(self) -> dict[str, Any]:
        """Numbers only: {"teams": {org key: {team key: {"kind:i": n}}}, "orgs": {org key: {...}}, "system": {...},
        "people": n}."""
        out: dict[str, Any] = {"teams": {}, "orgs": {}, "system": {}, "people": self.people}
        for (who, cell), n in self.count.items():
            if who == "system":
                out["system"][cell] = n
            elif who.startswith("org:"):
                out["orgs"].setdefault(who[4:], {})[cell] = n
            else:
                out["teams"].setdefault(self.org_of(who), {}).setdefault(who, {})[cell] = n
        return out


def measure(records: Iterator[tuple[Any, list[Any]]], directory: dict[str, list[Any]], *, as_at: date,
            history: Iterable[dict[str, Any]] | None = None,
            last_writes: dict[str, str] | None = None, now: float | None = None) -> dict[str, Any]:
    """The raw workforce figures (numbers only) from the population's records: what runs inside the gate."""
    tally = Tally(directory, as_at=as_at, history=history)
    for patient, items in records:
        tally.add(patient, items)
    out = tally.figures()
    out["freshness"] = freshness_hours(last_writes or {}, now=now)
    return out


def freshness_hours(last_writes: dict[str, str], *, now: float | None = None) -> dict[str, float]:
    """'o:<organisation id>' -> hours since that organisation's last write (sources that are organisations)."""
    now = time.time() if now is None else now
    out = {}
    for source, instant in last_writes.items():
        if not source.startswith("Organization/"):
            continue
        try:
            at = datetime.fromisoformat(instant.replace("Z", "+00:00"))
        except ValueError:
            continue
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        out[f"o:{source.removeprefix('Organization/')}"[:80]] = round(max(0.0, now - at.timestamp()) / 3600, 1)
    return out


# -- through the gate ------------------------------------------------------------------------------------------------
_recent: dict[tuple[str | None, str], tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def figures(*, gate: Gate, who: Principal, as_at: date, fresh: bool = False) -> dict[str, Any]:
    """The raw figures for `as_at` through the gate (numbers only; not yet suppressed), with `computed_at`.
    Reused for FRESH_SECONDS (the caller's right to them is checked and the access audited every time)."""
    key = (gate.database_url, as_at.isoformat())
    with _lock:
        hit = None if fresh else _recent.get(key)
    if hit is not None and time.monotonic() - hit[0] < FRESH_SECONDS:
        gate.check(who, "assess", None, entity=f"figures:{PURPOSE}")
        gate.record(who, "assess", allowed=True, reason=f"published figures (computed within the last "
                                                        f"{FRESH_SECONDS} s)", entity=f"figures:{PURPOSE}")
        return hit[1]
    now = time.time()

    def run(records, directory, *, history=None, last_writes=None):
        return measure(records, directory, as_at=as_at, history=history, last_writes=last_writes, now=now)

    raw = gate.published_figures(who, purpose=PURPOSE, measure=run, types=RECORD_TYPES,
                                 directory_types=DIRECTORY_TYPES, history_types=("Task",),
                                 history_since=period_start(as_at).isoformat(), last_writes=True)
    raw = {**raw, "computed_at": now}
    with _lock:
        _recent[key] = (time.monotonic(), raw)
    return raw


# -- publishing ------------------------------------------------------------------------------------------------------
def _count(n: int) -> int | str:
    return deid.suppress(n) if n else 0


def _share(num: int | str, den: int | str) -> dict[str, Any]:
    if den == 0:
        return {"value": None, "note": "no open tasks"}
    if num == "*" or den == "*":
        return {"value": "*", "suppressed": True, "note": "small numbers: not published"}
    return {"value": round(100 * num / den, 1)}


def _block(cells: dict[str, int], n_points: int) -> dict[str, Any]:
    """One team's (organisation's, the system's) published figures: each count suppressed."""
    out: dict[str, Any] = {}
    for kind in POINT_KINDS:
        series = [_count(cells.get(f"{kind}:{i}", 0)) for i in range(n_points)]
        out[kind] = {"value": series[-1], "series": series}
    handovers = [_count(cells.get(f"handovers:{i}", 0)) for i in range(n_points)]
    out["handovers"] = {"value": _count(sum(cells.get(f"handovers:{i}", 0) for i in range(n_points))),
                        "series": handovers}
    out["overdue_share"] = _share(out["overdue"]["value"], out["open"]["value"])
    return out


def published(raw: dict[str, Any], names: dict[str, str], *, as_at: date) -> dict[str, Any]:
    """The workforce view: every figure suppressed, with its definition and period, teams under their organisation."""
    d = definitions()
    days = [p.isoformat() for p in points(as_at)]
    n = len(days)
    start = period_start(as_at).isoformat()

    def name(key: str) -> str:
        rtype = "HealthcareService" if key.startswith("s:") else "Organization"
        return names.get(f"{rtype}/{key[2:]}") or key[2:]

    orgs: dict[str, dict[str, Any]] = {}
    for key, cells in raw["orgs"].items():
        orgs[key] = {"id": key[2:], "reference": f"Organization/{key[2:]}", "name": name(key),
                     **_block(cells, n), "teams": []}
    for org_key, teams in raw["teams"].items():
        for key, cells in teams.items():
            if key.startswith("o:"):  # professionals with no service in the directory: the organisation as a team
                team = {"id": key[2:], "reference": f"Organization/{key[2:]}",
                        "name": f"{name(key)} (no service named)"}
            else:
                team = {"id": key[2:], "reference": f"HealthcareService/{key[2:]}", "name": name(key)}
            orgs[org_key]["teams"].append({**team, **_block(cells, n)})
    for o in orgs.values():
        o["teams"].sort(key=lambda t: t["name"])
    system = _block(raw["system"], n)
    system["key_worker_handovers"] = _series_total(raw["system"], "key_worker_handovers", n)
    system["reassignments"] = _series_total(raw["system"], "reassignments", n)
    fresh_hours = d["freshness"]["fresh_hours"]
    feeds = sorted(({"id": k[2:], "reference": f"Organization/{k[2:]}", "name": name(k), "hours": h,
                     "fresh": h <= fresh_hours} for k, h in raw.get("freshness", {}).items()),
                   key=lambda f: (-f["hours"], f["name"]))
    figures = {k: {"title": v["title"], "definition": " ".join(v["definition"].split()), "unit": v["unit"],
                   "period": ({"start": start, "end": as_at.isoformat(), "points": days} if v["period"] == "point"
                              else {"start": start, "end": as_at.isoformat(), "each": "calendar month"})}
               for k, v in d["figures"].items()}
    computed = datetime.fromtimestamp(raw["computed_at"], UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "as_at": as_at.isoformat(), "period": {"start": start, "end": as_at.isoformat()},
        "months": [x[:7] for x in days], "points": days, "computed_at": computed, "definitions": figures,
        "system": system,
        "organisations": sorted(orgs.values(), key=lambda o: o["name"]),
        "feeds": {"title": d["freshness"]["title"], "definition": " ".join(d["freshness"]["definition"].split()),
                  "unit": d["freshness"]["unit"], "fresh_hours": fresh_hours, "as_at": computed,
                  "organisations": feeds},
        "suppression": "counts from JOINEDUP_SUPPRESS_LOW to JOINEDUP_SUPPRESS_HIGH are shown as '*', others rounded "
                       "to JOINEDUP_SUPPRESS_ROUND; a share with a suppressed part is not published",
    }


def _series_total(cells: dict[str, int], kind: str, n: int) -> dict[str, Any]:
    series = [_count(cells.get(f"{kind}:{i}", 0)) for i in range(n)]
    return {"value": _count(sum(cells.get(f"{kind}:{i}", 0) for i in range(n))), "series": series}


def report(*, gate: Gate, who: Principal, as_at: date | None = None, fresh: bool = False) -> dict[str, Any]:
    """The published workforce view for `as_at` (default today)."""
    as_at = as_at or datetime.now(UTC).date()
    raw = figures(gate=gate, who=who, as_at=as_at, fresh=fresh)
    names = gate.published_names(who, NAME_TYPES, purpose=PURPOSE)
    return published(raw, names, as_at=as_at)
