"""Bulk Data $export with the asynchronous request pattern."""

from __future__ import annotations

import re

import orjson
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from joinedup.api.responses import FhirResponse, outcome_responses
from joinedup.deps import CurrentUser, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.fhir.search_params import date_range
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.interop import bulk_export

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(prefix="/fhir", tags=["bulk data"])
_KICKOFF_DOC = {
    "responses": {202: {"description": "Accepted: poll the Content-Location URL"},
                  **outcome_responses(400, 401, 403)},
    "openapi_extra": {"parameters": [
        {"name": "Prefer", "in": "header", "required": True, "schema": {"type": "string", "enum": ["respond-async"]}},
        {"name": "_outputFormat", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "_since", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "_type", "in": "query", "required": False, "schema": {"type": "string"}}]},
}
_FILE = re.compile(r"^[A-Za-z]+\.ndjson$")


def _kickoff(request: Request, who: Principal, gate: Gate, patient_level: bool) -> Response:
    q = request.query_params
    if "respond-async" not in request.headers.get("prefer", ""):
        raise FhirError(400, "Bulk export needs the header 'Prefer: respond-async'", code="required")
    fmt = q.get("_outputFormat")
    if fmt and fmt not in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        raise FhirError(400, f"_outputFormat '{fmt}' is not supported; use application/fhir+ndjson", code="value")
    since = None
    if q.get("_since"):
        rng = date_range(q["_since"])
        if rng is None:
            raise FhirError(400, f"_since '{q['_since']}' is not a valid instant", code="value",
                            expression=["_since"])
        since = rng[0]
    types = bulk_export.parse_types(q.get("_type"))
    settings = request.app.state.settings
    job = bulk_export.start_job(gate, who, request_url=str(request.url), export_dir=settings.export_dir,
                                types=types, since=since, patient_level=patient_level)
    status_url = f"{str(request.base_url).rstrip('/')}/fhir/$export-status/{job}"
    return Response(status_code=202, headers={"Content-Location": status_url})


@router.get("/$export", summary="System-level bulk export (async)", status_code=202, response_class=Response,
            **_KICKOFF_DOC)
def system_export(request: Request, who: CurrentUser, gate: GateDep):
    return _kickoff(request, who, gate, patient_level=False)


@router.get("/Patient/$export", summary="Patient-level bulk export (async)", status_code=202,
            response_class=Response, **_KICKOFF_DOC)
def patient_export(request: Request, who: CurrentUser, gate: GateDep):
    return _kickoff(request, who, gate, patient_level=True)


@router.get("/$export-status/{job_id}", summary="Bulk export status",
            responses={200: {"description": "Finished: the manifest",
                             "content": {"application/json": {"schema": {"type": "object"}}}},
                       202: {"description": "Still in progress"}, **outcome_responses(401, 403, 404, 500)})
def export_status(job_id: str, request: Request, who: CurrentUser, gate: GateDep):
    job = bulk_export.get_job(gate, who, job_id)
    if job["status"] == "in-progress":
        return Response(status_code=202, headers={"X-Progress": "in progress", "Retry-After": "1"})
    if job["status"] == "failed":
        raise FhirError(500, f"Export failed: {job['error']}", code="exception")
    counts = orjson.loads(job["output"] or "{}")
    base = str(request.base_url).rstrip("/")
    manifest = {
        "transactionTime": job["transaction_time"],
        "request": job["request"],
        "requiresAccessToken": True,
        "output": [{"type": t, "url": f"{base}/fhir/$export-file/{job_id}/{t}.ndjson", "count": n}
                   for t, n in sorted(counts.items())],
        "error": [],
    }
    return FhirResponse(manifest, media_type="application/json")


@router.delete("/$export-status/{job_id}", summary="Cancel or delete a bulk export", status_code=202,
               response_class=Response,
               responses={202: {"description": "Cancelled or deleted"}, **outcome_responses(401, 403, 404)})
def export_delete(job_id: str, request: Request, who: CurrentUser, gate: GateDep):
    bulk_export.delete_job(gate, who, job_id, request.app.state.settings.export_dir)
    return Response(status_code=202)


@router.get("/$export-file/{job_id}/{name}", summary="Download one NDJSON file of a finished export",
            responses={200: {"description": "NDJSON, one resource a line",
                             "content": {"application/fhir+ndjson": {"schema": {"type": "string"}}}},
                       **outcome_responses(401, 403, 404)})
def export_file(job_id: str, name: str, request: Request, who: CurrentUser, gate: GateDep):
    job = bulk_export.get_job(gate, who, job_id)
    path = request.app.state.settings.export_dir / job_id / name
    if job["status"] != "completed" or not _FILE.match(name) or not path.exists():
        raise FhirError(404, f"No file '{name}' in export {job_id}", code="not-found")
    gate.record(who, "export", allowed=True, reason="download of own export", entity=f"$export:{job_id}/{name}")
    return FileResponse(path, media_type="application/fhir+ndjson")
