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
    async def _http(_request: Request, exc: StarletteHTTPException):
        code = {404: "not-found", 405: "not-supported", 401: "login", 403: "forbidden"}.get(exc.status_code,
                                                                                           "processing")
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
