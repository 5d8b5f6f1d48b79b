"""Tasks (FHIR Task) assigned across organisations, overdue escalation, and the "my tasks" and "my people"
worklists of the logged-in professional.

A task's owner is a practitioner (Task.owner) and their organisation (extension task-owner-organization); its
due date is Task.restriction.period.end (FHIR's "complete by"). A task can only be given to someone with a route
to the person (a legitimate relationship). Escalation marks open tasks past their due date with
businessStatus "overdue" and raises their priority one step (routine → urgent → asap), once.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from datetime import UTC, date, datetime
from typing import Any

from joinedup import config
from joinedup.care.plans import service as plan_service
from joinedup.care.plans import team as team_service
from joinedup.care.plans.team import EXT, human_name, now_iso
from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

EXT_OWNER_ORG = EXT + "task-owner-organization"
BUSINESS_SYSTEM = codes.TASK_BUSINESS_STATUS
OPEN_TASK = ["requested", "received", "accepted", "ready", "in-progress", "on-hold"]
TASK_STATUSES = OPEN_TASK + ["completed", "cancelled", "rejected", "failed"]
PRIORITIES = ["routine", "urgent", "asap", "stat"]
NEXT_PRIORITY = {"routine": "urgent", "urgent": "asap", "asap": "stat", "stat": "stat"}
HOSPITAL_CLASSES = {"IMP": "in hospital", "ACUTE": "in hospital", "NONAC": "in hospital", "EMER": "in A&E",
                    "OBSENC": "in hospital"}
ESCALATOR = Principal(name="escalation", role="system", display="JoinedUp overdue-task escalation")
_CHUNK = 150

log = logging.getLogger("joinedup.care")


def _today(today: date | None) -> str:
    return (today or datetime.now(UTC).date()).isoformat()


def task_view(t: dict[str, Any], today: str, *, version: int | None = None,
              patient_names: dict[str, str] | None = None) -> dict[str, Any]:
    """One task in the API shape."""
    owner = t.get("owner") or {}
    org = next((e.get("valueReference") for e in t.get("extension") or [] if e.get("url") == EXT_OWNER_ORG), {}) or {}
    due = ((t.get("restriction") or {}).get("period") or {}).get("end")
    pref = (t.get("for") or {}).get("reference") or ""
    pid = pref.split("/", 1)[1] if pref.startswith("Patient/") else None
    status = t.get("status")
    business = (t.get("businessStatus") or {}).get("text")
    return {
        "id": t.get("id"), "version": str(version) if version is not None else None,
        "description": t.get("description"), "status": status, "priority": t.get("priority") or "routine",
        "patient": pid, "patient_name": (patient_names or {}).get(pid or "") or (t.get("for") or {}).get("display"),
        "owner": {"practitioner": owner.get("reference"), "name": owner.get("display"),
                  "organization": org.get("reference"), "organization_name": org.get("display")},
        "requester": (t.get("requester") or {}).get("display"), "authored": t.get("authoredOn"), "due": due,
        "overdue": bool(due and status in OPEN_TASK and due[:10] < today),
        "escalated": business == "overdue",
        "notes": [n.get("text") for n in t.get("note") or [] if n.get("text")],
    }


def create_task(*, gate: Gate, who: Principal, patient_id: str, description: str | None,
                owner_practitioner: str | None, owner_organization: str | None, due: str | None,
                priority: str = "routine", today: date | None = None) -> dict[str, Any]:
    """Give a task about a person to a named professional in any organisation that has a route to them."""
    text = plan_service._text(description, "The task", plan_service.MAX_SHORT)
    due_date = plan_service._date(due, "The task's due date")
    if priority not in PRIORITIES:
        raise FhirError(422, f"priority must be one of: {', '.join(PRIORITIES)}", code="value")
    patient = team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    owner = team_service.professional(gate=gate, who=who, practitioner=owner_practitioner,
                                      organization=owner_organization, what="The task's owner")
    team_service.require_route(gate=gate, patient_id=patient_id, owner=owner, doing="assign a task about this person to")
    now = now_iso()
    task: dict[str, Any] = {
        "resourceType": "Task", "status": "requested", "intent": "order", "priority": priority,
        "description": text, "for": {"reference": f"Patient/{patient_id}", "display": human_name(patient)},
        "authoredOn": now, "lastModified": now,
        "owner": {"reference": f"Practitioner/{owner['practitioner_id']}", "display": owner["name"]},
        "restriction": {"period": {"end": due_date}},
        "extension": [{"url": EXT_OWNER_ORG, "valueReference": {
            "reference": f"Organization/{owner['organization_id']}", "display": owner["organization"]}}],
    }
    me = team_service.who_ref(gate, who)
    if me:
        task["requester"] = me
    written = gate.create(who, task)
    return task_view(written.resource or {**task, "id": written.id}, _today(today), version=written.version)


def _read_task(gate: Gate, who: Principal, task_id: str):
    s = gate.read(who, "Task", task_id)
    pref = (s.content.get("for") or {}).get("reference") or ""
    if pref.startswith("Patient/"):  # a task is about a person: the same relationship rule applies
        team_service.require_person(gate=gate, who=who, patient_id=pref.split("/", 1)[1])
    return s


def get_task(*, gate: Gate, who: Principal, task_id: str, today: date | None = None) -> dict[str, Any]:
    s = _read_task(gate, who, task_id)
    return task_view(s.content, _today(today), version=s.version)


def update_task(*, gate: Gate, who: Principal, task_id: str, status: str | None = None, note: str | None = None,
                if_match: str | None, today: date | None = None) -> dict[str, Any]:
    """Change a task's status (accept, start, complete, ...) or add a note, on the version the editor saw."""
    if status is not None and status not in TASK_STATUSES:
        raise FhirError(422, f"Task status must be one of: {', '.join(TASK_STATUSES)}", code="value")
    note = plan_service._text(note, "The note", plan_service.MAX_SHORT, required=False)
    if status is None and note is None:
        raise FhirError(422, "Nothing to change: give a status or a note", code="required")
    s = _read_task(gate, who, task_id)
    sent = plan_service.parse_version(if_match)
    if sent is None:
        raise FhirError(428, f"Say which version of the task you are changing: send If-Match (now W/\"{s.version}\")",
                        code="required")
    if sent != str(s.version):
        raise FhirError(412, f"Task/{task_id} has changed since you opened it: you changed version {sent}, it is "
                             f"now version {s.version} (status {s.content.get('status')}). Nothing was saved; "
                             "reload and try again.", code="conflict")
    task = copy.deepcopy(s.content)
    task.pop("meta", None)
    if status is not None:
        task["status"] = status
        if status not in OPEN_TASK:
            task.pop("businessStatus", None)
    if note:
        task.setdefault("note", []).append({"text": note, "time": now_iso(),
                                            "authorString": team_service.who_text(gate, who)})
    task["lastModified"] = now_iso()
    written = gate.update(who, "Task", task_id, task, if_match=f'W/"{sent}"')
    return task_view(written.resource or task, _today(today), version=written.version)


def escalate_overdue(*, gate: Gate, who: Principal, now: datetime | str | None = None) -> dict[str, Any]:
    """Mark open tasks past their due date as overdue and raise their priority one step (once per task)."""
    if isinstance(now, datetime):
        today = now.astimezone(UTC).date().isoformat()
    elif isinstance(now, str) and now:
        today = now[:10]
    else:
        today = datetime.now(UTC).date().isoformat()
    checked = 0
    escalated: list[str] = []
    offset = 0
    while True:
        page = gate.search(who, "Task", [("status", ",".join(OPEN_TASK)), ("_count", "500"),
                                          ("_offset", str(offset)), ("_sort", "_id")])
        for s in page.matches:
            checked += 1
            t = s.content
            due = ((t.get("restriction") or {}).get("period") or {}).get("end")
            if not due or due[:10] >= today or (t.get("businessStatus") or {}).get("text") == "overdue":
                continue
            task = copy.deepcopy(t)
            task.pop("meta", None)
            old = task.get("priority") or "routine"
            task["priority"] = NEXT_PRIORITY.get(old, "urgent")
            task["businessStatus"] = {"coding": [{"system": BUSINESS_SYSTEM, "code": "overdue", "display": "Overdue"}],
                                      "text": "overdue"}
            task.setdefault("note", []).append({"time": now_iso(), "authorString": who.display or who.name,
                                                "text": f"Escalated: overdue since {due[:10]}; priority {old} → "
                                                        f"{task['priority']}"})
            try:
                gate.update(who, "Task", s.id, task, if_match=f'W/"{s.version}"')
                escalated.append(s.id)
            except FhirError as exc:  # changed meanwhile: the next run sees the new version
                if exc.status != 412:
                    raise
        if not page.has_more:
            break
        offset += len(page.matches)
    return {"checked": checked, "escalated": len(escalated), "tasks": escalated, "today": today}


# -- the periodic escalation run by the app ------------------------------------------------------------------
_runners: dict[int, threading.Thread] = {}
_runner_lock = threading.Lock()


def ensure_escalator(gate: Gate) -> None:
    """Start (once per gate) a background thread escalating overdue tasks every JOINEDUP_ESCALATE_SECONDS."""
    interval = config.value("ESCALATE_SECONDS")
    if interval <= 0 or id(gate) in _runners:
        return
    with _runner_lock:
        if id(gate) in _runners:
            return

        def run() -> None:
            while True:
                time.sleep(interval)
                try:
                    escalate_overdue(gate=gate, who=ESCALATOR)
                except Exception:  # keep the loop alive; the next run retries
                    log.exception("overdue escalation failed")

        t = threading.Thread(target=run, name="joinedup-escalation", daemon=True)
        _runners[id(gate)] = t
        t.start()


# -- worklists -----------------------------------------------------------------------------------------------
def my_tasks(*, gate: Gate, who: Principal, today: date | None = None, include_done: bool = False
             ) -> dict[str, Any]:
    """Tasks and care plan actions owned by the professional, overdue first then by due date."""
    t = _today(today)
    if not who.practitioner_id:
        return {"tasks": [], "actions": [], "overdue": 0}
    me = f"Practitioner/{who.practitioner_id}"
    params = [("owner", me), ("_count", "1000")]
    if not include_done:
        params.append(("status", ",".join(OPEN_TASK)))
    tasks = [task_view(s.content, t, version=s.version) for s in gate.search(who, "Task", params).matches]
    found = gate.search(who, "CarePlan", [("performer", me), ("status", "active"), ("_include", "CarePlan:subject"),
                                          ("_count", "1000")])
    names = {s.id: human_name(s.content) for s in found.included if s.rtype == "Patient"}
    actions = []
    for s in found.matches:
        pid = ((s.content.get("subject") or {}).get("reference") or "").split("/")[-1]
        for act in s.content.get("activity") or []:
            v = plan_service.action_view(act, t)
            if v["owner"]["practitioner"] != me or (not include_done and v["status"] not in plan_service.OPEN_ACTION):
                continue
            v.update(patient=pid, patient_name=names.get(pid), plan_version=str(s.version))
            actions.append(v)
    def key(x):
        return ((not x["overdue"], x["due"] or "9999"))
    tasks.sort(key=key)
    actions.sort(key=key)
    return {"tasks": tasks, "actions": actions,
            "overdue": sum(1 for x in tasks if x["overdue"]) + sum(1 for x in actions if x["overdue"])}


def _chunks(items: list[str], n: int = _CHUNK):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _current_encounters(gate: Gate, who: Principal, ids: list[str]) -> list[dict[str, Any]]:
    """Encounters in progress (admissions, A&E) for these people: one narrowed query, else by chunks of people."""
    wanted = set(ids)
    if not wanted:
        return []
    status = ("status", "in-progress,arrived")
    classes = ("class", ",".join(HOSPITAL_CLASSES))
    found = gate.search(who, "Encounter", [status, classes, ("_count", "2000")])
    if not found.has_more:
        return [s.content for s in found.matches if s.patient_id in wanted]
    out = []
    for chunk in _chunks([f"Patient/{i}" for i in ids]):
        out += [s.content for s in gate.search(who, "Encounter", [("patient", ",".join(chunk)), status, classes,
                                                                   ("_count", "1000")]).matches]
    return out


def my_people(*, gate: Gate, who: Principal, today: date | None = None,
              include_deceased: bool = False) -> dict[str, Any]:
    """People for whom the professional is key worker or a care team member: overdue work, who is in hospital.
    People who have died are left out unless `include_deceased` (then marked); `deceased` counts them."""
    t = _today(today)
    now = now_iso()
    if not who.practitioner_id:
        return {"people": [], "key_worker_for": 0, "in_hospital": 0, "with_overdue": 0, "deceased": 0}
    me = f"Practitioner/{who.practitioner_id}"
    teams = gate.search(who, "CareTeam", [("participant", me), ("status", "active"), ("_include", "CareTeam:subject"),
                                          ("_revinclude:iterate", "CarePlan:subject"),
                                          ("_revinclude:iterate", "Task:patient"), ("_count", "1000")])
    patients = {s.id: s.content for s in teams.included if s.rtype == "Patient"}
    people: dict[str, dict[str, Any]] = {}
    dead: set[str] = set()
    for s in teams.matches:
        c = s.content
        pid = ((c.get("subject") or {}).get("reference") or "").split("/")[-1]
        if pid not in patients:
            continue
        died = patients[pid].get("deceasedDateTime") or patients[pid].get("deceasedBoolean") is True
        if died:
            dead.add(pid)
            if not include_deceased:
                continue
        mine = [p for p in c.get("participant") or []
                if (p.get("member") or {}).get("reference") == me and team_service._active(p, now)]
        if not mine:
            continue
        kw = team_service.key_worker_of([c], now)
        row = people.setdefault(pid, {
            "id": pid, "name": human_name(patients[pid]), "birth_date": patients[pid].get("birthDate"),
            "nhs_number": next((i.get("value") for i in patients[pid].get("identifier") or []
                                if i.get("system") == codes.NHS_NUMBER), None),
            "key_worker": None, "i_am_key_worker": False, "my_role": None, "overdue": [], "open_tasks": 0,
            "open_actions": 0, "where": None, "since": None,
            "deceased": bool(died), "deceased_date": (patients[pid].get("deceasedDateTime") or "")[:10] or None})
        if kw and not row["key_worker"]:
            row["key_worker"] = kw
            row["i_am_key_worker"] = row["i_am_key_worker"] or kw["practitioner_id"] == who.practitioner_id
        row["my_role"] = row["my_role"] or team_service._role(mine[0])
    kws = [r["key_worker"] for r in people.values() if r["key_worker"]]
    team_service._names(gate, who, kws)
    for r in people.values():
        kw = r["key_worker"]
        if kw:
            r["key_worker"] = {"practitioner_id": kw["practitioner_id"], "name": kw["name"],
                               "organization": kw["organization"]}
    # the people's plans and tasks come with the care teams (one query each, by id lists, not reference ORs)
    plans = [x for x in teams.included if x.rtype == "CarePlan"]
    open_tasks = [x for x in teams.included if x.rtype == "Task" and x.content.get("status") in OPEN_TASK]
    for s in plans:
        c = s.content
        if c.get("status") != "active" or not any(
                cd.get("code") == plan_service.PLAN_CODE for cat in c.get("category") or [] for cd in cat.get("coding") or []):
            continue
        row = people.get(((c.get("subject") or {}).get("reference") or "").split("/")[-1])
        if row is None:
            continue
        for act in c.get("activity") or []:
            v = plan_service.action_view(act, t)
            if v["status"] in plan_service.OPEN_ACTION:
                row["open_actions"] += 1
            if v["overdue"]:
                row["overdue"].append({"kind": "action", "description": v["description"], "due": v["due"],
                                       "owner": v["owner"]["name"]})
    for s in open_tasks:
        v = task_view(s.content, t)
        row = people.get(v["patient"] or "")
        if row is None:
            continue
        row["open_tasks"] += 1
        if v["overdue"]:
            row["overdue"].append({"kind": "task", "description": v["description"], "due": v["due"],
                                   "owner": v["owner"]["name"]})
    try:
        encounters = _current_encounters(gate, who, sorted(people))
        hospital_hidden = False
    except FhirError as exc:  # a role that may not see hospital stays: say so, never show "not in hospital"
        if exc.status != 403:
            raise
        encounters, hospital_hidden = [], True
    for c in encounters:
        where = HOSPITAL_CLASSES.get((c.get("class") or {}).get("code") or "")
        row = people.get(((c.get("subject") or {}).get("reference") or "").split("/")[-1])
        if row is None or not where:
            continue
        start = (c.get("period") or {}).get("start")
        if row["where"] is None or (start or "") > (row["since"] or ""):
            loc = next(((x.get("location") or {}).get("display") for x in c.get("location") or []
                        if (x.get("location") or {}).get("display")), None)
            row["where"] = f"{where} ({loc})" if loc else where
            row["since"] = start
    out = sorted(people.values(), key=lambda r: (r["where"] is None, not r["overdue"], not r["i_am_key_worker"],
                                                 r["name"].split(" ")[-1].lower()))
    for r in out:
        r["overdue"].sort(key=lambda x: x["due"] or "")
    return {"people": out, "key_worker_for": sum(1 for r in out if r["i_am_key_worker"]),
            "in_hospital": sum(1 for r in out if r["where"]), "with_overdue": sum(1 for r in out if r["overdue"]),
            "deceased": len(dead), "include_deceased": include_deceased, "hospital_hidden": hospital_hidden}
