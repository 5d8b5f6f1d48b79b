"""Notifications over HTTP: `/api/inbox`, `/api/inbox/{id}/read`, `/api/subscriptions`, and the inbox pages."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from starlette.responses import HTMLResponse, RedirectResponse

from joinedup.api.auth import current_user, get_gate
from joinedup.care import notifications as service
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

router = APIRouter(tags=["care: notifications"])


@router.get("/api/inbox", summary="My notifications, newest first (people's details read through the gate)")
def inbox_api(unread: bool = False, limit: int = 100, who: Principal = Depends(current_user),
              gate: Gate = Depends(get_gate)):
    if not 1 <= limit <= 500:
        raise FhirError(400, "limit must be from 1 to 500", code="value", expression=["limit"])
    return service.inbox(gate=gate, who=who, unread_only=unread, limit=limit)


@router.post("/api/inbox/{item_id}/read", summary="Mark one notification as read")
def read_api(item_id: int, who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return {"marked": service.mark_read(gate=gate, who=who, item_id=item_id)}


@router.post("/api/inbox/read-all", summary="Mark every notification as read")
def read_all_api(who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return {"marked": service.mark_read(gate=gate, who=who)}


@router.get("/api/subscriptions", summary="Which event types I receive")
def prefs_api(who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return {"events": service.preferences(gate=gate, who=who), "names": service.EVENT_TYPES}


@router.put("/api/subscriptions", summary="Turn event types on or off, e.g. {\"admission\": false}")
def set_prefs_api(choices: Any = Body(...), who: Principal = Depends(current_user),
                  gate: Gate = Depends(get_gate)):
    return {"events": service.set_preferences(gate=gate, who=who, choices=choices), "names": service.EVENT_TYPES}


# -- pages ------------------------------------------------------------------------------------------------------
def _web():
    from joinedup.web import routes as web

    return web


@router.get("/inbox", include_in_schema=False)
def inbox_page(request: Request, unread: int = 0):
    return _web().service_page(request, "care/inbox.html", lambda gate, who: {
        "box": service.inbox(gate=gate, who=who, unread_only=bool(unread)), "unread_only": bool(unread)})


@router.get("/inbox/count", include_in_schema=False)
def inbox_count(request: Request):
    """The unread count for the page header (polled by HTMX)."""
    web = _web()
    who = web._who(request)
    if who is None or who.role in ("patient", "analyst"):
        return HTMLResponse("")
    n = service.unread_count(gate=web._gate(request), who=who)
    return web.page(request, "care/inbox_count.html", {"n": n}, who=who)


@router.post("/inbox/{item_id}/read", include_in_schema=False)
def read_page(request: Request, item_id: int):
    return _web().service_action(
        request, lambda gate, who: service.mark_read(gate=gate, who=who, item_id=item_id), then="/inbox")


@router.post("/inbox/read-all", include_in_schema=False)
def read_all_page(request: Request):
    return _web().service_action(request, lambda gate, who: service.mark_read(gate=gate, who=who), then="/inbox")


@router.get("/inbox/settings", include_in_schema=False)
def settings_page(request: Request, saved: int = 0):
    return _web().service_page(request, "care/inbox_settings.html", lambda gate, who: {
        "prefs": service.preferences(gate=gate, who=who), "names": service.EVENT_TYPES, "saved": bool(saved)})


@router.post("/inbox/settings", include_in_schema=False)
async def settings_submit(request: Request):
    web = _web()
    who = web._who(request)
    if who is None:
        return web._to_login(request)
    form = await request.form()
    chosen = set(form.getlist("event"))
    unknown = chosen - set(service.EVENT_TYPES)
    if unknown:
        return web.error_page(request, 400, f"Unknown event type '{min(unknown)}'", who=who)
    try:
        service.set_preferences(gate=web._gate(request), who=who,
                                choices={t: t in chosen for t in service.EVENT_TYPES})
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    return RedirectResponse("/inbox/settings?saved=1", status_code=303)
