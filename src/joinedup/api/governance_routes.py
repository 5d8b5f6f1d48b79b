"""Governance APIs: break-glass, the privacy officer's review queue, a person's access log; access notices."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request

from joinedup.api.auth import current_user, get_gate
from joinedup.api.responses import FhirResponse
from joinedup.fhir.errors import FhirError
from joinedup.fhir.validation import parse_json
from joinedup.governance import service
from joinedup.governance.gate import Gate, access_notices
from joinedup.governance.identity import Principal

router = APIRouter(prefix="/api", tags=["governance"])
ACCESS_HEADER = "X-JoinedUp-Access"


async def _json_object(request: Request) -> dict:
    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise FhirError(400, "The request body must be a JSON object", code="invalid")
    return body


def _json(doc, status: int = 200) -> FhirResponse:
    return FhirResponse(doc, status_code=status, media_type="application/json")


@router.post("/break-glass", summary="Emergency access to one person's record (time-limited, reviewed)")
async def break_glass(request: Request, who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    body = await _json_object(request)
    grant = service.grant_break_glass(gate, who, patient_id=body.get("patient"),
                                      reason_category=body.get("reason_category"), reason=body.get("reason"),
                                      hours=body.get("hours"))
    return _json(grant, 201)


@router.get("/break-glass", summary="My active break-glass grants")
async def my_break_glass(who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return _json({"grants": service.my_grants(gate, who),
                  "reason_categories": service.REASON_CATEGORIES})


@router.get("/privacy/reviews", summary="Break-glass review queue (privacy officer)")
async def reviews(status: str = "pending", who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return _json({"reviews": service.review_queue(gate, who, status=status)})


@router.post("/privacy/reviews/{grant_id}", summary="Record the outcome of a break-glass review")
async def review(grant_id: str, request: Request, who: Principal = Depends(current_user),
                 gate: Gate = Depends(get_gate)):
    body = await _json_object(request)
    return _json(service.record_review(gate, who, grant_id, outcome=body.get("outcome"), note=body.get("note")))


@router.get("/me/access-log", summary="Who looked at my record")
async def my_access_log(count: int = 200, offset: int = 0, who: Principal = Depends(current_user),
                        gate: Gate = Depends(get_gate)):
    if who.role != "patient" or not who.patient_id:
        raise FhirError(403, "Access refused: this is a person's view of their own record; privacy officers use "
                             "GET /fhir/AuditEvent?patient=...", code="forbidden")
    if not 0 <= count <= 1000 or offset < 0:
        raise FhirError(400, "count must be 0 to 1000 and offset not negative", code="value")
    gate.audit.flush()
    total, entries = gate.access_log(who, count=count, offset=offset)
    return _json({"patient": f"Patient/{who.patient_id}", "total": total, "entries": entries})


def install(app: FastAPI) -> None:
    """Add the access-notice middleware: responses that used break-glass carry the X-JoinedUp-Access header."""

    class AccessNotices:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            notices: list[str] = []
            token = access_notices.set(notices)

            async def send_with_notice(message):
                if message["type"] == "http.response.start" and notices:
                    headers = list(message.get("headers") or [])
                    headers.append((ACCESS_HEADER.lower().encode(), "; ".join(notices).encode("latin-1", "replace")))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await self.inner(scope, receive, send_with_notice)
            finally:
                access_notices.reset(token)

    app.add_middleware(AccessNotices)
