"""FHIR JSON responses and error handlers (every error is an OperationOutcome)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from joinedup.fhir.errors import FhirError, operation_outcome

FHIR_JSON = "application/fhir+json"


class FhirResponse(Response):
    """A FHIR JSON body serialised with orjson."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, (bytes, bytearray)):
            return bytes(content)
        return orjson.dumps(content)


def outcome_response(status: int, issues: list[dict], headers: dict | None = None) -> FhirResponse:
    return FhirResponse(operation_outcome(issues), status_code=status, headers=headers)


# -- what the OpenAPI document says routes return --------------------------------------------------------------
OPERATION_OUTCOME_SCHEMA: dict[str, Any] = {
    "title": "OperationOutcome",
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {"type": "array", "items": {
            "type": "object", "required": ["severity", "code"],
            "properties": {"severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
                           "code": {"type": "string"}, "diagnostics": {"type": "string"},
                           "expression": {"type": "array", "items": {"type": "string"}}}}},
    },
}
FHIR_RESOURCE_SCHEMA: dict[str, Any] = {
    "title": "FHIR resource", "type": "object", "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}}, "additionalProperties": True,
}
FHIR_BUNDLE_SCHEMA: dict[str, Any] = {
    "title": "Bundle", "type": "object", "required": ["resourceType", "type"],
    "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]}, "type": {"type": "string"},
                   "total": {"type": "integer"}, "link": {"type": "array", "items": {"type": "object"}},
                   "entry": {"type": "array", "items": {"type": "object"}}}, "additionalProperties": True,
}
ERRORS: dict[int, str] = {
    400: "Bad request: a malformed parameter or body (OperationOutcome says which)",
    401: "No valid bearer token",
    403: "Access refused by the governance policy (audited)",
    404: "Unknown resource, type or endpoint",
    405: "Method not allowed",
    406: "Requested _format is not supported",
    409: "Conflict with the current state (e.g. a version clash)",
    410: "The resource has been deleted",
    412: "Precondition failed: If-Match names an older version",
    413: "The body is over the size limit or the Bundle has too many entries",
    415: "Unsupported Content-Type: send application/fhir+json",
    422: "The resource or request is well-formed but not valid",
    428: "Precondition required: the update needs If-Match",
}


def outcome_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses that carry an OperationOutcome (application/fhir+json).

    Always lists `4XX` as well (any other client error is an OperationOutcome too), which also keeps FastAPI from
    documenting its own 422 validation error: this API answers invalid parameters with 400."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"description": ERRORS.get(code, "Error"), "content": {FHIR_JSON: {"schema": OPERATION_OUTCOME_SCHEMA}}}
        for code in codes}
    out["4XX"] = {"description": "Another client error (OperationOutcome)",
                  "content": {FHIR_JSON: {"schema": OPERATION_OUTCOME_SCHEMA}}}
    return out


def api_errors() -> dict[int | str, dict[str, Any]]:
    """Router-level `responses` for the JSON APIs under /api: their errors are OperationOutcomes."""
    return outcome_responses(400, 401, 403, 404, 413, 422)


def fhir_responses(*codes: int, ok: int = 200, ok_description: str = "Success",
                   schema: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a FHIR route: `ok` with a FHIR JSON body, and the listed error statuses."""
    return {ok: {"description": ok_description, "content": {FHIR_JSON: {"schema": schema or FHIR_RESOURCE_SCHEMA}}},
            **outcome_responses(*codes)}


def json_responses(*codes: int, ok: int = 200, ok_description: str = "Success") -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a JSON API route: `ok` with application/json, errors as OperationOutcome."""
    return {ok: {"description": ok_description, "content": {"application/json": {"schema": {"type": "object"}}}},
            **outcome_responses(*codes)}


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure as an OperationOutcome with the right status, never a traceback."""

    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError):
        headers = {"WWW-Authenticate": 'Bearer realm="joinedup"'} if exc.status == 401 else None
        return FhirResponse(exc.outcome(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        issues = [{"severity": "error", "code": "invalid",
                   "diagnostics": f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"}
                  for e in exc.errors()[:10]]
        return outcome_response(400, issues or [{"severity": "error", "code": "invalid",
                                                 "diagnostics": "invalid request"}])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, FhirError):  # e.g. a 413 raised while FastAPI read a form or JSON body
            return await _fhir_error(request, exc.__cause__)
        code = {404: "not-found", 405: "not-supported", 401: "login", 403: "forbidden", 413: "too-long"}.get(
            exc.status_code, "processing")
        text = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and text == "Not Found":
            text = "No such endpoint"
        return outcome_response(exc.status_code, [{"severity": "error", "code": code, "diagnostics": text}])

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        import logging

        logging.getLogger("joinedup.api").exception("unexpected error")
        return outcome_response(500, [{"severity": "fatal", "code": "exception",
                                       "diagnostics": f"Internal error ({type(exc).__name__}); it has been logged"}])
