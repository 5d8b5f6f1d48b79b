"""Virtual wards over HTTP (`/api/virtual-wards...`, `/api/patients/{id}/readings`) and their pages (`/wards...`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import JSONResponse, RedirectResponse

from joinedup.api.responses import api_errors
from joinedup.care.wards import service
from joinedup.deps import CurrentUser, FormData, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.web.pages import Viewer

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(tags=["care: virtual wards"], responses=api_errors())


def _body(data: Any, *keys: str) -> dict:
    if not isinstance(data, dict):
        raise FhirError(400, "Send a JSON object", code="structure")
    missing = [k for k in keys if data.get(k) in (None, "")]
    if missing:
        raise FhirError(400, f"'{missing[0]}' is required", code="required", expression=[missing[0]])
    return data


@router.get("/api/virtual-wards", summary="Virtual wards with occupancy against capacity")
def wards_api(who: CurrentUser, gate: GateDep):
    return {"wards": service.wards(gate=gate, who=who)}


@router.post("/api/virtual-wards", status_code=201, summary="Set up a virtual ward (integration account)")
def create_ward_api(data: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    d = _body(data, "name", "kind", "capacity", "organization")
    return service.create_ward(gate=gate, who=who, name=d["name"], kind=d["kind"], capacity=d["capacity"],
                               organization_id=d["organization"], location_id=d.get("location"))


@router.get("/api/virtual-wards/review", summary="Today's review list (acute virtual wards), alerts first")
def review_api(who: CurrentUser, gate: GateDep):
    return {"patients": service.daily_review(gate=gate, who=who)}


@router.get("/api/virtual-wards/case-finding", summary="People ranked by complexity score for preventive wards")
def case_finding_api(who: CurrentUser, gate: GateDep,
                     limit: Annotated[int, Query(ge=1, le=1000, description="1 to 1,000")] = 50):
    return {"score": "conditions + 2×frailty + 2×dementia + 1.5×emergency admissions in the last year (max 4) "
                     "+ 1 if in a care home", "patients": service.case_finding(gate=gate, who=who, limit=limit)}


@router.get("/api/virtual-wards/{ward_id}", summary="One ward and the people on it whom you may see")
def ward_api(ward_id: str, who: CurrentUser, gate: GateDep):
    ward = service.get_ward(gate=gate, who=who, ward_id=ward_id)
    return {"ward": ward, "patients": service.ward_patients(gate=gate, who=who, ward_id=ward_id)}


@router.post("/api/virtual-wards/{ward_id}/admissions", status_code=201,
             summary="Admit a person (acute: consultant; preventive: case manager)")
def admit_api(ward_id: str, data: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    d = _body(data, "patient")
    return service.admit(gate=gate, who=who, ward_id=ward_id, patient_id=d["patient"], limits=d.get("limits"),
                         reason=d.get("reason"))


@router.post("/api/virtual-wards/admissions/{episode_id}/discharge", summary="End a virtual ward stay")
def discharge_api(episode_id: str, who: CurrentUser, gate: GateDep):
    return service.discharge(gate=gate, who=who, episode_id=episode_id)


@router.post("/api/patients/{patient_id}/readings", status_code=201,
             summary="Record remote-monitoring readings (SpO2 %, heart rate /min, BP mm[Hg]); bad units → 422")
def readings_api(patient_id: str, data: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    readings = data.get("readings") if isinstance(data, dict) else data
    return JSONResponse(service.record_readings(gate=gate, who=who, patient_id=patient_id, readings=readings),
                        status_code=201)


# -- pages ------------------------------------------------------------------------------------------------------
def _web():
    from joinedup.web import pages as web

    return web


@router.get("/wards", include_in_schema=False)
def wards_page(request: Request):
    return _web().service_page(request, "care/wards.html",
                               lambda gate, who: {"wards": service.wards(gate=gate, who=who)})


@router.get("/wards/review", include_in_schema=False)
def review_page(request: Request):
    return _web().service_page(request, "care/ward_review.html",
                               lambda gate, who: {"rows": service.daily_review(gate=gate, who=who)})


@router.get("/wards/case-finding", include_in_schema=False)
def case_finding_page(request: Request, who: Viewer):
    web = _web()
    gate = web.gate_of(request)
    try:
        rows = service.case_finding(gate=gate, who=who)
        ws = [w for w in service.wards(gate=gate, who=who) if w["kind"] == "preventive"]
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    return web.page(request, "care/ward_case_finding.html", {"rows": rows, "wards": ws}, who=who)


@router.get("/wards/{ward_id}", include_in_schema=False)
def ward_page(request: Request, who: Viewer, ward_id: str, msg: str = ""):
    web = _web()
    gate = web.gate_of(request)
    try:
        ward = service.get_ward(gate=gate, who=who, ward_id=ward_id)
        rows = service.ward_patients(gate=gate, who=who, ward_id=ward_id)
        ward.update(next((w for w in service.wards(gate=gate, who=who) if w["id"] == ward_id), {}))
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    return web.page(request, "care/ward.html", {"ward": ward, "rows": rows, "msg": msg[:200],
                                                "limits": service.DEFAULT_LIMITS,
                                                "decider": service.DECIDER[ward["kind"]][1]}, who=who)


@router.post("/wards/{ward_id}/admit", include_in_schema=False)
def admit_page(request: Request, who: Viewer, ward_id: str, form: FormData):
    web = _web()
    limits: dict[str, float] = {}
    try:
        for k in service.DEFAULT_LIMITS:
            v = (form.get(k) or "").strip()
            if v:
                try:
                    limits[k] = float(v)
                except ValueError:
                    raise FhirError(422, f"The limit '{k.replace('_', ' ')}' must be a number (got '{v[:20]}')",
                                    code="value") from None
        pid = (form.get("patient") or "").strip()
        if not pid:
            raise FhirError(400, "Choose the person to admit", code="required")
        service.admit(gate=web.gate_of(request), who=who, ward_id=ward_id, patient_id=pid, limits=limits or None,
                      reason=(form.get("reason") or "").strip() or None)
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    return RedirectResponse(f"/wards/{ward_id}?msg=admitted", status_code=303)


@router.post("/wards/discharge/{episode_id}", include_in_schema=False)
def discharge_page(request: Request, who: Viewer, episode_id: str, form: FormData):
    web = _web()
    try:
        service.discharge(gate=web.gate_of(request), who=who, episode_id=episode_id)
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    back = form.get("back") or "/wards"
    return RedirectResponse(back if back.startswith("/wards") else "/wards", status_code=303)
