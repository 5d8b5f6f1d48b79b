"""The system domain over HTTP: the services directory (`/api/directory`, `/directory`), who can help a person
(`/api/patients/{id}/who-can-help`, `/patients/{id}/who-can-help`) and the integration self-assessment
(`/api/assessment`, `/assessment`, the printable `/assessment/report`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import JSONResponse

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep, JsonObject
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.system import assessment, charts
from joinedup.system import service as directory
from joinedup.system.knowledge import needs

api_router = APIRouter(tags=["system: directory and integration self-assessment"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)


def _web():
    from joinedup.web import pages

    return pages


# -- API: directory -----------------------------------------------------------------------------------------------
@api_router.get("/api/directory", summary="Services that can help with a need (who does what, across settings)")
def directory_api(who: CurrentUser, gate: GateDep,
                  need: str | None = Query(None, description="what the person needs help with, e.g. 'falls'")):
    return JSONResponse(directory.find_services(gate=gate, who=who, need=need or ""))


@api_router.get("/api/directory/services/{service_id}", summary="One service: what it accepts, contact, hours, people")
def service_api(service_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse(directory.get_service(gate=gate, who=who, service_id=service_id))


@api_router.get("/api/patients/{patient_id}/who-can-help",
                summary="Services matched to the person's active problems and care plan goals (or to one need)")
def who_can_help_api(patient_id: str, who: CurrentUser, gate: GateDep, need: str | None = None):
    if need is not None:
        directory.check_need(need)
    return JSONResponse(directory.who_can_help(gate=gate, who=who, patient_id=patient_id, need=need))


# -- API: self-assessment -----------------------------------------------------------------------------------------
@api_router.get("/api/assessment", summary="Every framework item with its source, latest score and live evidence")
def assessment_api(who: CurrentUser, gate: GateDep):
    return JSONResponse(assessment.report(gate=gate, who=who))


@api_router.get("/api/assessment/questionnaire", summary="The FHIR Questionnaire generated from the framework files")
def questionnaire_api(who: CurrentUser, gate: GateDep):
    gate.check(who, "assess", None, entity="assessment-questionnaire")
    return JSONResponse(assessment.questionnaire())


@api_router.get("/api/assessment/rounds", summary="The self-assessment rounds, oldest first")
def rounds_api(who: CurrentUser, gate: GateDep):
    return JSONResponse({"rounds": assessment.rounds(gate=gate, who=who)})


@api_router.post("/api/assessment/rounds", status_code=201, summary="Open a new round (the open one is completed)")
def new_round_api(body: JsonObject, who: CurrentUser, gate: GateDep):
    return JSONResponse(assessment.start_round(gate=gate, who=who, label=body.get("label")), status_code=201)


@api_router.put("/api/assessment/items/{item_id}", summary="Score one item (1-5) with evidence and an owner")
def score_api(item_id: str, body: JsonObject, who: CurrentUser, gate: GateDep):
    unknown = sorted(set(body) - {"score", "evidence", "owner"})
    if unknown:
        raise FhirError(422, f"Unknown field(s): {', '.join(unknown)} (send score, evidence, owner)", code="value",
                        expression=unknown)
    return JSONResponse(assessment.score_item(gate=gate, who=who, item_id=item_id, score=body.get("score"),
                                              evidence_text=body.get("evidence"), owner=body.get("owner")))


# -- pages: directory --------------------------------------------------------------------------------------------
def _directory_context(gate: Gate, who: Principal, need: str | None) -> dict[str, Any]:
    return {"result": directory.directory(gate=gate, who=who, query=need), "need": need or "",
            "needs": needs()["needs"], "error": None}


@web_router.get("/directory")
def directory_page(request: Request, need: str | None = None):
    web = _web()

    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        try:
            return _directory_context(gate, who, need)
        except FhirError as exc:
            if exc.status != 400:
                raise
            return {"result": None, "need": need or "", "needs": needs()["needs"], "error": exc.diagnostics}

    resp = web.service_page(request, "system/directory.html", build)
    if getattr(resp, "context", None) and resp.context.get("error"):
        resp.status_code = 400
    return resp


@web_router.get("/directory/services/{service_id}")
def service_page(request: Request, service_id: str):
    return _web().service_page(request, "system/service.html", lambda gate, who: {
        "s": directory.get_service(gate=gate, who=who, service_id=service_id)})


@web_router.get("/patients/{patient_id}/who-can-help")
def who_can_help_page(request: Request, patient_id: str, need: str | None = None):
    web = _web()

    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        error = None
        try:
            if need is not None and need.strip():
                directory.check_need(need)
            result = directory.who_can_help(gate=gate, who=who, patient_id=patient_id, need=need)
        except FhirError as exc:
            if exc.status != 400:
                raise
            error, result = exc.diagnostics, directory.who_can_help(gate=gate, who=who, patient_id=patient_id)
        return {"r": result, "pid": patient_id, "need": need or "", "error": error}

    resp = web.service_page(request, "system/who_can_help.html", build, patient_id=patient_id)
    if getattr(resp, "context", None) and resp.context.get("error"):
        resp.status_code = 400
    return resp


# -- pages: self-assessment ----------------------------------------------------------------------------------------
def _assessment_context(gate: Gate, who: Principal, **extra: Any) -> dict[str, Any]:
    rep = assessment.report(gate=gate, who=who)
    return {"rep": rep, "charts": {f["framework"]: charts.framework_chart(f) for f in rep["frameworks"]},
            "scores": assessment.SCORES, "error": None, "form": {}, "focus": None, **extra}


@web_router.get("/assessment")
def assessment_page(request: Request):
    return _web().service_page(request, "system/assessment.html", _assessment_context)


@web_router.get("/assessment/report")
def report_page(request: Request):
    return _web().service_page(request, "system/report.html", _assessment_context)


@web_router.post("/assessment/items/{item_id}")
def score_form(request: Request, item_id: str, score: str = Form(""), evidence: str = Form(""), owner: str = Form("")):
    web = _web()
    form = {"score": score, "evidence": evidence, "owner": owner}

    def do(gate: Gate, who: Principal) -> Any:
        return assessment.score_item(gate=gate, who=who, item_id=item_id, score=score, evidence_text=evidence,
                                     owner=owner)

    resp = web.service_action(request, do, then=f"/assessment#{quote(item_id)}")
    if resp.status_code == 422:  # show the form again with what was typed and why it was refused
        def again(gate: Gate, who: Principal) -> dict[str, Any]:
            return _assessment_context(gate, who, error=_error_text(resp), form=form, focus=item_id)

        return web.service_page(request, "system/assessment.html", again, status=422)
    return resp


def _error_text(resp: Any) -> str:
    ctx = getattr(resp, "context", None) or {}
    return ctx.get("message") or "Please check what you entered."


@web_router.post("/assessment/rounds")
def round_form(request: Request, label: str = Form("")):
    web = _web()
    resp = web.service_action(request, lambda gate, who: assessment.start_round(gate=gate, who=who, label=label),
                              then="/assessment")
    if resp.status_code in (409, 422):
        message = _error_text(resp)
        return web.service_page(request, "system/assessment.html", lambda gate, who: _assessment_context(
            gate, who, error=message, form={"label": label}, focus="new-round"), status=resp.status_code)
    return resp
