"""Virtual wards over HTTP (`/api/virtual-wards...`, `/api/patients/{id}/readings`) and their pages (`/wards...`).

Pages keep what was typed: a bad limit, an invalid NHS number, a name matching several people or a reading in the
wrong unit shows the same form again with the typed values, the problem by its field, and the status the API would
give (422, 404, 409); refusals are the plain refusal page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import JSONResponse, RedirectResponse

from joinedup.api.responses import api_errors
from joinedup.care.wards import measurements as M
from joinedup.care.wards import service
from joinedup.deps import CurrentUser, FormData, GateDep
from joinedup.fhir.errors import FhirError
from joinedup.governance.identity import Principal
from joinedup.web.pages import Viewer

# Plain `def` handlers: FastAPI runs them in its thread pool, off the event loop.
router = APIRouter(tags=["care: virtual wards"], responses=api_errors())
LONDON = ZoneInfo("Europe/London")


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


@router.get("/api/virtual-wards/review", summary="Today's review list (acute virtual wards), breaches first")
def review_api(who: CurrentUser, gate: GateDep):
    return {"patients": service.daily_review(gate=gate, who=who)}


@router.get("/api/virtual-wards/case-finding", summary="People ranked by complexity score for preventive wards")
def case_finding_api(who: CurrentUser, gate: GateDep,
                     limit: Annotated[int, Query(ge=1, le=1000, description="1 to 1,000")] = 50):
    return {"score": "conditions + 2×frailty + 2×dementia + 1.5×emergency admissions in the last year (max 4) "
                     "+ 1 if in a care home", "patients": service.case_finding(gate=gate, who=who, limit=limit)}


@router.get("/api/virtual-wards/people", summary="Find a person to admit by NHS number or name (people you may see)")
def people_api(who: CurrentUser, gate: GateDep, q: str = ""):
    return service.find_people(gate=gate, who=who, text=q[:200])


@router.get("/api/virtual-wards/measurements", summary="What is monitored: codes, units, possible values, defaults")
def measurements_api(who: CurrentUser):
    return {"version": M.knowledge_version(), "measurements": [
        {"key": m.key, "type": m.type, "display": m.display, "loinc": list(m.loinc), "unit": m.unit,
         "units": list(m.units), "possible": list(m.possible), "possible_basis": m.possible_basis,
         "default_min": m.default_min, "default_max": m.default_max, "default_source": m.default_source}
        for m in M.measurements().values()]}


@router.get("/api/virtual-wards/{ward_id}", summary="One ward and the people on it whom you may see")
def ward_api(ward_id: str, who: CurrentUser, gate: GateDep):
    ward = service.get_ward(gate=gate, who=who, ward_id=ward_id)
    return {"ward": ward, "patients": service.ward_patients(gate=gate, who=who, ward_id=ward_id)}


@router.post("/api/virtual-wards/{ward_id}/admissions", status_code=201,
             summary="Admit a person by 'patient' (record id) or 'nhs_number' (acute: consultant; preventive: case "
                     "manager)")
def admit_api(ward_id: str, data: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    d = _body(data)
    return service.admit(gate=gate, who=who, ward_id=ward_id, patient_id=d.get("patient") or None,
                         nhs_number=d.get("nhs_number"), limits=d.get("limits"), reason=d.get("reason"))


@router.get("/api/virtual-wards/admissions/{episode_id}",
            summary="One stay: agreed limits, dated readings since admission, charts' data, reviews")
def stay_api(episode_id: str, who: CurrentUser, gate: GateDep):
    return service.stay(gate=gate, who=who, episode_id=episode_id)


@router.post("/api/virtual-wards/admissions/{episode_id}/reviews", status_code=201,
             summary="Record 'review done' (outcome: continue | limits-changed | escalated | discharge; note)")
def review_done_api(episode_id: str, data: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    d = _body(data, "outcome")
    return service.record_review(gate=gate, who=who, episode_id=episode_id, outcome=d["outcome"], note=d.get("note"))


@router.get("/api/virtual-wards/admissions/{episode_id}/reviews", summary="Reviews of one stay, newest first")
def reviews_api(episode_id: str, who: CurrentUser, gate: GateDep):
    s = service.stay(gate=gate, who=who, episode_id=episode_id)
    return {"reviews": s["reviews"]}


@router.post("/api/virtual-wards/admissions/{episode_id}/discharge", summary="End a virtual ward stay")
def discharge_api(episode_id: str, who: CurrentUser, gate: GateDep):
    return service.discharge(gate=gate, who=who, episode_id=episode_id)


@router.post("/api/patients/{patient_id}/readings", status_code=201,
             summary="Record remote-monitoring readings (spo2, heart-rate, respiratory-rate, temperature, bp, weight, "
                     "glucose); impossible values or wrong units → 422")
def readings_api(patient_id: str, data: Annotated[Any, Body()], who: CurrentUser, gate: GateDep):
    readings = data.get("readings") if isinstance(data, dict) else data
    return JSONResponse(service.record_readings(gate=gate, who=who, patient_id=patient_id, readings=readings),
                        status_code=201)


# -- pages ------------------------------------------------------------------------------------------------------
def _web():
    from joinedup.web import pages as web

    return web


def _expression(exc: FhirError) -> list[str]:
    return (exc.issues[0] if exc.issues else {}).get("expression") or []


def _field(exc: FhirError) -> str | None:
    """The form field an OperationOutcome's expression names ('limits.spo2_min' -> 'spo2_min')."""
    expression = _expression(exc)
    if not expression:
        return None
    return {"patient": "q", "nhs_number": "q"}.get(expression[0], expression[0].split(".")[-1])


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


def _ward_page(request: Request, who: Principal, ward_id: str, *, msg: str = "", form: dict | None = None,
               errors: dict | None = None, error: str | None = None, matches: dict | None = None,
               status: int = 200):
    web = _web()
    gate = web.gate_of(request)
    try:
        ward = service.get_ward(gate=gate, who=who, ward_id=ward_id)
        rows = service.ward_patients(gate=gate, who=who, ward_id=ward_id)
        ward.update(next((w for w in service.wards(gate=gate, who=who) if w["id"] == ward_id), {}))
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    role, words = service.DECIDER[ward["kind"]]
    return web.page(request, "care/ward.html", {
        "ward": ward, "rows": rows, "msg": msg[:200], "decider": words, "may_admit": who.role == role,
        "measures": list(M.measurements().values()), "unit_words": M.unit_words, "form": form or {},
        "errors": errors or {}, "error": error, "matches": matches}, who=who, status=status)


@router.get("/wards/{ward_id}", include_in_schema=False)
def ward_page(request: Request, who: Viewer, ward_id: str, msg: str = ""):
    return _ward_page(request, who, ward_id, msg=msg)


def _form_limits(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Limits typed on the admission form as the API takes them, and the fields that are not numbers."""
    raw: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for m in M.measurements().values():
        unit = form.get(f"{m.key}_unit") or m.unit
        for end, word in (("min", "lower"), ("max", "upper")):
            text = form.get(f"{m.key}_{end}", "")
            if not text:
                continue
            try:
                raw[f"{m.key}_{end}"] = {"value": float(text.replace(",", ".")), "unit": unit}
            except ValueError:
                errors[f"{m.key}_{end}"] = f"The {m.short} {word} limit must be a number (got '{text[:20]}')"
    return raw, errors


def _kept(form: Any, limit: int = 2000) -> dict[str, str]:
    return {k: str(v).strip()[:limit] for k, v in form.items() if k != "csrf_token" and isinstance(v, str)}


def _by_record_id(gate, who: Principal, text: str) -> str | None:
    """A person's record id typed into the search box (as host systems and the case-finding list give it)."""
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", text) or text.isdigit() or not re.search(r"\d", text):
        return None
    try:
        return gate.read(who, "Patient", text).id
    except FhirError:
        return None


@router.post("/wards/{ward_id}/admit", include_in_schema=False)
def admit_page(request: Request, who: Viewer, ward_id: str, form: FormData):
    gate = _web().gate_of(request)
    kept = _kept(form)
    action = kept.get("action") or "admit"
    pid, q = kept.get("patient") or None, kept.get("q", "")
    if action == "find" or (pid and q and q != kept.get("searched", "")):
        # a new search, or the search box changed after a person was chosen: never admit a stale choice
        pid = None
        kept.pop("patient", None)
    raw, errors = _form_limits(kept)
    _agreed, problems = M.limit_problems(raw)
    errors.update({f: m for f, m in problems if f not in errors})
    matches, error, status = None, None, 200
    try:
        if pid is None and action != "find":
            pid = _by_record_id(gate, who, q)
        if pid is None:
            matches = service.find_people(gate=gate, who=who, text=q)
            living = [p for p in matches["people"] if not p["deceased"] and not p["on_ward"]]
            kept["searched"] = q
            if action == "find":
                return _ward_page(request, who, ward_id, form=kept, errors=errors, matches=matches)
            if matches["by"] == "nhs-number" and len(living) == 1 and not errors:
                pid = living[0]["id"]
            else:
                kept["patient"] = living[0]["id"] if len(living) == 1 else ""
                raise FhirError(422, "Choose the person from the list, check the details, then press Admit."
                                if living else matches["message"], code="required", expression=["q"])
        if errors:
            raise FhirError(422, "Please correct the limits marked below; nothing has been saved.", code="value")
        service.admit(gate=gate, who=who, ward_id=ward_id, patient_id=pid, limits=raw or None,
                      reason=kept.get("reason") or None)
    except FhirError as exc:
        if exc.status == 403:
            return _web().error_page(request, exc.status, exc.diagnostics, who=who)
        status, error = exc.status, exc.diagnostics
        if matches is None and q and action != "find":
            try:  # show the list again, with the person who was chosen still chosen
                matches = service.find_people(gate=gate, who=who, text=q)
                kept["searched"] = q
            except FhirError:
                matches = None
        field = _field(exc)
        if field and field != "q" and field not in errors:
            errors[field] = exc.diagnostics
        return _ward_page(request, who, ward_id, form=kept, errors=errors, error=error, matches=matches,
                          status=status)
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


# -- one person's stay: readings, charts, reviews -----------------------------------------------------------------
READING_TYPES = [("spo2", "SpO2"), ("heart-rate", "Pulse"), ("respiratory-rate", "Breathing rate"),
                 ("temperature", "Temperature"), ("bp", "Blood pressure"), ("weight", "Weight"),
                 ("glucose", "Blood glucose")]


def _stay_page(request: Request, who: Principal, episode_id: str, *, msg: str = "", form: dict | None = None,
               errors: dict | None = None, error: str | None = None, status: int = 200):
    web = _web()
    gate = web.gate_of(request)
    try:
        s = service.stay(gate=gate, who=who, episode_id=episode_id)
    except FhirError as exc:
        return web.error_page(request, exc.status, exc.diagnostics, who=who)
    return web.page(request, "care/ward_stay.html", {
        "s": s, "msg": msg[:200], "outcomes": service.OUTCOMES, "reading_types": READING_TYPES,
        "form": form or {}, "errors": errors or {}, "error": error}, who=who, status=status)


@router.get("/wards/stays/{episode_id}", include_in_schema=False)
def stay_page(request: Request, who: Viewer, episode_id: str, msg: str = ""):
    return _stay_page(request, who, episode_id, msg=msg)


@router.post("/wards/stays/{episode_id}/review", include_in_schema=False)
def review_done_page(request: Request, who: Viewer, episode_id: str, form: FormData):
    kept = _kept(form, limit=4000)
    try:
        service.record_review(gate=_web().gate_of(request), who=who, episode_id=episode_id,
                              outcome=kept.get("outcome") or None, note=kept.get("note"))
    except FhirError as exc:
        if exc.status == 403:
            return _web().error_page(request, exc.status, exc.diagnostics, who=who)
        field = _field(exc)
        return _stay_page(request, who, episode_id, form=kept, errors={field: exc.diagnostics} if field else {},
                          error=exc.diagnostics, status=exc.status)
    return RedirectResponse(f"/wards/stays/{episode_id}?msg=reviewed#reviews", status_code=303)


def _local_time(text: str) -> str | None:
    """A datetime-local value (UK time) as an instant; None when blank; ValueError when unreadable."""
    if not text:
        return None
    dt = datetime.fromisoformat(text).replace(tzinfo=LONDON).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@router.post("/wards/stays/{episode_id}/readings", include_in_schema=False)
def reading_page(request: Request, who: Viewer, episode_id: str, form: FormData):
    gate = _web().gate_of(request)
    kept = _kept(form, limit=100)
    kind = kept.get("type", "")
    m = M.by_type("systolic" if kind == "bp" else kind)
    unit = kept.get("unit") or (m.unit if m else "")
    try:
        s = service.stay(gate=gate, who=who, episode_id=episode_id)
        if s["status"] != "active":
            raise FhirError(409, "This virtual ward stay has ended: record readings in the person's record",
                            code="conflict")

        def number(name: str, label: str) -> float:
            text = kept.get(name, "")
            try:
                return float(text.replace(",", "."))
            except ValueError:
                raise FhirError(422, f"{label} must be a number (got '{text[:20]}'); nothing was recorded",
                                code="value", expression=[name]) from None

        try:
            when = _local_time(kept.get("when", ""))
        except ValueError:
            raise FhirError(422, "Give the time the reading was taken as a date and time, or leave it blank for now",
                            code="value", expression=["when"]) from None
        reading: dict[str, Any] = {"type": kind, "unit": unit}
        if kind == "bp":
            reading.update(systolic=number("value", "Systolic"), diastolic=number("value2", "Diastolic"))
        else:
            reading["value"] = number("value", "The reading")
        if when:
            reading["when"] = when
        result = service.record_readings(gate=gate, who=who, patient_id=s["patient"], readings=[reading])
    except FhirError as exc:
        if exc.status == 403:
            return _web().error_page(request, exc.status, exc.diagnostics, who=who)
        where = (_expression(exc) or [""])[0].split(".")[-1]
        field = {"systolic": "value", "diastolic": "value2"}.get(where, where) or None
        return _stay_page(request, who, episode_id, form=kept, errors={field: exc.diagnostics} if field else {},
                          error=re.sub(r"^readings\[0\]:?\s*", "", exc.diagnostics), status=exc.status)
    msg = "recorded-breach" if result["alerts"] else "recorded"
    return RedirectResponse(f"/wards/stays/{episode_id}?msg={msg}#readings", status_code=303)
