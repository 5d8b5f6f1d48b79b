"""Personalised care and support plan: what matters to me, goals and owned actions, shared by the care team.

One FHIR CarePlan per person (category personalised-care-and-support-plan) holds "what matters to me"
(description, with who wrote it), the actions (activity.detail: owner person and organisation as performers,
due date as scheduledPeriod.end, status) and references to the Goals. Every edit names the version it was
made on (If-Match); an edit made on an older version is refused with 412 and the current plan, and nothing
already saved is lost. Each version records what changed and who changed it, which is the plan's history.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any

from joinedup.care.plans import team as team_service
from joinedup.care.plans.team import EXT, new_id, now_iso, who_text
from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate, SearchResult
from joinedup.governance.identity import Principal

PLAN_SYSTEM = codes.CARE_PLAN_KIND
PLAN_CODE = codes.CARE_PLAN_CODE
PLAN_TITLE = "Personalised care and support plan"
EXT_WRITTEN_BY = codes.WHAT_MATTERS_WRITTEN_BY
EXT_CHANGE = EXT + "care-plan-change"
EXT_CHANGED_BY = EXT + "care-plan-changed-by"
EXT_FINDING = EXT + "conflict-finding"
EXT_ACTION_ADDED = EXT + "action-added"

ACTION_STATUSES = ["not-started", "scheduled", "in-progress", "on-hold", "completed", "cancelled", "stopped"]
OPEN_ACTION = {"not-started", "scheduled", "in-progress", "on-hold"}
GOAL_STATUSES = ["proposed", "planned", "accepted", "active", "on-hold", "completed", "cancelled"]
WRITTEN_BY = ["the person", "the person with support", "a carer on their behalf",
              "a professional with the person"]
MAX_TEXT = 4000
MAX_SHORT = 500


class StalePlan(FhirError):
    """An edit made on an older version of the plan (412), carrying the current plan."""

    def __init__(self, message: str, current: dict[str, Any]) -> None:
        super().__init__(412, message, code="conflict")
        self.current = current


# -- reading -------------------------------------------------------------------------------------------------
def _find(gate: Gate, who: Principal, patient_id: str) -> tuple[Any | None, list[Any]]:
    """(the CarePlan, its Goals) for a person, through the gate."""
    found: SearchResult = gate.search(who, "CarePlan", [
        ("patient", f"Patient/{patient_id}"), ("category", f"{PLAN_SYSTEM}|{PLAN_CODE}"),
        ("_include", "CarePlan:goal"), ("_count", "5")])
    plans = [s for s in found.matches if s.content.get("status") in ("active", "draft", "on-hold")]
    if not plans:
        return None, []
    plans.sort(key=lambda s: s.last_updated or "", reverse=True)
    plan = plans[0]
    wanted = {(g.get("reference") or "").split("/")[-1] for g in plan.content.get("goal") or []}
    goals = [s for s in found.included if s.rtype == "Goal" and s.id in wanted]
    return plan, goals


def _ext(node: dict[str, Any], url: str, kind: str = "valueString") -> Any:
    return next((e.get(kind) for e in node.get("extension") or [] if e.get("url") == url), None)


def _set_ext(node: dict[str, Any], url: str, value: Any, kind: str = "valueString") -> None:
    exts = [e for e in node.get("extension") or [] if e.get("url") != url]
    if value is not None:
        exts.append({"url": url, kind: value})
    if exts:
        node["extension"] = exts
    else:
        node.pop("extension", None)


def _today(today: date | None) -> str:
    return (today or datetime.now(UTC).date()).isoformat()


def action_view(act: dict[str, Any], today: str) -> dict[str, Any]:
    """One plan action in the API shape."""
    d = act.get("detail") or {}
    prac = next((p for p in d.get("performer") or [] if (p.get("reference") or "").startswith("Practitioner/")), {})
    org = next((p for p in d.get("performer") or [] if (p.get("reference") or "").startswith("Organization/")), {})
    due = (d.get("scheduledPeriod") or {}).get("end")
    status = d.get("status")
    return {
        "id": act.get("id"), "description": d.get("description"),
        "owner": {"practitioner": prac.get("reference"), "name": prac.get("display"),
                  "organization": org.get("reference"), "organization_name": org.get("display")},
        "due": due, "status": status,
        "overdue": bool(due and status in OPEN_ACTION and due[:10] < today),
        "added": _ext(act, EXT_ACTION_ADDED, "valueDateTime"),
        "finding": _ext(act, EXT_FINDING),
    }


def _goal_view(g: Any) -> dict[str, Any]:
    c = g.content
    target = next((t.get("dueDate") for t in c.get("target") or [] if t.get("dueDate")), None)
    return {"id": g.id, "description": (c.get("description") or {}).get("text"), "status": c.get("lifecycleStatus"),
            "target_date": target, "expressed_by": (c.get("expressedBy") or {}).get("display"),
            "updated": g.last_updated, "source": (c.get("meta") or {}).get("source")}


def plan_view(patient_id: str, plan: Any | None, goals: list[Any], *, today: date | None = None) -> dict[str, Any]:
    """The care plan in the shape of GET /api/patients/{id}/care-plan."""
    if plan is None:
        return {"patient": f"Patient/{patient_id}", "id": None, "version": None, "what_matters": None,
                "goals": [], "actions": [], "updated": None, "sources": []}
    c = plan.content
    t = _today(today)
    order = {(g.get("reference") or "").split("/")[-1]: n for n, g in enumerate(c.get("goal") or [])}
    goal_views = sorted((_goal_view(g) for g in goals), key=lambda g: order.get(g["id"], 0))
    sources: dict[str, str] = {}
    for item in [plan, *goals]:
        src = (item.content.get("meta") or {}).get("source")
        if src and (item.last_updated or "") > sources.get(src, ""):
            sources[src] = item.last_updated or ""
    text = c.get("description")
    return {
        "patient": f"Patient/{patient_id}", "id": plan.id, "version": str(plan.version), "title": c.get("title"),
        "what_matters": {"text": text, "written_by": _ext(c, EXT_WRITTEN_BY)} if text else None,
        "goals": goal_views,
        "actions": [action_view(a, t) for a in c.get("activity") or []],
        "updated": max([plan.last_updated or ""] + [g.last_updated or "" for g in goals]) or None,
        "sources": [{"organization": k, "updated": v} for k, v in sorted(sources.items(), key=lambda kv: kv[1],
                                                                         reverse=True)],
    }


def get_plan(*, gate: Gate, who: Principal, patient_id: str, today: date | None = None) -> dict[str, Any]:
    """The person's care plan (an empty plan with version None when none has been started)."""
    plan, goals = _find(gate, who, patient_id)
    if plan is None:
        team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    return plan_view(patient_id, plan, goals, today=today)


def history(*, gate: Gate, who: Principal, patient_id: str, count: int = 100) -> list[dict[str, Any]]:
    """Versions of the plan, newest first: when, who, what changed."""
    plan, _ = _find(gate, who, patient_id)
    if plan is None:
        return []
    _, rows = gate.history(who, rtype="CarePlan", rid=plan.id, count=count)
    out = []
    for row in rows:
        c = row["content"] or {}
        out.append({"version": str(row["version"]), "when": row["last_updated"], "by": _ext(c, EXT_CHANGED_BY),
                    "change": _ext(c, EXT_CHANGE) or ("started the plan" if row["version"] == 1 else "changed"),
                    "organization": (c.get("meta") or {}).get("source")})
    return out


# -- writing -------------------------------------------------------------------------------------------------
def parse_version(if_match: str | None) -> str | None:
    """'W/"3"', '"3"' or '3' → '3'."""
    if if_match is None:
        return None
    v = str(if_match).strip().removeprefix("W/").strip('"').strip()
    return v or None


def _new_plan(who: Principal, patient_id: str) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "CarePlan", "status": "active", "intent": "plan", "title": PLAN_TITLE,
        "category": [{"coding": [{"system": PLAN_SYSTEM, "code": PLAN_CODE, "display": PLAN_TITLE}],
                      "text": PLAN_TITLE}],
        "subject": {"reference": f"Patient/{patient_id}"}, "created": now_iso()}
    return res


def _stale(gate: Gate, who: Principal, patient_id: str, sent: str | None) -> StalePlan:
    current = get_plan(gate=gate, who=who, patient_id=patient_id)
    hist = history(gate=gate, who=who, patient_id=patient_id, count=1)
    by = f" by {hist[0]['by']}" if hist and hist[0].get("by") else ""
    when = f" at {hist[0]['when'][:16].replace('T', ' ')}" if hist and hist[0].get("when") else ""
    return StalePlan(f"The care plan has changed since you opened it: you edited version {sent or 'none'}, it is "
                     f"now version {current['version']} (changed{by}{when}). Your change was not saved and nothing "
                     "else was lost: check the latest plan, then save your change again.", current)


def _edit(*, gate: Gate, who: Principal, patient_id: str, if_match: str | None, change: str,
          mutate, new_goals: list[dict[str, Any]] | None = None, goal_updates: list[dict[str, Any]] | None = None,
          ) -> dict[str, Any]:
    """Apply mutate(plan_resource) on the version the editor saw, atomically with any Goal writes."""
    sent = parse_version(if_match)
    plan, _ = _find(gate, who, patient_id)
    if plan is None:
        team_service.require_person(gate=gate, who=who, patient_id=patient_id)
        if sent not in (None, "0"):
            raise _stale(gate, who, patient_id, sent)
        fresh = _new_plan(who, patient_id)
        _set_ext(fresh, EXT_CHANGE, "started the plan")
        _set_ext(fresh, EXT_CHANGED_BY, who_text(gate, who))
        written = gate.create(who, fresh,
                              if_none_exist=f"patient=Patient/{patient_id}&category={PLAN_SYSTEM}|{PLAN_CODE}")
        if written.status == "exists":  # someone else started it a moment ago
            raise _stale(gate, who, patient_id, sent)
        plan, _ = _find(gate, who, patient_id)
        sent = str(plan.version)
    elif sent is None:
        raise FhirError(428, "Say which version of the care plan you are editing: send If-Match with the ETag from "
                             f"GET /api/patients/{patient_id}/care-plan (now W/\"{plan.version}\")",
                        code="required")
    elif sent != str(plan.version):
        raise _stale(gate, who, patient_id, sent)
    resource = copy.deepcopy(plan.content)
    meta = {k: v for k, v in (resource.pop("meta", None) or {}).items() if k in ("source", "security", "tag")}
    if meta:
        resource["meta"] = meta
    mutate(resource)
    _set_ext(resource, EXT_CHANGE, change[:MAX_SHORT])
    _set_ext(resource, EXT_CHANGED_BY, who_text(gate, who))
    entries = []
    for g in new_goals or []:
        gid = new_id()
        g["id"] = gid
        entries.append({"fullUrl": f"Goal/{gid}", "resource": g, "request": {"method": "PUT", "url": f"Goal/{gid}"}})
        resource.setdefault("goal", []).append({"reference": f"Goal/{gid}"})
    for g in goal_updates or []:
        entries.append({"fullUrl": f"Goal/{g['id']}", "resource": g, "request": {"method": "PUT", "url": f"Goal/{g['id']}"}})
    entries.append({"fullUrl": f"CarePlan/{plan.id}", "resource": resource,
                    "request": {"method": "PUT", "url": f"CarePlan/{plan.id}", "ifMatch": f'W/"{sent}"'}})
    try:
        gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    except FhirError as exc:
        if exc.status == 412:
            raise _stale(gate, who, patient_id, sent) from None
        raise
    return get_plan(gate=gate, who=who, patient_id=patient_id)


def _text(value: str | None, what: str, limit: int = MAX_TEXT, required: bool = True) -> str | None:
    value = (value or "").strip()
    if not value:
        if required:
            raise FhirError(422, f"{what} is empty: write something", code="required")
        return None
    if len(value) > limit:
        raise FhirError(422, f"{what} is too long ({len(value)} characters; at most {limit})", code="value")
    return value


def _date(value: str | None, what: str, required: bool = True) -> str | None:
    value = (value or "").strip()
    if not value:
        if required:
            raise FhirError(422, f"{what} is required (a date such as 2026-07-31)", code="required")
        return None
    try:
        return date.fromisoformat(value[:10]).isoformat() if len(value) == 10 else \
            datetime.fromisoformat(value).date().isoformat()
    except ValueError:
        raise FhirError(422, f"{what} '{value[:40]}' is not a date (use YYYY-MM-DD, e.g. 2026-07-31)",
                        code="value") from None


def set_what_matters(*, gate: Gate, who: Principal, patient_id: str, text: str | None, written_by: str | None,
                     if_match: str | None) -> dict[str, Any]:
    """Record "what matters to me", written by or with the person."""
    body = _text(text, "What matters to the person")
    by = (written_by or "the person with support").strip()
    if by not in WRITTEN_BY:
        raise FhirError(422, f"written_by must be one of: {', '.join(WRITTEN_BY)}", code="value")

    def mutate(res: dict[str, Any]) -> None:
        res["description"] = body
        _set_ext(res, EXT_WRITTEN_BY, by)

    return _edit(gate=gate, who=who, patient_id=patient_id, if_match=if_match, mutate=mutate,
                 change=f"updated what matters to me (written by {by})")


def add_goal(*, gate: Gate, who: Principal, patient_id: str, description: str | None, target_date: str | None = None,
             if_match: str | None) -> dict[str, Any]:
    """Add a goal, in the person's words."""
    text = _text(description, "The goal", MAX_SHORT)
    due = _date(target_date, "The goal's target date", required=False)
    goal: dict[str, Any] = {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": text},
                            "subject": {"reference": f"Patient/{patient_id}"}, "startDate": now_iso()[:10],
                            "expressedBy": {"reference": f"Patient/{patient_id}", "display": "the person"}}
    if due:
        goal["target"] = [{"dueDate": due}]
    return _edit(gate=gate, who=who, patient_id=patient_id, if_match=if_match, mutate=lambda res: None,
                 new_goals=[goal], change=f"added goal '{text[:80]}'")


def update_goal(*, gate: Gate, who: Principal, patient_id: str, goal_id: str, status: str | None,
                if_match: str | None) -> dict[str, Any]:
    """Change a goal's status (e.g. achieved → completed)."""
    if status not in GOAL_STATUSES:
        raise FhirError(422, f"Goal status must be one of: {', '.join(GOAL_STATUSES)}", code="value")
    _plan, goals = _find(gate, who, patient_id)
    g = next((x for x in goals if x.id == goal_id), None)
    if g is None:
        raise FhirError(404, f"Goal/{goal_id} is not part of this person's care plan", code="not-found")
    goal = copy.deepcopy(g.content)
    goal.pop("meta", None)
    goal["lifecycleStatus"] = status
    text = (goal.get("description") or {}).get("text") or goal_id
    return _edit(gate=gate, who=who, patient_id=patient_id, if_match=if_match, mutate=lambda res: None,
                 goal_updates=[goal], change=f"goal '{text[:80]}' is now {status}")


def add_action(*, gate: Gate, who: Principal, patient_id: str, description: str | None,
               owner_practitioner: str | None, owner_organization: str | None, due: str | None,
               status: str = "not-started", if_match: str | None, finding: str | None = None) -> dict[str, Any]:
    """Add an action with an owner (person and organisation), a due date and a status."""
    text = _text(description, "The action", MAX_SHORT)
    due_date = _date(due, "The action's due date")
    if status not in ACTION_STATUSES:
        raise FhirError(422, f"Action status must be one of: {', '.join(ACTION_STATUSES)}", code="value")
    team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    owner = team_service.professional(gate=gate, who=who, practitioner=owner_practitioner,
                                      organization=owner_organization, what="The action's owner")
    team_service.require_route(gate=gate, patient_id=patient_id, owner=owner, doing="give a care plan action to")
    act: dict[str, Any] = {
        "id": new_id()[:16],
        "extension": [{"url": EXT_ACTION_ADDED, "valueDateTime": now_iso()}],
        "detail": {"kind": "Task", "status": status, "description": text,
                   "scheduledPeriod": {"end": due_date},
                   "performer": [{"reference": f"Practitioner/{owner['practitioner_id']}", "display": owner["name"]},
                                 {"reference": f"Organization/{owner['organization_id']}",
                                  "display": owner["organization"]}]}}
    if finding:
        act["extension"].append({"url": EXT_FINDING, "valueString": finding})

    def mutate(res: dict[str, Any]) -> None:
        res.setdefault("activity", []).append(act)

    return _edit(gate=gate, who=who, patient_id=patient_id, if_match=if_match, mutate=mutate,
                 change=f"added action '{text[:80]}' for {owner['name']} ({owner['organization']}), due {due_date}")


def update_action(*, gate: Gate, who: Principal, patient_id: str, action_id: str, status: str | None = None,
                  due: str | None = None, if_match: str | None) -> dict[str, Any]:
    """Change an action's status or due date."""
    if status is not None and status not in ACTION_STATUSES:
        raise FhirError(422, f"Action status must be one of: {', '.join(ACTION_STATUSES)}", code="value")
    due_date = _date(due, "The action's due date", required=False)
    if status is None and due_date is None:
        raise FhirError(422, "Nothing to change: give a status or a due date", code="required")
    plan, _ = _find(gate, who, patient_id)
    acts = (plan.content.get("activity") or []) if plan else []
    act = next((a for a in acts if a.get("id") == action_id), None)
    if act is None:
        raise FhirError(404, f"Action '{action_id}' is not part of this person's care plan", code="not-found")
    text = (act.get("detail") or {}).get("description") or action_id
    changes = []
    if status is not None:
        changes.append(f"status {status}")
    if due_date is not None:
        changes.append(f"due {due_date}")

    def mutate(res: dict[str, Any]) -> None:
        for a in res.get("activity") or []:
            if a.get("id") == action_id:
                d = a.setdefault("detail", {})
                if status is not None:
                    d["status"] = status
                if due_date is not None:
                    d["scheduledPeriod"] = {**(d.get("scheduledPeriod") or {}), "end": due_date}

    return _edit(gate=gate, who=who, patient_id=patient_id, if_match=if_match, mutate=mutate,
                 change=f"action '{text[:80]}': {', '.join(changes)}")
