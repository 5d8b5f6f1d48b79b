"""Multidisciplinary reviews / joint clinics: scheduling, the pack per person, decisions as owned tasks, attendance.

A review is a meeting of professionals from several organisations about one or more people. Each person's place
in it is a FHIR Appointment (participants: the professionals and the person; `identifier` MDT_SYSTEM|review id
shared by every person in the same meeting; `basedOn` an MDT ServiceRequest). The ServiceRequest (category
`mdt-review`, performer = every participating professional and their organisation) is the legitimate relationship
that lets professionals who do not yet know the person prepare from their record; it ends when the review is
completed. Every write goes through the gate, so every step is audited.

Decisions made in the meeting become FHIR Tasks: `for` the person, `focus` their Appointment, `owner` the
responsible professional (Practitioner, with their organisation in the OWNER_ORG extension), `requester` the
person recording the decision, due date in `restriction.period.end`, status `requested`.

Attendance is `Appointment.participant.status` (accepted = attended, declined = did not attend); completing the
review marks every Appointment `fulfilled` with the outcome in `comment` and completes the MDT ServiceRequest.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from joinedup.care.referrals.service import (
    REQUEST_CATEGORY,
    _check_text,
    _me,
    _parse_time,
    _ref_id,
    check_route,
    now_iso,
    person_name,
    resolve_recipient,
)
from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

MDT_SYSTEM = "https://joinedup.example/Id/mdt-review"
EXT_OWNER_ORG = codes.TASK_OWNER_ORGANIZATION
MDT_TYPE = {"coding": [{"system": codes.SNOMED, "code": "312487003",
                        "display": "Multidisciplinary team review"}], "text": "Multidisciplinary review"}
ATTENDANCE = {"attended": "accepted", "absent": "declined", "tentative": "tentative", "invited": "needs-action"}
ATTENDANCE_TEXT = {v: k for k, v in ATTENDANCE.items()}
OPEN_TASK = "requested,received,accepted,ready,in-progress,on-hold"


class NewReview(BaseModel):
    """Scheduling a review."""

    title: str = Field(..., description="e.g. 'Frailty and multimorbidity MDT'")
    start: str = Field(..., description="date-time, e.g. 2026-07-01T14:00")
    minutes: int = Field(60, description="length of the meeting")
    patient_ids: list[str] = Field(..., description="the people to review")
    participants: list[str] = Field(..., description="Practitioner/{id} or PractitionerRole/{id} of each professional")
    location: str | None = Field(None, description="room or video link")


class Decision(BaseModel):
    """A decision taken in the meeting: an owned action with a due date."""

    patient_id: str
    text: str
    owner: str = Field(..., description="Practitioner/{id} of the professional responsible")
    due: str = Field(..., description="YYYY-MM-DD")


class Attendance(BaseModel):
    """Who attended: {practitioner id: attended | absent | tentative | invited}."""

    attendance: dict[str, str]


class Completion(BaseModel):
    """Completing the review with an outcome summary."""

    outcome: str


def _when(value: str, what: str = "start") -> datetime:
    dt = _parse_time(value.strip() if isinstance(value, str) else None)
    if dt is None or len(value.strip()) < 16:
        raise FhirError(422, f"'{value}' is not a date and time: use YYYY-MM-DDTHH:MM", code="value", expression=[what])
    return dt


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedule_review(*, gate: Gate, who: Principal, title: str, start: str, patient_ids: list[str],
                    participants: list[str], minutes: int = 60, location: str | None = None) -> dict[str, Any]:
    """Book a review: one Appointment per person with every participant, and the MDT request, in one transaction."""
    title = _check_text(title, "title")
    location = _check_text(location, "location", required=False)
    begin = _when(start)
    if not 5 <= minutes <= 480:
        raise FhirError(422, f"A review lasts 5 to 480 minutes, not {minutes}", code="value", expression=["minutes"])
    pids = list(dict.fromkeys(p.strip().removeprefix("Patient/") for p in patient_ids if p and p.strip()))
    if not pids:
        raise FhirError(422, "Choose at least one person to review", code="required", expression=["patient_ids"])
    if len(pids) > 50:
        raise FhirError(422, "At most 50 people can be reviewed in one meeting", code="value",
                        expression=["patient_ids"])
    me = _me(gate, who)
    people: list[dict] = []
    for pid in pids:
        people.append(gate.read(who, "Patient", pid).content)
    own_org = {"id": who.organization_id or "", "name": (_org_name(gate, who, who.organization_id))}
    team: list[dict] = [{"practitioner": {"id": who.practitioner_id, "name": [{"text": me.get("display")}]},
                         "organization": own_org}]
    for ref in dict.fromkeys(p.strip() for p in participants if p and p.strip()):
        r = resolve_recipient(gate=gate, who=who, to=ref)
        if r["practitioner"] is None:
            raise FhirError(422, f"{ref}: name the professional who will attend (Practitioner/ID), not only an "
                                 "organisation", code="value", expression=["participants"])
        if any(t["practitioner"]["id"] == r["practitioner"]["id"] for t in team):
            continue
        team.append(r)
    orgs = {t["organization"]["id"] for t in team if t["organization"]["id"]}
    if len(team) < 2:
        raise FhirError(422, "A multidisciplinary review needs at least one other professional", code="required",
                        expression=["participants"])
    for pid in pids:
        for o in sorted(orgs):
            check_route(gate=gate, who=who, patient_id=pid, organization_id=o, what="this review")
    review_id = uuid.uuid4().hex[:12]
    end = begin + timedelta(minutes=minutes)
    performers = [{"reference": f"Practitioner/{t['practitioner']['id']}", "display": person_name(t["practitioner"])}
                  for t in team]
    performers += [{"reference": f"Organization/{o['id']}", "display": o.get("name") or o["id"]}
                   for o in {t["organization"]["id"]: t["organization"] for t in team}.values() if o["id"]]
    entries = []
    for p in people:
        pid = p["id"]
        sr_url = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": sr_url, "request": {"method": "POST", "url": "ServiceRequest"}, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": MDT_SYSTEM, "value": review_id}],
            "category": [{"coding": [{"system": REQUEST_CATEGORY, "code": "mdt-review",
                                      "display": "Multidisciplinary review"}], "text": "Multidisciplinary review"}],
            "code": {"text": f"Multidisciplinary review: {title}"},
            "subject": {"reference": f"Patient/{pid}", "display": person_name(p)},
            "authoredOn": now_iso(), "occurrenceDateTime": _iso(begin), "requester": me, "performer": performers}})
        parts = [{"actor": {"reference": f"Patient/{pid}", "display": person_name(p)}, "required": "information-only",
                  "status": "accepted"}]
        for t in team:
            parts.append({"actor": {"reference": f"Practitioner/{t['practitioner']['id']}",
                                    "display": person_name(t["practitioner"])},
                          "type": [{"text": t["organization"].get("name") or t["organization"]["id"] or "—"}],
                          "required": "required",
                          "status": "needs-action"})
        appt = {"resourceType": "Appointment", "status": "booked",
                "identifier": [{"system": MDT_SYSTEM, "value": review_id}],
                "appointmentType": {"text": "Multidisciplinary review"}, "serviceType": [MDT_TYPE],
                "description": title, "start": _iso(begin), "end": _iso(end), "minutesDuration": minutes,
                "created": now_iso()[:10], "basedOn": [{"reference": sr_url}], "participant": parts}
        if location:
            appt["comment"] = f"Where: {location}"
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Appointment"},
                        "resource": appt})
    gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return get_review(gate=gate, who=who, review_id=review_id)


def _org_name(gate: Gate, who: Principal, org_id: str | None) -> str | None:
    if not org_id:
        return None
    try:
        return gate.read(who, "Organization", org_id).content.get("name") or org_id
    except FhirError:
        return org_id


def _appointments(gate: Gate, who: Principal, review_id: str) -> list[Any]:
    found = gate.search(who, "Appointment", [("identifier", f"{MDT_SYSTEM}|{review_id}"), ("_count", "100")])
    if not found.matches:
        raise FhirError(404, f"No multidisciplinary review '{review_id}' that you can see", code="not-found")
    return found.matches


def _participants(appt: dict) -> list[dict[str, Any]]:
    out = []
    for p in appt.get("participant") or ():
        pid = _ref_id(p.get("actor"), "Practitioner")
        if pid:
            out.append({"practitioner_id": pid, "name": (p.get("actor") or {}).get("display") or pid,
                        "organisation": next((t.get("text") for t in p.get("type") or []), None),
                        "status": p.get("status"), "attendance": ATTENDANCE_TEXT.get(p.get("status"), "invited")})
    return out


def get_review(*, gate: Gate, who: Principal, review_id: str) -> dict[str, Any]:
    """A review: when, who takes part (and attended), each person with their decisions so far."""
    appts = _appointments(gate, who, review_id)
    first = appts[0].content
    people = []
    for s in appts:
        a = s.content
        pid = next((_ref_id(p.get("actor"), "Patient") for p in a.get("participant") or []
                    if _ref_id(p.get("actor"), "Patient")), None)
        name = next(((p.get("actor") or {}).get("display") for p in a.get("participant") or []
                     if _ref_id(p.get("actor"), "Patient")), pid)
        people.append({"patient_id": pid, "name": name, "appointment_id": s.id, "status": a.get("status"),
                       "outcome": a.get("comment") if a.get("status") == "fulfilled" else None,
                       "decisions": decisions(gate=gate, who=who, appointment_id=s.id)})
    people.sort(key=lambda p: (p["name"] or "").split(" ")[-1])
    where = first.get("comment", "")
    return {"id": review_id, "title": first.get("description"), "start": first.get("start"), "end": first.get("end"),
            "minutes": first.get("minutesDuration"), "status": first.get("status"),
            "location": where.removeprefix("Where: ") if where.startswith("Where: ") else None,
            "participants": _participants(first),
            "organisations": sorted({p["organisation"] for p in _participants(first) if p["organisation"]}),
            "people": people}


def list_reviews(*, gate: Gate, who: Principal, include_past: bool = False) -> list[dict[str, Any]]:
    """Reviews the professional takes part in (upcoming first)."""
    if not who.practitioner_id:
        return []
    params = [("practitioner", f"Practitioner/{who.practitioner_id}"), ("identifier", f"{MDT_SYSTEM}|"),
              ("_sort", "date"), ("_count", "500")]
    if not include_past:
        params.append(("date", f"ge{(datetime.now(UTC) - timedelta(days=1)).strftime('%Y-%m-%d')}"))
    found = gate.search(who, "Appointment", params)
    reviews: dict[str, dict] = {}
    for s in found.matches:
        a = s.content
        rid = next((i.get("value") for i in a.get("identifier") or [] if i.get("system") == MDT_SYSTEM), None)
        if not rid:
            continue
        r = reviews.setdefault(rid, {"id": rid, "title": a.get("description"), "start": a.get("start"),
                                     "status": a.get("status"), "people": 0,
                                     "organisations": sorted({p["organisation"] for p in _participants(a)
                                                              if p["organisation"]})})
        r["people"] += 1
    return sorted(reviews.values(), key=lambda r: r["start"] or "")


def _appointment_for(gate: Gate, who: Principal, review_id: str, patient_id: str) -> Any:
    for s in _appointments(gate, who, review_id):
        if any(_ref_id(p.get("actor"), "Patient") == patient_id for p in s.content.get("participant") or []):
            return s
    raise FhirError(404, f"Patient/{patient_id} is not part of review '{review_id}'", code="not-found")


# -- the pack ---------------------------------------------------------------------------------------------------------
def prepare_pack(*, gate: Gate, who: Principal, review_id: str, patient_id: str) -> dict[str, Any]:
    """Everything the meeting needs about one person: holistic summary, conflicts, open tasks, what matters."""
    from joinedup.conflicts.service import check_record
    from joinedup.record.service import summarise

    appt = _appointment_for(gate, who, review_id, patient_id)
    summary = summarise(gate=gate, who=who, patient_id=patient_id)
    resources = [s.content for s in gate.everything(who, patient_id) if s.content]
    try:
        conflicts = check_record(resources=resources, resolve_conflicts=False)
        findings = conflicts.get("findings") or []
        conflict_error = None
    except Exception as exc:  # noqa: BLE001 - a knowledge problem must not stop the pack; say so instead
        findings, conflict_error = [], f"The conflict check could not run: {exc}"
    tasks = open_tasks(gate=gate, who=who, patient_id=patient_id)
    plans = []
    try:
        for s in gate.search(who, "CarePlan", [("patient", f"Patient/{patient_id}"), ("status", "active"),
                                               ("_count", "20")]).matches:
            c = s.content
            plans.append({"id": s.id, "title": c.get("title") or (c.get("description") or "Care plan"),
                          "description": c.get("description"),
                          "source": ((c.get("meta") or {}).get("source") or "").removeprefix("Organization/")})
    except FhirError as exc:
        if exc.status != 403:
            raise
    order = {"high": 0, "critical": 0, "moderate": 1, "warning": 1, "low": 2, "info": 3}
    findings.sort(key=lambda f: order.get(str(f.get("severity", "")).lower(), 2))
    return {"review": {"id": review_id, "title": appt.content.get("description"), "start": appt.content.get("start"),
                       "appointment_id": appt.id},
            "person": summary.person.model_dump(), "gp": summary.gp_practice.model_dump(),
            "key_worker": summary.key_worker.model_dump() if summary.key_worker else None,
            "problems": [{"display": p.display, "onset": p.onset,
                          "sources": sorted({e.provenance.source.name for e in p.entries})}
                         for p in summary.problems if p.active],
            "medicines": [{"name": m.name, "flags": [f.text for f in m.flags if f.severity != "info"],
                           "entries": [{"product": e.product, "dose": e.dose, "source": e.provenance.source.name}
                                       for e in m.entries]}
                          for m in summary.medicines if m.current],
            "allergies": [{"substance": a.substance, "reaction": a.reaction} for a in summary.allergies],
            "alerts": [a.text for a in summary.alerts],
            "recent_results": [{"display": r.display, "latest": r.latest, "unit": r.unit, "date": r.latest_date,
                                "trend": r.trend} for r in summary.results[:12]],
            "open_referrals": [{"title": r.title, "status": r.status, "to": r.to, "date": r.date}
                               for r in summary.referrals],
            "conflicts": findings, "conflict_error": conflict_error,
            "open_tasks": tasks,
            "what_matters": [w.text for w in summary.what_matters], "care_plans": plans,
            "organisations": [o.name for o in summary.organisations],
            "prepared": now_iso()}


def open_tasks(*, gate: Gate, who: Principal, patient_id: str) -> list[dict[str, Any]]:
    """Open FHIR Tasks for the person (any organisation), soonest due first."""
    try:
        found = gate.search(who, "Task", [("patient", f"Patient/{patient_id}"), ("status", OPEN_TASK),
                                          ("_count", "200")])
    except FhirError as exc:
        if exc.status == 403:
            return []
        raise
    return sorted((_task_view(s.id, s.content) for s in found.matches), key=lambda t: t["due"] or "9999")


def _task_view(tid: str, t: dict) -> dict[str, Any]:
    due = ((t.get("restriction") or {}).get("period") or {}).get("end")
    owner_org = next((e.get("valueReference") for e in t.get("extension") or [] if e.get("url") == EXT_OWNER_ORG), None)
    return {"id": tid, "text": t.get("description") or (t.get("code") or {}).get("text"), "status": t.get("status"),
            "due": due, "owner": (t.get("owner") or {}).get("display"),
            "owner_id": _ref_id(t.get("owner"), "Practitioner"),
            "owner_organisation": (owner_org or {}).get("display"),
            "overdue": bool(due and due[:10] < date.today().isoformat() and t.get("status") != "completed")}


# -- during the meeting ---------------------------------------------------------------------------------------------
def decisions(*, gate: Gate, who: Principal, appointment_id: str) -> list[dict[str, Any]]:
    """Decisions (Tasks) recorded against one person's place in a review."""
    found = gate.search(who, "Task", [("focus", f"Appointment/{appointment_id}"), ("_count", "200")])
    return sorted((_task_view(s.id, s.content) for s in found.matches), key=lambda t: t["due"] or "")


def record_decision(*, gate: Gate, who: Principal, review_id: str, patient_id: str, text: str, owner: str,
                    due: str) -> dict[str, Any]:
    """A decision becomes a Task owned by a participating professional (and organisation) with a due date."""
    body = _check_text(text, "text")
    try:
        due_day = date.fromisoformat((due or "").strip()[:10])
    except ValueError:
        raise FhirError(422, f"'{due}' is not a due date: use YYYY-MM-DD", code="value", expression=["due"]) from None
    if due_day < date.today():
        raise FhirError(422, f"The due date {due_day.isoformat()} is in the past: choose today or later", code="value",
                        expression=["due"])
    appt = _appointment_for(gate, who, review_id, patient_id)
    owner_id = (owner or "").strip().removeprefix("Practitioner/")
    if not owner_id:
        raise FhirError(422, "Choose who owns this action", code="required", expression=["owner"])
    parts = {p["practitioner_id"]: p for p in _participants(appt.content)}
    if owner_id not in parts:
        gate.read(who, "Practitioner", owner_id)  # 404 when nobody has that id
        raise FhirError(422, "The owner must be one of the review's participants (who have a route to the person "
                             "through the review); add them to the review or assign the task from the care plan",
                        code="business-rule", expression=["owner"])
    if appt.content.get("status") in ("fulfilled", "cancelled"):
        raise FhirError(409, "This review is already completed; record further actions in the person's care plan "
                             "or as tasks. Nothing was changed.", code="conflict")
    if owner_id == who.practitioner_id:
        org = {"id": who.organization_id or "", "name": _org_name(gate, who, who.organization_id)}
    else:
        org = resolve_recipient(gate=gate, who=who, to=f"Practitioner/{owner_id}")["organization"]
    me = _me(gate, who)
    task = {"resourceType": "Task", "status": "requested", "intent": "order", "priority": "routine",
            "code": {"text": "MDT action"}, "description": body,
            "focus": {"reference": f"Appointment/{appt.id}"}, "for": {"reference": f"Patient/{patient_id}"},
            "basedOn": appt.content.get("basedOn") or [], "authoredOn": now_iso(), "lastModified": now_iso(),
            "requester": me, "owner": {"reference": f"Practitioner/{owner_id}", "display": parts[owner_id]["name"]},
            "restriction": {"period": {"end": due_day.isoformat()}},
            "extension": [{"url": EXT_OWNER_ORG, "valueReference": {"reference": f"Organization/{org['id']}",
                                                                    "display": org.get("name") or org["id"]}}]}
    if not task["basedOn"]:
        del task["basedOn"]
    w = gate.create(who, task)
    return _task_view(w.id, w.resource or task)


def record_attendance(*, gate: Gate, who: Principal, review_id: str, attendance: dict[str, str]) -> dict[str, Any]:
    """Mark who attended (accepted) or not (declined) on every person's Appointment in the review."""
    if not attendance:
        raise FhirError(422, "Say who attended", code="required", expression=["attendance"])
    wanted: dict[str, str] = {}
    for k, v in attendance.items():
        if v not in ATTENDANCE:
            raise FhirError(422, f"'{v}' is not an attendance: use {', '.join(ATTENDANCE)}", code="value",
                            expression=["attendance"])
        wanted[k.removeprefix("Practitioner/")] = ATTENDANCE[v]
    appts = _appointments(gate, who, review_id)
    known = {p["practitioner_id"] for p in _participants(appts[0].content)}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise FhirError(422, f"Not participants of this review: {', '.join(unknown)}", code="value",
                        expression=["attendance"])
    entries = []
    for s in appts:
        a = dict(s.content)
        a.pop("meta", None)
        parts = []
        for p in a.get("participant") or []:
            pid = _ref_id(p.get("actor"), "Practitioner")
            parts.append({**p, "status": wanted[pid]} if pid in wanted else p)
        a["participant"] = parts
        if a.get("status") == "booked" and any(v == "accepted" for v in wanted.values()):
            a["status"] = "arrived"
        entries.append({"resource": a, "request": {"method": "PUT", "url": f"Appointment/{s.id}",
                                                   "ifMatch": f'W/"{s.version}"'}})
    gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return get_review(gate=gate, who=who, review_id=review_id)


def complete_review(*, gate: Gate, who: Principal, review_id: str, outcome: str) -> dict[str, Any]:
    """Record the outcome: every Appointment fulfilled (outcome in comment), the MDT request completed."""
    body = _check_text(outcome, "outcome")
    appts = _appointments(gate, who, review_id)
    if all(s.content.get("status") == "fulfilled" for s in appts):
        raise FhirError(409, "This review is already completed. Nothing was changed.", code="conflict")
    entries = []
    for s in appts:
        a = dict(s.content)
        a.pop("meta", None)
        a["status"] = "fulfilled"
        a["comment"] = body
        entries.append({"resource": a, "request": {"method": "PUT", "url": f"Appointment/{s.id}",
                                                   "ifMatch": f'W/"{s.version}"'}})
        for b in a.get("basedOn") or []:
            sid = _ref_id(b, "ServiceRequest")
            if sid:
                sr = dict(gate.read(who, "ServiceRequest", sid).content)
                sr.pop("meta", None)
                sr["status"] = "completed"
                entries.append({"resource": sr, "request": {"method": "PUT", "url": f"ServiceRequest/{sid}"}})
    gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    try:
        return get_review(gate=gate, who=who, review_id=review_id)
    except FhirError as exc:
        if exc.status not in (403, 404):
            raise
        return {"id": review_id, "status": "fulfilled", "outcome": body, "people": []}
