"""The holistic view over HTTP: `GET /api/patients/{id}/summary` and `/api/patients/{id}/timeline`."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.record import entry, service
from joinedup.record.models import Summary, Timeline

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(prefix="/api/patients", tags=["record"], responses=api_errors())
# the record's own pages (entry detail); the app includes it with the other routers
pages = APIRouter(include_in_schema=False)


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/{patient_id}/summary", response_model=Summary,
            summary="One view of the person: every section across settings, each item with source and date")
def summary(patient_id: str, who: CurrentUser, gate: GateDep):
    return Response(service.summary_json(gate=gate, who=who, patient_id=patient_id), media_type="application/json")


@router.get("/{patient_id}/timeline", response_model=Timeline,
            summary="Contacts across settings, newest first, filterable by setting and type")
def timeline(patient_id: str, who: CurrentUser, gate: GateDep, setting: str | None = Query(None),
             type: str | None = Query(None, description="encounter, appointment, episode, referral, "
                                                         "advice or document")):
    return _json(service.timeline(gate=gate, who=who, patient_id=patient_id, setting=setting or None,
                                  type=type or None))


@router.get("/{patient_id}/entries/{rtype}/{rid}",
            summary="One entry opened in full: its text, author, organisation, dates and version history")
def entry_api(patient_id: str, rtype: str, rid: str, who: CurrentUser, gate: GateDep):
    return entry.open_entry(gate=gate, who=who, patient_id=patient_id, rtype=rtype, rid=rid)


def _web():
    from joinedup.web import pages as web

    return web


@pages.get("/patients/{patient_id}/entries/{rtype}/{rid}")
def entry_page(request: Request, patient_id: str, rtype: str, rid: str):
    """Any entry of the person page opened in full; a refusal is the styled refusal page, never the entry."""
    return _web().service_page(request, "entry.html", lambda gate, who: {
        "e": entry.open_entry(gate=gate, who=who, patient_id=patient_id, rtype=rtype, rid=rid),
        "badge": lambda setting: entry.BADGE.get(setting, "other")},
        patient_id=patient_id)
