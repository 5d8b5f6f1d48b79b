"""Privacy officer APIs beside break-glass review: link requests between records and changes to people's choices."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from joinedup.api.responses import FhirResponse, json_responses
from joinedup.deps import CurrentUser, GateDep, JsonObject
from joinedup.governance import service
from joinedup.governance.gate import change_reason

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(prefix="/api/privacy", tags=["governance"])
REASON_HEADER = "X-JoinedUp-Reason"
_REASON_KEY = REASON_HEADER.lower().encode("latin-1")
_JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


def _json(doc, status: int = 200) -> FhirResponse:
    return FhirResponse(doc, status_code=status, media_type="application/json")


@router.get("/link-requests", summary="Requests to link two records of one person (privacy officer)",
            responses=json_responses(400, 401, 403))
def link_requests(who: CurrentUser, gate: GateDep, status: str = "pending"):
    return _json({"requests": service.link_requests(gate, who, status=status)})


@router.post("/link-requests", summary="Ask for two records to be linked as one person's", status_code=202,
             responses={**json_responses(400, 401, 403, 413, ok=202, ok_description="Waiting for review"),
                        201: {"description": "Linked at once (integration account)",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
             openapi_extra=_JSON_BODY)
def request_link(who: CurrentUser, gate: GateDep, body: JsonObject):
    out = service.request_link(gate, who, patient=body.get("patient"), other_patient=body.get("other_patient"),
                               reason=body.get("reason"))
    return _json(out, 201 if out["status"] == "approved" else 202)


@router.post("/link-requests/{request_id}", summary="Approve or reject a link request (privacy officer)",
             responses=json_responses(400, 401, 403, 404, 409, 413), openapi_extra=_JSON_BODY)
def decide_link(request_id: str, who: CurrentUser, gate: GateDep, body: JsonObject):
    return _json(service.decide_link(gate, who, request_id, outcome=body.get("outcome"), note=body.get("note")))


@router.get("/choice-changes", summary="Changes privacy officers made to people's choices, with reasons",
            responses=json_responses(401, 403))
def choice_changes(who: CurrentUser, gate: GateDep):
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
                if k.lower() == _REASON_KEY:
                    value = v.decode("utf-8", "replace")[:2000]
            token = change_reason.set(value)
            try:
                await self.inner(scope, receive, send)
            finally:
                change_reason.reset(token)

    app.add_middleware(ReasonMiddleware)
