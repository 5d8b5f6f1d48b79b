"""Referrals and advice and guidance over HTTP: `/api/referrals`, `/api/advice` and the pages under `/referrals`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse

from joinedup.api.responses import api_errors
from joinedup.care.referrals import service as svc
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.web.pages import Viewer, error_page, gate_of, page, service_page

# Plain `def` handlers (API and pages): FastAPI runs them in its thread pool, off the event loop.
api_router = APIRouter(tags=["referrals and advice"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


# -- API ---------------------------------------------------------------------------------------------------------
@api_router.post("/api/referrals", status_code=201, summary="Refer a person to a specialist (ServiceRequest)")
def create_referral(body: svc.NewRequest, who: CurrentUser, gate: GateDep):
    return _json(svc.create_request(gate=gate, who=who, kind="referral", **body.model_dump()), 201)


@api_router.post("/api/advice", status_code=201,
                 summary="Ask a specialist for advice and guidance (ServiceRequest + first Communication)")
def create_advice(body: svc.NewRequest, who: CurrentUser, gate: GateDep):
    return _json(svc.create_request(gate=gate, who=who, kind="advice", **body.model_dump()), 201)


@api_router.get("/api/referrals", summary="Inbox or outbox of referrals and advice requests, with status")
def list_all(who: CurrentUser, gate: GateDep,
             box: str = Query("inbox", description="inbox (to me or my organisation) or outbox (sent by me)"),
             kind: str | None = Query(None, description="advice or referral"),
             state: str | None = Query(None, description="open, done or a state")):
    return _json({"box": box, "items": svc.list_requests(gate=gate, who=who, box=box, kind=kind, state=state)})


@api_router.get("/api/advice", summary="Inbox or outbox of advice requests")
def list_advice(who: CurrentUser, gate: GateDep, box: str = "inbox", state: str | None = None):
    return _json({"box": box, "items": svc.list_requests(gate=gate, who=who, box=box, kind="advice", state=state)})


@api_router.get("/api/advice/response-times",
                summary="Advice-and-guidance volumes and response times (median and 90th percentile, hours)")
def response_times(who: CurrentUser, gate: GateDep,
                   since: str | None = Query(None, description="YYYY-MM-DD (default: a year ago)")):
    return _json(svc.advice_response_times(gate=gate, who=who, since=since))


def _conversation_routes(prefix: str) -> None:
    @api_router.get(f"{prefix}/{{request_id}}", summary="A referral or advice request with its thread and status")
    def get_one(request_id: str, who: CurrentUser, gate: GateDep):
        return _json(svc.get_request(gate=gate, who=who, request_id=request_id))

    @api_router.post(f"{prefix}/{{request_id}}/reply", summary="The recipient replies")
    def reply(request_id: str, body: svc.Message, who: CurrentUser, gate: GateDep):
        return _json(svc.reply(gate=gate, who=who, request_id=request_id, text=body.text))

    @api_router.post(f"{prefix}/{{request_id}}/ask-more", summary="The recipient asks for more information")
    def ask_more(request_id: str, body: svc.Message, who: CurrentUser, gate: GateDep):
        return _json(svc.ask_more(gate=gate, who=who, request_id=request_id, text=body.text))

    @api_router.post(f"{prefix}/{{request_id}}/answer", summary="The requester gives further information")
    def answer(request_id: str, body: svc.Message, who: CurrentUser, gate: GateDep):
        return _json(svc.answer(gate=gate, who=who, request_id=request_id, text=body.text))

    @api_router.post(f"{prefix}/{{request_id}}/close", summary="Close the conversation (either side)")
    def close(request_id: str, who: CurrentUser, gate: GateDep, body: svc.Closing | None = None):
        return _json(svc.close(gate=gate, who=who, request_id=request_id, text=body.text if body else None))


_conversation_routes("/api/referrals")
_conversation_routes("/api/advice")


@api_router.post("/api/advice/{request_id}/convert", status_code=201,
                 summary="Convert advice into a referral (a new ServiceRequest that replaces the advice request)")
def convert(request_id: str, who: CurrentUser, gate: GateDep, body: svc.Converting | None = None):
    body = body or svc.Converting()
    return _json(svc.convert(gate=gate, who=who, request_id=request_id, text=body.text, priority=body.priority), 201)


# -- pages -----------------------------------------------------------------------------------------------------------
@web_router.get("/referrals")
def inbox_page(request: Request, box: str = "inbox", state: str = ""):
    return service_page(request, "care/referrals.html", lambda gate, who: {
        "items": svc.list_requests(gate=gate, who=who, box=box, state=state or None), "box": box, "state": state,
        "states": svc.STATE_TEXT})


@web_router.get("/referrals/new")
def new_page(request: Request, patient: str = "", kind: str = "advice"):
    return _new_form(request, {"patient_id": patient, "kind": kind, "to": "", "text": "", "reason": "",
                               "priority": "routine"})


def _new_form(request: Request, form: dict, error: str | None = None, status: int = 200, *,
              who: Principal | None = None):
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        patient = None
        if form.get("patient_id"):
            patient = svc.person_name(gate.read(who, "Patient", form["patient_id"]).content)
        return {"form": form, "patient": patient, "error": error, "priorities": svc.PRIORITIES,
                "recipients": svc.recipients(gate=gate, who=who, need=form.get("reason"))}

    return service_page(request, "care/referral_new.html", build, who=who, status=status)


@web_router.post("/referrals/new")
def new_submit(request: Request, who: Viewer, patient_id: str = Form(""), kind: str = Form("advice"), to: str = Form(""),
               text: str = Form(""), reason: str = Form(""), priority: str = Form("routine")):
    form = {"patient_id": patient_id.strip(), "kind": kind, "to": to, "text": text, "reason": reason,
            "priority": priority}
    if not form["patient_id"]:
        return _new_form(request, form, "Say who this is about (the person's record id).", 422, who=who)
    if not to:
        return _new_form(request, form, "Choose who to send it to.", 422, who=who)
    try:
        view = svc.create_request(gate=gate_of(request), who=who, kind=kind, patient_id=form["patient_id"], to=to,
                                  text=text, reason=reason or None, priority=priority)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return _new_form(request, form, exc.diagnostics, exc.status, who=who)
    return RedirectResponse(f"/referrals/{quote(view['id'])}", status_code=303)


@web_router.get("/referrals/{request_id}")
def thread_page(request: Request, request_id: str):
    return service_page(request, "care/referral_thread.html", lambda gate, who: {
        "r": svc.get_request(gate=gate, who=who, request_id=request_id), "error": None, "draft": ""})


@web_router.post("/referrals/{request_id}/{action}")
def thread_action(request: Request, who: Viewer, request_id: str, action: str, text: str = Form("")):
    """Reply, ask more, answer, close or convert from the thread page (HTMX swaps the thread; plain forms redirect)."""
    gate = gate_of(request)
    fns = {"reply": svc.reply, "ask-more": svc.ask_more, "answer": svc.answer}
    htmx = bool(request.headers.get("hx-request"))
    try:
        if action in fns:
            view = fns[action](gate=gate, who=who, request_id=request_id, text=text)
        elif action == "close":
            view = svc.close(gate=gate, who=who, request_id=request_id, text=text or None)
        elif action == "convert":
            view = svc.convert(gate=gate, who=who, request_id=request_id, text=text or None)
            return RedirectResponse(f"/referrals/{quote(view['id'])}", status_code=303) if not htmx else \
                _hx_redirect(f"/referrals/{quote(view['id'])}")
        else:
            return error_page(request, 404, f"Unknown action '{action}'", who=who)
    except FhirError as exc:
        if exc.status in (403, 404, 410):
            return error_page(request, exc.status, exc.diagnostics, who=who)
        # keep what the person typed, show why it was refused
        error = exc.diagnostics
        return service_page(request, "care/_referral_thread_body.html" if htmx else "care/referral_thread.html",
                            lambda gate, who: {"r": svc.get_request(gate=gate, who=who, request_id=request_id),
                                               "error": error, "draft": text},
                            who=who, status=200 if htmx else exc.status,
                            after=_refused(exc.status) if htmx else None)
    if htmx:
        return page(request, "care/_referral_thread_body.html", {"r": view, "error": None, "draft": "",
                                                                 "done": action}, who=who)
    return RedirectResponse(f"/referrals/{quote(request_id)}", status_code=303)


def _refused(status: int) -> Callable[[HTMLResponse], None]:
    """HTMX swaps only 2xx responses: the partial carries the refusal, and its status in X-Refused-Status."""
    def stamp(resp: HTMLResponse) -> None:
        resp.headers["X-Refused-Status"] = str(status)

    return stamp


def _hx_redirect(url: str):
    from starlette.responses import Response

    return Response(status_code=200, headers={"HX-Redirect": url})
