"""Bearer-token authentication, the OAuth2 password grant and log-out.

The APIs (/fhir, /api, /cds-services, /auth/logout) take bearer tokens only, in the Authorization header; the
web pages' session cookie is never accepted there (cookie-authenticated requests are the web pages' business,
where every form post carries a CSRF token, see api/security.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request

from joinedup.api.responses import FhirResponse
from joinedup.fhir.errors import FhirError
from joinedup.governance.accounts import authenticate, revoke_token, sign_in
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

router = APIRouter(tags=["auth"])
COOKIE = "joinedup_token"
API_PREFIXES = ("/fhir", "/api")
TOKEN_HOURS = 12


def get_gate(request: Request) -> Gate:
    return request.app.state.gate


def is_api_path(path: str) -> bool:
    """Whether a path belongs to the FHIR or JSON APIs (bearer tokens only)."""
    return any(path == p or path.startswith(p + "/") for p in API_PREFIXES)


def _authorization_bearer(request: Request) -> str | None:
    """The text after 'Bearer ' in the Authorization header ('' when empty), or None without such a header."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def header_token(request: Request) -> str | None:
    """The token in 'Authorization: Bearer ...', or None."""
    return _authorization_bearer(request) or None


def bearer(request: Request) -> str | None:
    """The caller's token: the Authorization header, else (web pages only, never /fhir or /api) the session
    cookie. A request with a Bearer header is judged by that header alone, never by the cookie."""
    token = _authorization_bearer(request)
    if token is not None:
        return token or None
    if is_api_path(request.url.path):
        return None
    return request.cookies.get(COOKIE)


def client_address(request: Request) -> str | None:
    """The client's network address (as the server sees it; behind a proxy, run uvicorn with --proxy-headers)."""
    return request.client.host if request.client else None


def current_user(request: Request) -> Principal:
    """The authenticated principal (bearer token in the Authorization header), or a 401 OperationOutcome.

    A plain function: FastAPI runs it, and its database lookup, in the threadpool."""
    gate: Gate = request.app.state.gate
    token = header_token(request)
    who = authenticate(gate, token)
    if who is None:
        cookie_only = token is None and COOKIE in request.cookies
        reason = ("session cookie sent to an API (bearer tokens only)" if cookie_only
                  else "no bearer token" if not token else "invalid or expired token")
        gate.record(None, "login", allowed=False, reason=reason, entity=request.url.path)
        raise FhirError(401, "Authentication required: send 'Authorization: Bearer <token>' "
                             "(get one with `joinedup token NAME` or POST /auth/token)", code="login")
    return who


def _oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None,
                 **extra) -> FhirResponse:
    return FhirResponse({"error": error, "error_description": description, **extra}, status_code=status,
                        media_type="application/json", headers=headers)


@router.post("/auth/token", summary="OAuth2 password grant: exchange a user name and password for a token",
             description="Throttled per account and per client address: after too many failed attempts the "
                         "account (or address) is locked for a while; the answer is then 429 with Retry-After and "
                         "`locked_until`. Unknown user names and wrong passwords get the same answer.")
def token(request: Request, grant_type: str = Form("password"), username: str = Form(""),
          password: str = Form(""), gate: Gate = Depends(get_gate)):
    if grant_type != "password":
        return _oauth_error(400, "unsupported_grant_type", "only grant_type=password is supported")
    result = sign_in(gate, username, password, address=client_address(request), settings=request.app.state.settings,
                     channel="api", hours=TOKEN_HOURS)
    if result.locked_until is not None:
        return _oauth_error(429, "invalid_grant", result.message, headers={"Retry-After": str(result.retry_after)},
                            locked_until=result.locked_until.isoformat(timespec="seconds").replace("+00:00", "Z"))
    if result.token is None:
        return _oauth_error(400, "invalid_grant", result.message)
    return FhirResponse({"access_token": result.token, "token_type": "bearer", "expires_in": TOKEN_HOURS * 3600},
                        media_type="application/json")


@router.post("/auth/logout", summary="Revoke the bearer token this request carries",
             description="The token stops working at once (every request looks it up).")
def logout(request: Request, who: Principal = Depends(current_user), gate: Gate = Depends(get_gate)):
    revoke_token(gate, header_token(request))
    gate.record(who, "logout", allowed=True, reason="bearer token revoked (POST /auth/logout)")
    return FhirResponse({"revoked": True}, media_type="application/json")
