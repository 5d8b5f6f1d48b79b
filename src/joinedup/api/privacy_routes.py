"""Privacy officer APIs beside break-glass review: link requests between records and changes to people's choices."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request

from joinedup.api.auth import current_user, get_gate
from joinedup.api.responses import FhirResponse
from joinedup.fhir.errors import FhirError
from joinedup.fhir.validation import parse_json
from joinedup.governance import service
from joinedup.governance.gate import Gate, change_reason
from joinedup.governance.identity import Principal

router = APIRouter(prefix="/api/privacy", tags=["governance"])
REASON_HEADER = "X-JoinedUp-Reason"


async def json_object(request: Request) -> dict:
    """The request body as a JSON object (400 otherwise)."""
    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise FhirError(400, "The request body must be a JSON object", code="invalid")
    return body


def _json(doc, status: int = 200) -> FhirResponse:
    return FhirResponse(doc, status_code=status, media_type="application/json")


@router.get("/link-requests", summary="Requests to link two records of one person (privacy officer)")
def link_requests(status: str = "pending", who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return _json({"requests": service.link_requests(gate, who, status=status)})


@router.post("/link-requests", summary="Ask for two records to be linked as one person's")
def request_link(body: dict = Depends(json_object), who: Principal = Depends(current_user),
                 gate: Gate = Depends(get_gate)):
    out = service.request_link(gate, who, patient=body.get("patient"), other_patient=body.get("other_patient"),
                               reason=body.get("reason"))
    return _json(out, 201 if out["status"] == "approved" else 202)


@router.post("/link-requests/{request_id}", summary="Approve or reject a link request (privacy officer)")
def decide_link(request_id: str, body: dict = Depends(json_object), who: Principal = Depends(current_user),
                gate: Gate = Depends(get_gate)):
    return _json(service.decide_link(gate, who, request_id, outcome=body.get("outcome"), note=body.get("note")))


@router.get("/choice-changes", summary="Changes privacy officers made to people's choices, with reasons")
def choice_changes(who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    return _json({"changes": service.choice_changes(gate, who)})


def install(app: FastAPI) -> None:
    """Carry a stated reason (X-JoinedUp-Reason) to the gate for the duration of a request."""

    class ReasonMiddleware:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            value = None
            for k, v in scope.get("headers") or ():
                if k.decode("latin-1").lower() == REASON_HEADER.lower():
                    value = v.decode("utf-8", "replace")[:2000]
            token = change_reason.set(value)
            try:
                await self.inner(scope, receive, send)
            finally:
                change_reason.reset(token)

    app.add_middleware(ReasonMiddleware)
