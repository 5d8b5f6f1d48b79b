"""Care plans, key workers and tasks over HTTP: the API under /api and the pages (plan, my tasks, my people,
key-worker handover)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from joinedup.api.responses import api_errors
from joinedup.care.plans import reviews as review_service
from joinedup.care.plans import service as plan_service
from joinedup.care.plans import tasks as task_service
from joinedup.care.plans import team as team_service
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir import words
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.web.pages import Viewer, error_page, gate_of, page, service_page

# Plain `def` handlers (API and pages): FastAPI runs them in its thread pool, off the event loop.
api_router = APIRouter(tags=["care plans, key workers and tasks"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WhatMatters(_Body):
    what_matters: str
    written_by: str | None = None


class NewGoal(_Body):
    description: str
    target_date: str | None = None


class GoalChange(_Body):
    status: str


class NewAction(_Body):
    description: str
    owner_practitioner: str
    owner_organization: str
    due: str
    status: str = "not-started"


class ActionChange(_Body):
    status: str | None = None
    due: str | None = None


class Acceptance(_Body):
    due: str | None = None
    owner_practitioner: str | None = None
    owner_organization: str | None = None


class Handover(_Body):
    to_practitioner: str
    to_organization: str
    reason: str


class NewTask(_Body):
    description: str
    owner_practitioner: str
    owner_organization: str
    due: str
    priority: str = "routine"


class TaskChange(_Body):
    status: str | None = None
    note: str | None = None


def _etag(version: str | None) -> dict[str, str]:
    return {"ETag": f'W/"{version}"'} if version else {}


def _plan_json(plan: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(plan, status_code=status, headers=_etag(plan.get("version")))


def _stale_json(exc: plan_service.StalePlan) -> JSONResponse:
    body = exc.outcome()
    body["issue"][0]["details"] = {"text": f"current version {exc.current.get('version')}"}
    return JSONResponse(body, status_code=412, headers={**_etag(exc.current.get("version")),
                                                        "Content-Type": "application/fhir+json"})


def _plan_edit(fn, **kwargs) -> Response:
    try:
        return _plan_json(fn(**kwargs))
    except plan_service.StalePlan as exc:
        return _stale_json(exc)


# -- API: care plan ------------------------------------------------------------------------------------------
@api_router.get("/api/patients/{patient_id}/care-plan",
                summary="The personalised care and support plan: what matters, goals, owned actions (ETag = version)")
def get_care_plan(patient_id: str, who: CurrentUser, gate: GateDep):
    task_service.ensure_escalator(gate)
    return _plan_json(plan_service.get_plan(gate=gate, who=who, patient_id=patient_id))


@api_router.get("/api/patients/{patient_id}/care-plan/history", summary="Versions of the plan: when, who, what")
def care_plan_history(patient_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse({"history": plan_service.history(gate=gate, who=who, patient_id=patient_id)})


@api_router.patch("/api/patients/{patient_id}/care-plan",
                  summary="Record what matters to the person (If-Match: the plan version you edited)")
def patch_care_plan(patient_id: str, body: WhatMatters, request: Request, who: CurrentUser, gate: GateDep):
    return _plan_edit(plan_service.set_what_matters, gate=gate, who=who, patient_id=patient_id,
                      text=body.what_matters, written_by=body.written_by, if_match=request.headers.get("if-match"))


@api_router.post("/api/patients/{patient_id}/care-plan/goals", summary="Add a goal (If-Match)")
def post_goal(patient_id: str, body: NewGoal, request: Request, who: CurrentUser, gate: GateDep):
    return _plan_edit(plan_service.add_goal, gate=gate, who=who, patient_id=patient_id, description=body.description,
                      target_date=body.target_date, if_match=request.headers.get("if-match"))


@api_router.patch("/api/patients/{patient_id}/care-plan/goals/{goal_id}", summary="Change a goal's status (If-Match)")
def patch_goal(patient_id: str, goal_id: str, body: GoalChange, request: Request, who: CurrentUser,
               gate: GateDep):
    return _plan_edit(plan_service.update_goal, gate=gate, who=who, patient_id=patient_id, goal_id=goal_id,
                      status=body.status, if_match=request.headers.get("if-match"))


@api_router.post("/api/patients/{patient_id}/care-plan/actions",
                 summary="Add an action with an owner (person and organisation), a due date and a status (If-Match)")
def post_action(patient_id: str, body: NewAction, request: Request, who: CurrentUser, gate: GateDep):
    return _plan_edit(plan_service.add_action, gate=gate, who=who, patient_id=patient_id,
                      description=body.description, owner_practitioner=body.owner_practitioner,
                      owner_organization=body.owner_organization, due=body.due, status=body.status,
                      if_match=request.headers.get("if-match"))


@api_router.patch("/api/patients/{patient_id}/care-plan/actions/{action_id}",
                  summary="Change an action's status or due date (If-Match)")
def patch_action(patient_id: str, action_id: str, body: ActionChange, request: Request,
                 who: CurrentUser, gate: GateDep):
    return _plan_edit(plan_service.update_action, gate=gate, who=who, patient_id=patient_id, action_id=action_id,
                      status=body.status, due=body.due, if_match=request.headers.get("if-match"))


@api_router.get("/api/patients/{patient_id}/care-plan/review-proposals",
                summary="Proposals to merge separate condition reviews into one multimorbidity review")
def get_review_proposals(patient_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse({"proposals": review_service.proposals(gate=gate, who=who, patient_id=patient_id)})


@api_router.post("/api/patients/{patient_id}/care-plan/review-proposals/{finding}/accept",
                 summary="The key worker accepts a review merge as a care plan action (If-Match)")
def accept_review(patient_id: str, finding: str, request: Request, who: CurrentUser, gate: GateDep,
                  body: Acceptance | None = None):
    body = body or Acceptance()
    return _plan_edit(review_service.accept, gate=gate, who=who, patient_id=patient_id, finding=finding, due=body.due,
                      owner_practitioner=body.owner_practitioner, owner_organization=body.owner_organization,
                      if_match=request.headers.get("if-match"))


# -- API: care team and key worker ---------------------------------------------------------------------------
@api_router.get("/api/patients/{patient_id}/care-team", summary="The care team across organisations and handovers")
def get_care_team(patient_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse(team_service.care_team(gate=gate, who=who, patient_id=patient_id))


@api_router.get("/api/patients/{patient_id}/key-worker", summary="The person's named key worker (null if none)")
def get_key_worker(patient_id: str, who: CurrentUser, gate: GateDep):
    team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    return JSONResponse({"key_worker": team_service.key_worker(gate=gate, who=who, patient_id=patient_id)})


@api_router.post("/api/patients/{patient_id}/key-worker/handover",
                 summary="Hand the key worker role to another practitioner (explicit, with a reason, audited)")
def post_handover(patient_id: str, body: Handover, who: CurrentUser, gate: GateDep):
    return JSONResponse(team_service.handover(gate=gate, who=who, patient_id=patient_id,
                                              to_practitioner=body.to_practitioner,
                                              to_organization=body.to_organization, reason=body.reason))


# -- API: tasks and worklists --------------------------------------------------------------------------------
@api_router.post("/api/patients/{patient_id}/tasks", status_code=201,
                 summary="Give a task about the person to a professional in any organisation with a route to them")
def post_task(patient_id: str, body: NewTask, who: CurrentUser, gate: GateDep):
    view = task_service.create_task(gate=gate, who=who, patient_id=patient_id, description=body.description,
                                    owner_practitioner=body.owner_practitioner,
                                    owner_organization=body.owner_organization, due=body.due, priority=body.priority)
    return JSONResponse(view, status_code=201, headers=_etag(view["version"]))


@api_router.get("/api/patients/{patient_id}/tasks", summary="Open tasks about the person")
def patient_tasks(patient_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse({"tasks": _patient_tasks(gate, who, patient_id)})


def _patient_tasks(gate: Gate, who: Principal, patient_id: str) -> list[dict[str, Any]]:
    team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    found = gate.search(who, "Task", [("patient", f"Patient/{patient_id}"),
                                      ("status", ",".join(task_service.OPEN_TASK)), ("_count", "500")])
    today = task_service._today(None)
    out = [task_service.task_view(s.content, today, version=s.version) for s in found.matches]
    out.sort(key=lambda x: (not x["overdue"], x["due"] or "9999"))
    return out


@api_router.get("/api/tasks/{task_id}", summary="One task (ETag = version)")
def get_task(task_id: str, who: CurrentUser, gate: GateDep):
    view = task_service.get_task(gate=gate, who=who, task_id=task_id)
    return JSONResponse(view, headers=_etag(view["version"]))


@api_router.patch("/api/tasks/{task_id}", summary="Change a task's status or add a note (If-Match)")
def patch_task(task_id: str, body: TaskChange, request: Request, who: CurrentUser, gate: GateDep):
    view = task_service.update_task(gate=gate, who=who, task_id=task_id, status=body.status, note=body.note,
                                    if_match=request.headers.get("if-match"))
    return JSONResponse(view, headers=_etag(view["version"]))


@api_router.get("/api/care/my-tasks", summary="My tasks: open tasks and care plan actions I own")
def api_my_tasks(who: CurrentUser, gate: GateDep):
    task_service.ensure_escalator(gate)
    mine = task_service.my_tasks(gate=gate, who=who)
    for t in mine["tasks"]:  # the status in the platform's words as well as the FHIR code (fhir/words.py)
        t["status_text"] = words.status_words("Task", t.get("status"))
    for a in mine["actions"]:
        a["status_text"] = words.status_words("CarePlanActivity", a.get("status"))
    return JSONResponse(mine)


@api_router.get("/api/care/my-people",
                summary="My people: key worker or care team member; what is overdue, who is in hospital today")
def api_my_people(who: CurrentUser, gate: GateDep, deceased: int = 0):
    task_service.ensure_escalator(gate)
    return JSONResponse(task_service.my_people(gate=gate, who=who, include_deceased=bool(deceased)))


@api_router.post("/api/care/escalate", summary="Escalate overdue tasks now (integration account)")
def api_escalate(who: CurrentUser, gate: GateDep):
    if who.role != "system":
        gate.record(who, "escalate", allowed=False, reason="only the integration account runs escalation")
        raise FhirError(403, "Access refused: overdue escalation runs as the integration account (it runs by itself "
                             "every 15 minutes, or `joinedup care escalate`).", code="forbidden")
    return JSONResponse(task_service.escalate_overdue(gate=gate, who=who))


# -- pages ---------------------------------------------------------------------------------------------------
def _owner_choices(team: dict[str, Any]) -> list[dict[str, str]]:
    seen = set()
    out = []
    for m in team["members"]:
        if not m["practitioner_id"] or not m["organization_id"]:
            continue
        value = f"{m['practitioner_id']}|{m['organization_id']}"
        if value in seen:
            continue
        seen.add(value)
        out.append({"value": value, "label": f"{m['name']} – {m['role'] or 'care team'}, {m['organization']}"})
    return out


def _split_owner(owner: str, practitioner: str, organization: str) -> tuple[str | None, str | None]:
    if practitioner.strip() or organization.strip():
        return practitioner.strip() or None, organization.strip() or None
    if "|" in owner:
        p, _, o = owner.partition("|")
        return p or None, o or None
    return None, None


def _escalating(build: Callable[[Gate, Principal], dict[str, Any]]) -> Callable[[Gate, Principal], dict[str, Any]]:
    """`build`, after starting overdue escalation for this gate (once) – for the plan and worklist pages."""
    def run(gate: Gate, who: Principal) -> dict[str, Any]:
        task_service.ensure_escalator(gate)
        return build(gate, who)

    return run


def _plan_context(gate: Gate, who: Principal, patient_id: str, *, error: str | None = None,
                  notice: str | None = None, draft: dict[str, Any] | None = None,
                  section: str | None = None) -> dict[str, Any]:
    person = team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    plan = plan_service.get_plan(gate=gate, who=who, patient_id=patient_id)
    team = team_service.care_team(gate=gate, who=who, patient_id=patient_id)
    hist = plan_service.history(gate=gate, who=who, patient_id=patient_id, count=30)
    try:
        tasks = _patient_tasks(gate, who, patient_id)
    except FhirError as exc:
        if exc.status != 403:
            raise
        tasks = None
    try:
        proposals = review_service.proposals(gate=gate, who=who, patient_id=patient_id, plan=plan)
    except FhirError as exc:
        if exc.status != 403:
            raise
        proposals = []
    kw = team["key_worker"]
    return {"person": {"id": patient_id, "name": team_service.human_name(person),
                       "birth_date": person.get("birthDate"),
                       "nhs_number": next((i.get("value") for i in person.get("identifier") or []
                                           if i.get("system") == "https://fhir.nhs.uk/Id/nhs-number"), None),
                       "deceased": bool(person.get("deceasedDateTime") or person.get("deceasedBoolean") is True),
                       "deceased_date": person.get("deceasedDateTime")},
            "plan": plan, "team": team, "kw": kw, "history": hist, "tasks": tasks, "proposals": proposals,
            "owners": _owner_choices(team), "error": error, "notice": notice, "draft": draft or {},
            "section": section, "action_statuses": plan_service.ACTION_STATUSES,
            "goal_statuses": plan_service.GOAL_STATUSES, "written_by": plan_service.WRITTEN_BY,
            "priorities": task_service.PRIORITIES,
            "i_am_key_worker": bool(kw and kw["practitioner_id"] == who.practitioner_id)}


def _plan_page(request: Request, who: Principal, patient_id: str, *, error: str | None = None,
               notice: str | None = None, draft: dict[str, Any] | None = None, status: int = 200,
               section: str | None = None):
    """The plan page again after an edit (`who` already logged in)."""
    return service_page(request, "care/plan.html", lambda gate, who: _plan_context(
        gate, who, patient_id, error=error, notice=notice, draft=draft, section=section), who=who, status=status)


@web_router.get("/patients/{patient_id}/care-plan")
def plan_page(request: Request, patient_id: str, saved: str = ""):
    notice = {"1": "Saved."}.get(saved)
    return service_page(request, "care/plan.html", _escalating(
        lambda gate, who: _plan_context(gate, who, patient_id, notice=notice)))


def _plan_post(request: Request, who: Principal, patient_id: str, section: str, draft: dict[str, Any], call):
    """Run an edit; on success redirect (or re-render for HTMX); on refusal keep what was typed and say why."""
    htmx = bool(request.headers.get("hx-request"))
    try:
        call(gate=gate_of(request), who=who)
    except plan_service.StalePlan as exc:
        return _plan_page(request, who, patient_id, error=exc.diagnostics, draft=draft, section=section,
                          status=200 if htmx else 412)
    except FhirError as exc:
        if exc.status in (401, 403) and section != "task":
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return _plan_page(request, who, patient_id, error=exc.diagnostics, draft=draft, section=section,
                          status=200 if htmx else exc.status)
    if htmx:
        return _plan_page(request, who, patient_id, notice="Saved.")
    return RedirectResponse(f"/patients/{quote(patient_id)}/care-plan?saved=1#{section}", status_code=303)


@web_router.post("/patients/{patient_id}/care-plan/what-matters")
def plan_what_matters(request: Request, who: Viewer, patient_id: str, text: str = Form(""), written_by: str = Form(""),
                      version: str = Form("")):
    return _plan_post(request, who, patient_id, "what-matters", {"what_matters": text, "written_by": written_by},
                            lambda gate, who: plan_service.set_what_matters(
                                gate=gate, who=who, patient_id=patient_id, text=text, written_by=written_by or None,
                                if_match=version or None))


@web_router.post("/patients/{patient_id}/care-plan/goals")
def plan_add_goal(request: Request, who: Viewer, patient_id: str, description: str = Form(""), target_date: str = Form(""),
                  version: str = Form("")):
    return _plan_post(request, who, patient_id, "goals", {"goal": description, "goal_target": target_date},
                            lambda gate, who: plan_service.add_goal(
                                gate=gate, who=who, patient_id=patient_id, description=description,
                                target_date=target_date or None, if_match=version or None))


@web_router.post("/patients/{patient_id}/care-plan/goals/{goal_id}")
def plan_goal_status(request: Request, who: Viewer, patient_id: str, goal_id: str, status: str = Form(""),
                     version: str = Form("")):
    return _plan_post(request, who, patient_id, "goals", {},
                            lambda gate, who: plan_service.update_goal(
                                gate=gate, who=who, patient_id=patient_id, goal_id=goal_id, status=status,
                                if_match=version or None))


@web_router.post("/patients/{patient_id}/care-plan/actions")
def plan_add_action(request: Request, who: Viewer, patient_id: str, description: str = Form(""), owner: str = Form(""),
                    owner_practitioner: str = Form(""), owner_organization: str = Form(""),
                    due: str = Form(""), version: str = Form("")):
    prac, org = _split_owner(owner, owner_practitioner, owner_organization)
    draft = {"action": description, "action_owner": owner, "action_due": due}
    return _plan_post(request, who, patient_id, "actions", draft,
                            lambda gate, who: plan_service.add_action(
                                gate=gate, who=who, patient_id=patient_id, description=description,
                                owner_practitioner=prac, owner_organization=org, due=due, if_match=version or None))


@web_router.post("/patients/{patient_id}/care-plan/actions/{action_id}")
def plan_action_status(request: Request, who: Viewer, patient_id: str, action_id: str, status: str = Form(""),
                       version: str = Form("")):
    return _plan_post(request, who, patient_id, "actions", {},
                            lambda gate, who: plan_service.update_action(
                                gate=gate, who=who, patient_id=patient_id, action_id=action_id, status=status or None,
                                if_match=version or None))


@web_router.post("/patients/{patient_id}/care-plan/reviews/{finding}/accept")
def plan_accept_review(request: Request, who: Viewer, patient_id: str, finding: str, due: str = Form(""),
                       version: str = Form("")):
    return _plan_post(request, who, patient_id, "actions", {},
                            lambda gate, who: review_service.accept(
                                gate=gate, who=who, patient_id=patient_id, finding=finding, due=due or None,
                                if_match=version or None))


@web_router.post("/patients/{patient_id}/tasks")
def plan_new_task(request: Request, who: Viewer, patient_id: str, description: str = Form(""), owner: str = Form(""),
                  owner_practitioner: str = Form(""), owner_organization: str = Form(""), due: str = Form(""),
                  priority: str = Form("routine")):
    prac, org = _split_owner(owner, owner_practitioner, owner_organization)
    draft = {"task": description, "task_owner": owner, "task_due": due, "task_priority": priority,
             "task_practitioner": owner_practitioner, "task_organization": owner_organization}
    return _plan_post(request, who, patient_id, "task", draft,
                            lambda gate, who: task_service.create_task(
                                gate=gate, who=who, patient_id=patient_id, description=description,
                                owner_practitioner=prac, owner_organization=org, due=due, priority=priority))


def _tasks_context(mine: dict[str, Any], *, done: bool = False, error: str | None = None) -> dict[str, Any]:
    return {"mine": mine, "done": done, "error": error, "statuses": task_service.TASK_STATUSES,
            "action_statuses": plan_service.ACTION_STATUSES}


@web_router.get("/care/tasks")
def tasks_page(request: Request, done: int = 0):
    return service_page(request, "care/tasks.html", _escalating(lambda gate, who: _tasks_context(
        task_service.my_tasks(gate=gate, who=who, include_done=bool(done)), done=bool(done))))


@web_router.post("/care/tasks/{task_id}")
def task_status(request: Request, who: Viewer, task_id: str, status: str = Form(""), version: str = Form("")):
    gate = gate_of(request)
    try:
        task_service.update_task(gate=gate, who=who, task_id=task_id, status=status or None, if_match=version or None)
    except FhirError as exc:
        if exc.status in (403, 404):
            return error_page(request, exc.status, exc.diagnostics, who=who)
        mine = task_service.my_tasks(gate=gate, who=who)
        return page(request, "care/tasks.html", _tasks_context(mine, error=exc.diagnostics), who=who,
                    status=exc.status)
    return RedirectResponse("/care/tasks", status_code=303)


def _server_timing(started: float) -> Callable[[HTMLResponse], None]:
    def stamp(resp: HTMLResponse) -> None:
        resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"

    return stamp


@web_router.get("/care/people")
def people_page(request: Request, deceased: int = 0):
    started = time.perf_counter()
    return service_page(request, "care/people.html", _escalating(
        lambda gate, who: {"mine": task_service.my_people(gate=gate, who=who, include_deceased=bool(deceased))}),
        after=_server_timing(started))


def _handover_page(request: Request, patient_id: str, *, who: Principal | None = None,
                   form: dict[str, str] | None = None, error: str | None = None, status: int = 200):
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        person = team_service.require_person(gate=gate, who=who, patient_id=patient_id)
        team = team_service.care_team(gate=gate, who=who, patient_id=patient_id)
        kw = team["key_worker"]
        return {"person": {"id": patient_id, "name": team_service.human_name(person)}, "team": team,
                "owners": [o for o in _owner_choices(team)
                           if not kw or not o["value"].startswith(kw["practitioner_id"] + "|")],
                "form": form or {}, "error": error}

    return service_page(request, "care/handover.html", build, who=who, status=status)


@web_router.get("/patients/{patient_id}/key-worker/handover")
def handover_form(request: Request, patient_id: str):
    return _handover_page(request, patient_id)


@web_router.post("/patients/{patient_id}/key-worker/handover")
def handover_submit(request: Request, who: Viewer, patient_id: str, owner: str = Form(""), to_practitioner: str = Form(""),
                    to_organization: str = Form(""), reason: str = Form("")):
    prac, org = _split_owner(owner, to_practitioner, to_organization)
    form = {"owner": owner, "to_practitioner": to_practitioner, "to_organization": to_organization, "reason": reason}
    try:
        team_service.handover(gate=gate_of(request), who=who, patient_id=patient_id, to_practitioner=prac,
                              to_organization=org, reason=reason)
    except FhirError as exc:
        if exc.status in (401, 403, 404):
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return _handover_page(request, patient_id, who=who, form=form, error=exc.diagnostics, status=exc.status)
    return RedirectResponse(f"/patients/{quote(patient_id)}/care-plan?saved=1#team", status_code=303)
