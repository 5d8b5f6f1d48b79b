"""The person's portal over HTTP: pages under `/me/...` (the person), `/carer` (a carer), the care team's view of a
person's messages (`/patients/{id}/messages`), and the same actions as JSON under `/api/me/...`."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Form, Request

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.portal import proxy, service
from joinedup.web.pages import Viewer

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(tags=["portal"], responses=api_errors())


def _web():
    from joinedup.web import pages as web

    return web


def _field(body: Any, name: str) -> Any:
    if not isinstance(body, dict):
        raise FhirError(400, "Send a JSON object", code="invalid")
    return body.get(name)


# -- JSON --------------------------------------------------------------------------------------------------------
@router.get("/api/me/sharing", summary="My sharing choices in force, and my carers")
def sharing_api(who: CurrentUser, gate: GateDep):
    view = service.sharing(gate=gate, who=who)
    return {"choices": view["choices"], "opted_out": view["opted_out"], "objects_all": view["objects_all"],
            "carers": proxy.grants(gate=gate, who=who) if who.role == "patient" else []}


@router.post("/api/me/sharing", status_code=201,
             summary="Make a sharing choice: object-all, object-organisation, private or opt-out")
def choose_api(body: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    cid = service.choose(gate=gate, who=who, choice=_field(body, "choice"), organisation=_field(body, "organisation"),
                         entry=_field(body, "entry"))
    return {"consent": f"Consent/{cid}"}


@router.post("/api/me/sharing/{consent_id}/withdraw", summary="Withdraw one of my sharing choices")
def withdraw_api(consent_id: str, who: CurrentUser, gate: GateDep):
    return {"consent": f"Consent/{service.withdraw(gate=gate, who=who, consent_id=consent_id)}",
            "status": "inactive"}


@router.post("/api/me/carers", status_code=201,
             summary="Give a carer access: name, relationship, account, scope (appointments-plan or whole), until")
def grant_api(body: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    return proxy.grant(gate=gate, who=who, name=_field(body, "name"), relationship=_field(body, "relationship"),
                       account=_field(body, "account"), scope=_field(body, "scope"), until=_field(body, "until"))


@router.get("/api/me/carers", summary="My carers: every grant, in force, ended or withdrawn")
def carers_api(who: CurrentUser, gate: GateDep):
    return {"carers": proxy.grants(gate=gate, who=who)}


@router.post("/api/me/carers/{consent_id}/revoke", summary="End a carer's access now")
def revoke_api(consent_id: str, who: CurrentUser, gate: GateDep):
    return {"consent": f"Consent/{proxy.revoke(gate=gate, who=who, consent_id=consent_id)}", "status": "inactive"}


@router.get("/api/me/messages", summary="My messages and correction requests, with replies and their state")
def messages_api(who: CurrentUser, gate: GateDep):
    pid = service.person_of(gate, who)
    return {"threads": service.threads(gate=gate, who=who, patient_id=pid)}


@router.post("/api/me/messages", status_code=201, summary="Send a message to my care team (to: team, or a key)")
def send_api(body: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    mid = service.send_message(gate=gate, who=who, text=_field(body, "text"), to=_field(body, "to"))
    return {"message": f"Communication/{mid}"}


@router.post("/api/patients/{patient_id}/messages/{message_id}/reply", status_code=201,
             summary="Reply to a person's message or correction request (care team)")
def reply_api(patient_id: str, message_id: str, body: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    rid = service.reply(gate=gate, who=who, patient_id=patient_id, message_id=message_id, text=_field(body, "text"))
    return {"message": f"Communication/{rid}"}


# -- pages -------------------------------------------------------------------------------------------------------
@router.get("/me/plan", include_in_schema=False)
def plan_page(request: Request):
    return _web().service_page(request, "portal/plan.html", lambda gate, who: service.overview(gate=gate, who=who))


@router.get("/me/messages", include_in_schema=False)
def messages_page(request: Request, sent: int = 0):
    return _web().service_page(request, "portal/messages.html", lambda gate, who: {
        **service.my_messages(gate=gate, who=who), "sent": bool(sent), "typed": "", "error": None})


@router.post("/me/messages", include_in_schema=False)
def send_page(request: Request, who: Viewer, text: str = Form(""), to: str = Form("team")):
    web = _web()
    try:
        service.send_message(gate=web.gate_of(request), who=who, text=text, to=to)
    except FhirError as exc:
        if exc.status != 422:
            return web.error_page(request, exc.status, exc.diagnostics, who=who)
        # the page again, keeping what was typed, with the problem said next to it
        problem = exc.diagnostics
        return web.service_page(request, "portal/messages.html", lambda gate, w: {
            **service.my_messages(gate=gate, who=w), "sent": False, "typed": text, "error": problem},
            status=422, who=who)
    return _redirect("/me/messages?sent=1")


def _redirect(to: str):
    from starlette.responses import RedirectResponse

    return RedirectResponse(to, status_code=303)


def _sharing(request: Request, *, done: str = "", new_account: dict | None = None, error: str | None = None,
             status: int = 200, who=None):
    return _web().service_page(request, "portal/sharing.html", lambda gate, w: {
        **service.sharing(gate=gate, who=w), "carers": proxy.grants(gate=gate, who=w) if w.role == "patient" else [],
        "scopes": proxy.SCOPES, "done": done, "new_account": new_account, "error": error},
        status=status, who=who)


@router.get("/me/sharing", include_in_schema=False)
def sharing_page(request: Request, done: str = ""):
    return _sharing(request, done=done)


def _act(request: Request, who, do, done: str):
    """A sharing form: the change at once, then the page showing it back (or the page with the problem)."""
    web = _web()
    try:
        result = do(web.gate_of(request), who)
    except FhirError as exc:
        if exc.status not in (409, 422):
            return web.error_page(request, exc.status, exc.diagnostics, who=who)
        return _sharing(request, error=exc.diagnostics, status=exc.status, who=who)
    if isinstance(result, dict) and result.get("password"):
        return _sharing(request, done="carer", new_account=result, who=who)
    return _redirect(f"/me/sharing?done={quote(done)}#choices")


@router.post("/me/sharing", include_in_schema=False)
def choose_page(request: Request, who: Viewer, choice: str = Form(""), organisation: str = Form(""), entry: str = Form("")):
    return _act(request, who, lambda gate, who: service.choose(gate=gate, who=who, choice=choice,
                                                          organisation=organisation or None, entry=entry or None),
                done=choice)


@router.post("/me/sharing/{consent_id}/withdraw", include_in_schema=False)
def withdraw_page(request: Request, who: Viewer, consent_id: str):
    return _act(request, who, lambda gate, who: service.withdraw(gate=gate, who=who, consent_id=consent_id),
                done="withdrawn")


@router.post("/me/carers", include_in_schema=False)
def grant_page(request: Request, who: Viewer, name: str = Form(""), relationship: str = Form(""), account: str = Form(""),
               scope: str = Form(""), until: str = Form("")):
    return _act(request, who, lambda gate, who: proxy.grant(gate=gate, who=who, name=name, relationship=relationship,
                                                       account=account, scope=scope, until=until), done="carer")


@router.post("/me/carers/{consent_id}/revoke", include_in_schema=False)
def revoke_page(request: Request, who: Viewer, consent_id: str):
    return _act(request, who, lambda gate, who: proxy.revoke(gate=gate, who=who, consent_id=consent_id),
                done="revoked")


@router.get("/carer", include_in_schema=False)
def carer_page(request: Request):
    return _web().service_page(request, "portal/carer.html", lambda gate, who: proxy.carer_home(gate=gate, who=who))


@router.get("/patients/{patient_id}/messages", include_in_schema=False)
def team_messages_page(request: Request, patient_id: str, sent: int = 0):
    return _web().service_page(request, "portal/team_messages.html", lambda gate, who: {
        **service.professional_view(gate=gate, who=who, patient_id=patient_id), "sent": bool(sent)},
        patient_id=patient_id)


@router.post("/patients/{patient_id}/messages/{message_id}/reply", include_in_schema=False)
def reply_page(request: Request, patient_id: str, message_id: str, text: str = Form("")):
    return _web().service_action(request, lambda gate, who: service.reply(
        gate=gate, who=who, patient_id=patient_id, message_id=message_id, text=text),
        then=f"/patients/{quote(patient_id)}/messages?sent=1")
