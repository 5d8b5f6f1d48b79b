"""A person's journey across settings as an event log, derived from their FHIR resources.

`trace(patient, resources)` turns one person's record (as the gate gave it: identifiable, or de-identified with
pseudonyms and dates cut to the month) into a `Trace`: the ordered events (activity, time, organisation, the
resource it came from and the objects it concerns) and the facts the gap measures need (requests and when they
were first answered, tasks with their due dates, discharges). Which element gives each step is stated in
knowledge/system/pathways.yaml (`activities[*].from`). Episode kinds come from the journey tracker
(care/journey/service.py: `episode_kind`), so a GP registration is never counted as an episode of care.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from joinedup.care.journey.service import episode_kind
from joinedup.fhir import words
from joinedup.fhir.values import reference_id

from .definitions import activities, copd_codes

INPATIENT = {"IMP", "ACUTE", "NONAC"}
COMMUNITY = {"AMB", "HH", "VR", "FLD"}
CLOSED_TASK = {"completed", "cancelled", "entered-in-error", "rejected", "failed"}
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def parse_time(value: Any) -> tuple[datetime, str] | None:
    """(instant, precision) of a FHIR date or dateTime: 'instant', 'day', 'month' (de-identified) or 'year'."""
    if not isinstance(value, str) or not value:
        return None
    m = _DATE.match(value)
    try:
        if m:
            year, month, day = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)
            precision = "day" if m.group(3) else "month" if m.group(2) else "year"
            return datetime(year, month, day, tzinfo=UTC), precision
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC), "instant"


@dataclass(frozen=True)
class Event:
    activity: str
    time: datetime
    precision: str
    organisation: str | None  # "Organization/id"
    source: str  # the resource it came from, "Type/id"
    objects: tuple[tuple[str, str, str], ...] = ()  # (object type, object id, qualifier)

    @property
    def order(self) -> int:
        return activities()[self.activity]["order"]


@dataclass
class Request:
    """A referral or advice request and when it was first answered."""
    kind: str  # "referral" | "advice"
    id: str
    sent: datetime
    target: str | None  # the service or organisation asked (HealthcareService/…, Organization/…)
    answered: datetime | None = None
    closed: bool = False  # completed or revoked without a dated answer


@dataclass
class TaskFact:
    id: str
    authored: datetime | None
    open: bool
    due: datetime | None
    cross_organisation: bool


@dataclass
class Discharge:
    time: datetime
    copd: bool


@dataclass
class Trace:
    person: str
    events: list[Event] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    tasks: list[TaskFact] = field(default_factory=list)
    discharges: list[Discharge] = field(default_factory=list)
    died: datetime | None = None


def _org(ref: Any) -> str | None:
    rid = reference_id(ref, "Organization")
    return f"Organization/{rid}" if rid else None


def _source_org(r: dict) -> str | None:
    src = (r.get("meta") or {}).get("source")
    return src if isinstance(src, str) and src.startswith("Organization/") else None


def _words(concepts: Any) -> str:
    """Every text and coding display of a CodeableConcept or a list of them, lower case."""
    out: list[str] = []
    for c in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(c, dict):
            out.append(c.get("text") or "")
            out += [x.get("display") or "" for x in c.get("coding") or () if isinstance(x, dict)]
    return " ".join(out).lower()


def _refs(values: Any, rtype: str) -> list[str]:
    return [i for i in (reference_id(v, rtype) for v in values or ()) if i]


def _is_copd(resource: dict, conditions: dict[str, dict]) -> bool:
    snomed, icd10 = copd_codes()

    def coded(concepts: Any) -> bool:
        for c in concepts if isinstance(concepts, list) else [concepts]:
            for x in (c or {}).get("coding") or ():
                code = x.get("code") or ""
                if code in snomed or any(code.startswith(p) for p in icd10) and "icd" in (x.get("system") or ""):
                    return True
        return False

    if coded(resource.get("reasonCode") or []):
        return True
    return any(coded(conditions[c].get("code")) for c in _refs(resource.get("reasonReference"), "Condition")
               if c in conditions)


def trace(patient: dict, resources: list[dict]) -> Trace:
    """One person's trace. `patient` is their Patient resource, `resources` the rest of their record."""
    pid = patient.get("id") or ""
    person = ("person", f"Patient/{pid}", "subject")
    t = Trace(person=pid)
    died = parse_time(patient.get("deceasedDateTime"))
    t.died = died[0] if died else None
    gp_orgs = {f"Organization/{i}" for i in _refs(patient.get("generalPractitioner"), "Organization")}
    by: dict[str, list[dict]] = {}
    for r in resources:
        by.setdefault(r.get("resourceType") or "", []).append(r)
    conditions = {r["id"]: r for r in by.get("Condition", []) if r.get("id")}

    def add(activity: str, when: Any, org: str | None, r: dict, *objects: tuple[str, str, str]) -> Event | None:
        parsed = parse_time(when)
        if parsed is None:
            return None
        objs = [person] + [o for o in objects if o[1]]
        if org:
            objs.append(("organisation", org, "by"))
        ev = Event(activity, parsed[0], parsed[1], org, f"{r['resourceType']}/{r.get('id')}", tuple(objs))
        t.events.append(ev)
        return ev

    answers: dict[str, datetime] = {}  # request "Type/id" -> first answer

    def answered(key: str, when: Any) -> None:
        parsed = parse_time(when)
        if parsed and (key not in answers or parsed[0] < answers[key]):
            answers[key] = parsed[0]

    for e in by.get("Encounter", []):
        cls = (e.get("class") or {}).get("code")
        period = e.get("period") or {}
        org = _org(e.get("serviceProvider")) or _source_org(e)
        enc = ("encounter", f"Encounter/{e.get('id')}", "encounter")
        if e.get("status") in ("cancelled", "entered-in-error", "planned"):
            continue
        based = _refs(e.get("basedOn"), "ServiceRequest")
        for sr in based:
            answered(f"ServiceRequest/{sr}", period.get("start"))
        refs = tuple(("referral", f"ServiceRequest/{sr}", "based-on") for sr in based)
        if cls in INPATIENT:
            add("admission", period.get("start"), org, e, enc, *refs)
            if e.get("status") == "finished" and period.get("end"):
                ev = add("discharge", period.get("end"), org, e, enc)
                if ev:
                    t.discharges.append(Discharge(ev.time, _is_copd(e, conditions)))
        elif cls == "EMER":
            add("ae-attendance", period.get("start"), org, e, enc)
        elif cls in COMMUNITY or cls is None:
            said = _words(e.get("type") or []) + " " + _words(e.get("serviceType") or {})
            if "review" in said:
                kind = "review"
            elif cls == "AMB" and org not in gp_orgs and (based or "outpatient" in said):
                kind = "outpatient"
            else:
                kind = "contact"
            add(kind, period.get("start"), org, e, enc, *refs)

    for a in by.get("Appointment", []):
        status = a.get("status")
        based = _refs(a.get("basedOn"), "ServiceRequest")
        refs = tuple(("referral", f"ServiceRequest/{sr}", "based-on") for sr in based)
        if status in ("fulfilled", "arrived", "checked-in"):
            add("appointment", a.get("start"), _source_org(a), a, *refs)
        elif status in ("noshow", "cancelled"):
            add("appointment-missed", a.get("start"), _source_org(a), a, *refs)
        if status not in ("proposed", "entered-in-error"):  # booking an appointment answers the referral
            for sr in based:
                answered(f"ServiceRequest/{sr}", a.get("created") or a.get("start"))

    comms = by.get("Communication", [])
    for c in comms:
        if c.get("status") in ("entered-in-error", "not-done"):
            continue
        reply_to = _refs(c.get("inResponseTo"), "Communication")
        about = _refs(c.get("basedOn"), "ServiceRequest")
        for q in reply_to:
            answered(f"Communication/{q}", c.get("sent"))
        for sr in about:
            answered(f"ServiceRequest/{sr}", c.get("sent"))
        kind = words.message_kind(c)  # the same reading of a message as the referrals pages
        org = _source_org(c)
        if kind == "correction":
            continue
        if reply_to:
            add("advice-reply", c.get("sent"), org, c,
                *(("referral", f"Communication/{q}", "reply-to") for q in reply_to))
        elif kind == "advice-request":
            ev = add("advice-request", c.get("sent"), org, c, ("referral", f"Communication/{c.get('id')}", "request"))
            if ev:
                target = next((f"{rt}/{i}" for r in c.get("recipient") or ()
                               for rt in ("HealthcareService", "Organization") if (i := reference_id(r, rt))), None)
                t.requests.append(Request("advice", f"Communication/{c.get('id')}", ev.time, target))

    for sr in by.get("ServiceRequest", []):
        if sr.get("status") in ("draft", "entered-in-error"):
            continue
        advice = "advice" in _words(sr.get("category") or [])
        key = f"ServiceRequest/{sr.get('id')}"
        target = next((f"{rt}/{i}" for r in sr.get("performer") or ()
                       for rt in ("HealthcareService", "Organization") if (i := reference_id(r, rt))), None)
        ev = add("advice-request" if advice else "referral", sr.get("authoredOn"), _source_org(sr), sr,
                 ("referral", key, "request"), *((("organisation", target, "to"),) if target and
                                                 target.startswith("Organization/") else ()))
        if ev:
            t.requests.append(Request("advice" if advice else "referral", key, ev.time, target,
                                      closed=sr.get("status") in ("completed", "revoked")))

    for task in by.get("Task", []):
        status = task.get("status")
        requester = _org(task.get("requester")) or _source_org(task)
        owner = _org(task.get("owner"))
        tobj = ("task", f"Task/{task.get('id')}", "task")
        focus = reference_id(task.get("focus"), "ServiceRequest")
        fobj = ("referral", f"ServiceRequest/{focus}", "focus") if focus else ("", "", "")
        add("task-created", task.get("authoredOn"), requester, task, tobj, fobj)
        if status == "completed":
            done = (task.get("executionPeriod") or {}).get("end") or task.get("lastModified")
            add("task-completed", done, owner or requester, task, tobj, fobj)
            if focus:
                answered(f"ServiceRequest/{focus}", done)
        due = parse_time(((task.get("restriction") or {}).get("period") or {}).get("end"))
        authored = parse_time(task.get("authoredOn"))
        t.tasks.append(TaskFact(f"Task/{task.get('id')}", authored[0] if authored else None,
                                status not in CLOSED_TASK, due[0] if due else None,
                                bool(owner and requester and owner != requester)))

    for cp in by.get("CarePlan", []):
        if cp.get("status") in ("entered-in-error", "draft"):
            continue
        when = cp.get("created") or (cp.get("period") or {}).get("start")
        add("care-plan", when, _source_org(cp), cp, ("care-plan", f"CarePlan/{cp.get('id')}", "care-plan"))

    for eoc in by.get("EpisodeOfCare", []):
        said = _words(eoc.get("type") or [])
        if episode_kind(eoc) is None and (not said.strip() or "registration" in said):
            continue  # a GP registration, or an episode of no stated kind, is not a step of a journey
        org = _org(eoc.get("managingOrganization")) or _source_org(eoc)
        eobj = ("episode", f"EpisodeOfCare/{eoc.get('id')}", "episode")
        period = eoc.get("period") or {}
        add("episode-start", period.get("start"), org, eoc, eobj)
        if eoc.get("status") == "finished" or period.get("end"):
            add("episode-end", period.get("end"), org, eoc, eobj)

    for req in t.requests:
        req.answered = answers.get(req.id)
    t.events.sort(key=lambda e: (e.time, e.order, e.source))
    return t
