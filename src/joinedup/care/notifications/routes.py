"""Notifications over HTTP: `/api/inbox`, `/api/inbox/{id}/read`, `/api/subscriptions`, and the inbox pages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse

from joinedup.api.responses import api_errors
from joinedup.care.notifications import service
from joinedup.deps import CurrentUser, FormData, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.web.pages import Viewer

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(tags=["care: notifications"], responses=api_errors())
MAX_ITEM_ID = 2_147_483_647  # inbox item ids are 32-bit integers in the store


@router.get("/api/inbox", summary="My notifications, newest first (people's details read through the gate)")
def inbox_api(who: CurrentUser, gate: GateDep, unread: bool = False,
              limit: Annotated[int, Query(ge=1, le=500, description="1 to 500")] = 100):
    return service.inbox(gate=gate, who=who, unread_only=unread, limit=limit)


@router.post("/api/inbox/{item_id}/read", summary="Mark one notification as read")
def read_api(item_id: Annotated[int, Path(ge=1, le=MAX_ITEM_ID, description="The notification's number")],
             who: CurrentUser, gate: GateDep):
    return {"marked": service.mark_read(gate=gate, who=who, item_id=item_id)}


@router.post("/api/inbox/read-all", summary="Mark every notification as read")
def read_all_api(who: CurrentUser, gate: GateDep):
    return {"marked": service.mark_read(gate=gate, who=who)}


@router.get("/api/subscriptions", summary="Which event types I receive")
def prefs_api(who: CurrentUser, gate: GateDep):
    return {"events": service.preferences(gate=gate, who=who), "names": service.EVENT_TYPES}


@router.put("/api/subscriptions", summary="Turn event types on or off, e.g. {\"admission\": false}")
def set_prefs_api(choices: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    return {"events": service.set_preferences(gate=gate, who=who, choices=choices), "names": service.EVENT_TYPES}


# -- pages ------------------------------------------------------------------------------------------------------
def _web():
    from joinedup.web import pages as web

    return web


@router.get("/inbox", include_in_schema=False)
def inbox_page(request: Request, unread: int = 0):
    return _web().service_page(request, "care/inbox.html", lambda gate, who: {
        "box": service.inbox(gate=gate, who=who, unread_only=bool(unread)), "unread_only": bool(unread)})


@router.get("/inbox/count", include_in_schema=False)
def inbox_count(request: Request):
    """The unread count for the page header (polled by HTMX)."""
    web = _web()
    who = web.current_who(request)
    if who is None or who.role in ("patient", "analyst"):
        return HTMLResponse("")
    n = service.unread_count(gate=web.gate_of(request), who=who)
    return web.page(request, "care/inbox_count.html", {"n": n}, who=who)


@router.post("/inbox/{item_id}/read", include_in_schema=False)
def read_page(request: Request, item_id: Annotated[int, Path(ge=1, le=MAX_ITEM_ID)]):
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
def settings_submit(request: Request, who: Viewer, form: FormData):
    web = _web()
    chosen = set(form.getlist("event"))
    unknown = chosen - set(service.EVENT_TYPES)
    if unknown:
        return web.error_page(request, 400, f"Unknown event type '{min(unknown)}'", who=who)
    try:
        service.set_preferences(gate=web.gate_of(request), who=who,
                                choices={t: t in chosen for t in service.EVENT_TYPES})
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    return RedirectResponse("/inbox/settings?saved=1", status_code=303)
