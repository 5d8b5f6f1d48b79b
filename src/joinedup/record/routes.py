"""The holistic view over HTTP: `GET /api/patients/{id}/summary` and `/api/patients/{id}/timeline`."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.responses import Response

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.record import service
from joinedup.record.models import Summary, Timeline

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(prefix="/api/patients", tags=["record"], responses=api_errors())


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/{patient_id}/summary", response_model=Summary,
            summary="One view of the person: every section across settings, each item with source and date")
def summary(patient_id: str, who: CurrentUser, gate: GateDep):
    return _json(service.summarise(gate=gate, who=who, patient_id=patient_id))


@router.get("/{patient_id}/timeline", response_model=Timeline,
            summary="Contacts across settings, newest first, filterable by setting and type")
def timeline(patient_id: str, who: CurrentUser, gate: GateDep, setting: str | None = Query(None),
             type: str | None = Query(None, description="encounter, appointment, episode, referral, "
                                                         "advice or document")):
    return _json(service.timeline(gate=gate, who=who, patient_id=patient_id, setting=setting or None,
                                  type=type or None))
