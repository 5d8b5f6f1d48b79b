"""Risk and burden over HTTP: `GET /api/patients/{id}/risk` (one person), `GET /api/population/risk` (the
distribution by practice, suppressed), and the person page's panel `/patients/{id}/panels/risk`."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Query, Request

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.population import service

api_router = APIRouter(tags=["population: risk"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)


@api_router.get("/api/patients/{patient_id}/risk",
                summary="Risk and burden: Cambridge Multimorbidity Score, eFI, Charlson, regular medicines, "
                        "contacts per year, registers and care processes due")
def patient_risk(patient_id: str, who: CurrentUser, gate: GateDep,
                 date: str | None = Query(None, description="date of scoring, YYYY-MM-DD (default today)")):
    return service.person_risk(gate=gate, who=who, patient_id=patient_id, today=service.parse_day(date))


@api_router.get("/api/population/risk",
                summary="Distribution of each score by practice (planning: opt-outs excluded, small numbers "
                        "suppressed)")
def population_risk(who: CurrentUser, gate: GateDep, practice: str | None = None, pcn: str | None = None,
                    date: str | None = None):
    try:
        return service.population_risk(gate=gate, who=who, practice=practice, pcn=pcn,
                                       today=service.parse_day(date))
    except service.PopulationInputError as exc:
        raise FhirError(400, str(exc), code="value") from None


def _web():
    from joinedup.web import pages as web

    return web


def _context(gate, who, patient_id: str) -> dict:
    return {"r": service.person_risk(gate=gate, who=who, patient_id=patient_id), "pid": patient_id, "error": None}


@web_router.get("/patients/{patient_id}/risk")
def risk_page(request: Request, patient_id: str):
    return _web().service_page(request, "population/risk.html", lambda gate, who: _context(gate, who, patient_id),
                               patient_id=patient_id)


@web_router.get("/patients/{patient_id}/panels/risk")
def risk_panel(request: Request, patient_id: str):
    """The person page's risk panel (HTMX); a refusal is a quiet note in the panel."""
    return _web().panel_page(request, "population/_risk_panel.html",
                             lambda gate, who: _context(gate, who, patient_id),
                             full_page=f"/patients/{quote(patient_id)}/risk",
                             on_error=lambda message: {"r": None, "error": message, "pid": patient_id})
