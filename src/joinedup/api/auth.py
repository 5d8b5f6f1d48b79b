"""Bearer-token authentication and the OAuth2 password grant used by the web app."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request

from joinedup.api.responses import FhirResponse
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal, authenticate, login

router = APIRouter(tags=["auth"])


async def get_gate(request: Request) -> Gate:
    return request.app.state.gate


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.cookies.get("joinedup_token")


async def current_user(request: Request) -> Principal:
    """The authenticated principal, or a 401 OperationOutcome."""
    gate: Gate = request.app.state.gate
    token = bearer(request)
    who = authenticate(gate.store, token)
    if who is None:
        gate.audit.record(None, "login", allowed=False,
                          reason="no bearer token" if not token else "invalid or expired token",
                          entity=request.url.path)
        raise FhirError(401, "Authentication required: send 'Authorization: Bearer <token>' "
                             "(get one with `joinedup token NAME` or POST /auth/token)", code="login")
    return who


@router.post("/auth/token", summary="OAuth2 password grant: exchange a user name and password for a token")
async def token(grant_type: str = Form("password"), username: str = Form(...), password: str = Form(...),
                gate: Gate = Depends(get_gate)):
    if grant_type != "password":
        return FhirResponse({"error": "unsupported_grant_type"}, status_code=400, media_type="application/json")
    issued = login(gate.store, username, password)
    if issued is None:
        gate.audit.record(None, "login", allowed=False, reason=f"wrong password for '{username}'")
        return FhirResponse({"error": "invalid_grant", "error_description": "wrong user name or password"},
                            status_code=400, media_type="application/json")
    return FhirResponse({"access_token": issued, "token_type": "bearer", "expires_in": 12 * 3600},
                        media_type="application/json")
