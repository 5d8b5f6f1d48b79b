"""Governance APIs: break-glass, the privacy officer's review queue, a person's access log; access notices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Query

from joinedup.api.responses import FhirResponse, json_responses
from joinedup.deps import CurrentUser, GateDep, JsonObject
from joinedup.governance import service
from joinedup.governance.gate import access_notices
from joinedup.store.search import MAX_OFFSET

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(prefix="/api", tags=["governance"])
ACCESS_HEADER = "X-JoinedUp-Access"
_JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


def _json(doc, status: int = 200) -> FhirResponse:
    return FhirResponse(doc, status_code=status, media_type="application/json")


@router.post("/break-glass", summary="Emergency access to one person's record (time-limited, reviewed)",
             status_code=201, responses=json_responses(400, 401, 403, 404, 413, 422, ok=201,
                                                       ok_description="The grant"),
             openapi_extra=_JSON_BODY)
def break_glass(who: CurrentUser, gate: GateDep, body: JsonObject):
    grant = service.grant_break_glass(gate, who, patient_id=body.get("patient"),
                                      reason_category=body.get("reason_category"), reason=body.get("reason"),
                                      hours=body.get("hours"))
    return _json(grant, 201)


@router.get("/break-glass", summary="My active break-glass grants", responses=json_responses(401, 403))
def my_break_glass(who: CurrentUser, gate: GateDep):
    return _json({"grants": service.my_grants(gate, who),
                  "reason_categories": service.REASON_CATEGORIES})


@router.get("/privacy/reviews", summary="Break-glass review queue (privacy officer)",
            responses=json_responses(400, 401, 403))
def reviews(who: CurrentUser, gate: GateDep, status: str = "pending"):
    return _json({"reviews": service.review_queue(gate, who, status=status)})


@router.post("/privacy/reviews/{grant_id}", summary="Record the outcome of a break-glass review",
             responses=json_responses(400, 401, 403, 404, 409, 413, 422), openapi_extra=_JSON_BODY)
def review(grant_id: str, who: CurrentUser, gate: GateDep, body: JsonObject):
    return _json(service.record_review(gate, who, grant_id, outcome=body.get("outcome"), note=body.get("note")))


@router.get("/me/access-log", summary="Who looked at my record", responses=json_responses(400, 401, 403))
def my_access_log(who: CurrentUser, gate: GateDep,
                  count: Annotated[int, Query(ge=0, le=1000, description="Entries per page, 0 to 1,000")] = 200,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET,
                                               description=f"Entries to skip, 0 to {MAX_OFFSET:,}")] = 0):
    if who.role != "patient" or not who.patient_id:
        raise gate.refuse(who, "Access refused: this is a person's view of their own record; privacy officers use "
                               "GET /fhir/AuditEvent?patient=...", action="search", entity="access-log")
    gate.flush_audit()
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
