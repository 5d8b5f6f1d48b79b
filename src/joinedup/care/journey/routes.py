"""Journey tracker over HTTP: `GET /api/patients/{id}/journey`, the journey page and the patient-page panel."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request

from joinedup.api.responses import api_errors
from joinedup.care.journey import service
from joinedup.deps import CurrentUser, GateDep

router = APIRouter(tags=["care: journey"], responses=api_errors())

KIND = {"planned-discharge": "Planned discharge", "appointment": "Appointment", "referral": "Referral",
        "advice": "Advice and guidance", "task": "Task"}


@router.get("/api/patients/{patient_id}/journey",
            summary="Where the person is now, since when, and what happens next")
def journey_api(patient_id: str, who: CurrentUser, gate: GateDep):
    return service.journey(gate=gate, who=who, patient_id=patient_id)


def _web():
    from joinedup.web import pages as web

    return web


@router.get("/patients/{patient_id}/journey", include_in_schema=False)
def journey_page(request: Request, patient_id: str):
    return _web().service_page(request, "care/journey.html", lambda gate, who: {
        "j": service.journey(gate=gate, who=who, patient_id=patient_id), "pid": patient_id, "kinds": KIND,
        "error": None})


@router.get("/patients/{patient_id}/journey/panel", include_in_schema=False)
def journey_panel(request: Request, patient_id: str):
    """On the patient page: a refusal is a quiet note in the panel instead of a whole error page."""
    return _web().panel_page(
        request, "care/journey_panel.html", lambda gate, who: {
            "j": service.journey(gate=gate, who=who, patient_id=patient_id), "pid": patient_id, "kinds": KIND,
            "error": None},
        full_page=f"/patients/{quote(patient_id)}/journey",
        on_error=lambda message: {"j": None, "error": message, "pid": patient_id, "kinds": KIND})
