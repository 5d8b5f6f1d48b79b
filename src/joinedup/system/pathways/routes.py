"""Pathway analytics over HTTP: `GET /api/pathways?from=&to=` (the published figures as JSON) and the page
`/pathways` (process map, variants, gaps and guideline comparisons) for analysts and the partnership board."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse

from joinedup.api.responses import api_errors
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

from . import process_map, service

api_router = APIRouter(tags=["system: pathway analytics"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)

FROM = Query(None, alias="from", description="first day of the period, YYYY-MM-DD (default: 365 days before 'to')")
TO = Query(None, alias="to", description="last day of the period, YYYY-MM-DD (default: today)")


@api_router.get("/api/pathways", summary="Process map, variants, gaps and guideline timing (suppressed figures)")
def pathways_api(who: CurrentUser, gate: GateDep, start: str | None = FROM, end: str | None = TO):
    return JSONResponse(service.figures(gate, who, start=start, end=end))


@web_router.get("/pathways")
def pathways_page(request: Request, start: str | None = FROM, end: str | None = TO):
    from joinedup.web import pages

    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        form = {"from": start or "", "to": end or ""}
        try:
            fig = service.figures(gate, who, start=start, end=end)
        except FhirError as exc:
            if exc.status != 400:
                raise
            return {"fig": None, "form": form, "error": exc.diagnostics}
        return {"fig": fig, "form": form, "error": None, "shown": service.shown,
                "svg": process_map.render(fig, shown=service.shown)}

    resp = pages.service_page(request, "system/pathways.html", build)
    if getattr(resp, "context", None) and resp.context.get("error"):
        resp.status_code = 400
    return resp
