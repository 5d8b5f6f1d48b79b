"""Request dependencies as `Annotated` aliases, so routes read
`def show(plan_id: str, user: CurrentUser, gate: GateDep)`.

Routes are plain `def` (FastAPI runs them in its thread pool), so store work never runs on the event loop. Reading
the request body is I/O and belongs on the loop: `RawBody` and `FormData` are async dependencies that only await
the body. Turning bytes into JSON is CPU work (a 20,000-entry Bundle takes a while), so `FhirBody` and `JsonObject`
are sync dependencies and run in the thread pool too. The size of a body is limited by `api.limits` (413).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import FormData as StarletteFormData

from joinedup.api.auth import current_user
from joinedup.config import Settings
from joinedup.fhir.errors import FhirError
from joinedup.fhir.validation import parse_json
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal


async def get_gate(request: Request) -> Gate:
    """The app's gate (every read and write goes through it)."""
    return request.app.state.gate


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


async def read_body(request: Request) -> bytes:
    """The whole request body (413 past `settings.max_body_bytes`, checked as it streams in by api.limits)."""
    from joinedup.api.limits import BodyTooLarge

    body = await request.body()
    limit = request.app.state.settings.max_body_bytes
    if len(body) > limit:  # also when the limit middleware is not installed
        raise BodyTooLarge(limit)
    return body


async def read_form(request: Request) -> StarletteFormData:
    """The form fields of an urlencoded or multipart body."""
    return await request.form()


GateDep = Annotated[Gate, Depends(get_gate)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentUser = Annotated[Principal, Depends(current_user)]
RawBody = Annotated[bytes, Depends(read_body)]
FormData = Annotated[StarletteFormData, Depends(read_form)]


def fhir_body(request: Request, raw: RawBody) -> Any:
    """A FHIR JSON body (415 for another content type, 400 when it is not JSON); parsed in the thread pool."""
    ctype = request.headers.get("content-type", "")
    if ctype and "json" not in ctype:
        raise FhirError(415, f"Content-Type '{ctype[:100]}' is not supported; send application/fhir+json",
                        code="not-supported")
    return parse_json(raw)


def json_object(raw: RawBody) -> dict:
    """A JSON object body (400 otherwise); parsed in the thread pool."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise FhirError(400, "The request body must be a JSON object", code="invalid")
    return body


def optional_json(raw: RawBody) -> Any:
    """A JSON body that may be empty (None then); parsed in the thread pool."""
    return parse_json(raw) if raw.strip() else None


FhirBody = Annotated[Any, Depends(fhir_body)]
JsonObject = Annotated[dict, Depends(json_object)]
OptionalJson = Annotated[Any, Depends(optional_json)]

__all__ = ["CurrentUser", "FhirBody", "FormData", "GateDep", "JsonObject", "OptionalJson", "RawBody", "SettingsDep",
           "current_user", "fhir_body", "get_gate", "get_settings", "json_object", "read_body", "read_form"]
