"""The holistic view over HTTP: `GET /api/patients/{id}/summary` and `/api/patients/{id}/timeline`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from joinedup.api.auth import current_user, get_gate
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.record import service
from joinedup.record.models import Summary, Timeline

router = APIRouter(prefix="/api/patients", tags=["record"])


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/{patient_id}/summary", response_model=Summary,
            summary="One view of the person: every section across settings, each item with source and date")
async def summary(patient_id: str, request: Request, who: Principal = Depends(current_user),
                  gate: Gate = Depends(get_gate)):
    return _json(service.summarise(gate=gate, who=who, patient_id=patient_id))


@router.get("/{patient_id}/timeline", response_model=Timeline,
            summary="Contacts across settings, newest first, filterable by setting and type")
async def timeline(patient_id: str, request: Request, setting: str | None = Query(None),
                   type: str | None = Query(None, description="encounter, appointment, episode, referral, "
                                                               "advice or document"),
                   who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return _json(service.timeline(gate=gate, who=who, patient_id=patient_id, setting=setting or None,
                                  type=type or None))
