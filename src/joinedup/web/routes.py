"""The platform's own pages: log-in and log-out, the web home (search, my patients), the person page and its
timeline, the person's own view (what matters, corrections, who looked), break-glass from a refusal, open-in-context.

Rendering, the log-in redirect, the error page and the service/panel helpers live in `web/pages.py`, which domain
page routes (care/, conflicts/) import too. Routes are plain `def`s (run in the threadpool, never on the event loop);
every page reads data through the one gate with the signed-in person's principal.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse

from joinedup.api.auth import bearer, client_address
from joinedup.fhir.errors import FhirError
from joinedup.fhir.nhs_number import is_valid as valid_nhs_number
from joinedup.governance.accounts import authenticate, revoke_token, sign_in
from joinedup.governance.service import grant_break_glass
from joinedup.record import own, service
from joinedup.record.models import SETTINGS
from joinedup.web.pages import (
    COOKIE,
    TIMELINE_PAGE,
    Viewer,
    error_page,
    gate_of,
    home_of,
    page,
    safe_next,
    service_action,
    service_page,
)

router = APIRouter(include_in_schema=False)


@router.post("/patients/{patient_id}/break-glass")
def break_glass_form(request: Request, who: Viewer, patient_id: str, reason_category: str = Form(""),
                           reason: str = Form("")):
    """Emergency access from the refusal page: reason required, time-limited, reviewed by the privacy officer."""
    try:
        grant_break_glass(gate_of(request), who, patient_id=patient_id, reason_category=reason_category,
                          reason=reason)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who,
                          patient_id=patient_id if exc.status in (400, 403) else None)
    return RedirectResponse(f"/patients/{quote(patient_id)}", status_code=303)


# -- log in and out -----------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str = "/"):
    return page(request, "login.html", {"next": safe_next(next), "error": None, "username": "", "locked": False})


@router.post("/login")
def login_submit(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/")):
    """Throttled per account and per address (identity.sign_in): a locked account is told until when."""
    gate = gate_of(request)
    settings = request.app.state.settings
    result = sign_in(gate, username, password, address=client_address(request), settings=settings, channel="web")
    if result.token is None:
        locked = result.locked_until is not None
        resp = page(request, "login.html", {
            "next": safe_next(next), "username": username, "locked": locked,
            "error": result.message if locked else "That user name and password do not match. Try again."},
            status=429 if locked else 401)
        if locked:
            resp.headers["Retry-After"] = str(result.retry_after)
        return resp
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(COOKIE, result.token, httponly=True, samesite="lax", max_age=12 * 3600, path="/",
                    secure=settings.secure_cookies or request.url.scheme == "https")
    return resp


@router.post("/logout")
def logout(request: Request):
    """Log out: the session's token is revoked on the server, not only forgotten by the browser."""
    gate = gate_of(request)
    token = bearer(request)
    who = authenticate(gate, token)
    if who is not None:
        revoke_token(gate, token)
        gate.record(who, "logout", allowed=True, reason="web log-out: session token revoked")
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax",
                       secure=request.app.state.settings.secure_cookies or request.url.scheme == "https")
    return resp


# -- home, search, my patients ------------------------------------------------------------------------------
@router.get("/")
def home(request: Request, who: Viewer):
    """Each role's home (navigation.yaml and the policy): a person's own record, the privacy officer's reviews, the
    analyst's extracts, or for professionals the search and their patients."""
    home = home_of(who)
    if home is None:
        return error_page(request, 403, "Your account has no pages in the web app: it works through the APIs.",
                          who=who, advice="Ask the administrator which role your account should have.")
    if home != "/":
        return RedirectResponse(home, status_code=303)
    mine = service.my_patients(gate=gate_of(request), who=who)
    return page(request, "home.html", {"q": "", "results": None, "mine": mine, "search_error": None}, who=who)


@router.post("/me/what-matters")
def my_what_matters(request: Request, text: str = Form("")):
    """A person adds, in their own words, what matters to them."""
    return service_action(request, lambda gate, who: own.add_what_matters(gate=gate, who=who, text=text),
                          then=lambda pid: f"/patients/{quote(pid)}#about-heading")


@router.post("/me/correction")
def my_correction(request: Request, text: str = Form(""), organisation: str = Form("")):
    """A person asks for something in their record to be corrected."""
    return service_action(request, lambda gate, who: own.ask_correction(gate=gate, who=who, text=text,
                                                                        organisation=organisation),
                          then=lambda pid: f"/patients/{quote(pid)}?asked=1")


@router.get("/me/access-log")
def my_access_log(request: Request, mine: int = 0, all: int = 0):
    """A person's own view of who looked at their record."""
    return service_page(request, "access_log.html", lambda gate, who: own.access_log(
        gate=gate, who=who, mine=bool(mine), everything=bool(all)))


@router.get("/patients/search")
def search(request: Request, who: Viewer, q: str = ""):
    gate = gate_of(request)
    results, error = None, None
    text = q.strip()
    params = service.parse_search(text=text)
    if not text:
        error = "Type an NHS number, a name or a date of birth (for example 16/03/1933)."
    elif not params:
        error = "Nothing to search for: type an NHS number, a name or a date of birth."
    else:
        digits = re.sub(r"[\s-]", "", text)
        if digits.isdigit() and len(digits) == 10 and not valid_nhs_number(digits):
            error = f"{text} is not a valid NHS number (the check digit does not match). Check it and try again."
        else:
            try:
                found = gate.search(who, "Patient", params + [("_count", "50")])
                results = [_patient_row(s.content) for s in found.matches]
            except FhirError as exc:
                if exc.status in (400, 403):
                    error = exc.diagnostics
                else:
                    raise
    ctx = {"q": text, "results": results, "search_error": error}
    if request.headers.get("hx-request"):
        return page(request, "_results.html", ctx, who=who, status=200)
    mine = service.my_patients(gate=gate, who=who)
    return page(request, "home.html", {**ctx, "mine": mine}, who=who, status=400 if error and text else 200)


def _patient_row(p: dict[str, Any]) -> dict[str, Any]:
    nhs = next((i.get("value") for i in p.get("identifier") or [] if i.get("system") == service.NHS_SYSTEM), None)
    holder = (p.get("meta") or {}).get("source")
    return {"id": p.get("id"), "name": service._human_name(p), "nhs_number": nhs, "birth_date": p.get("birthDate"),
            "gender": p.get("gender"), "address": service._address(p), "source": holder}


# -- the patient page ---------------------------------------------------------------------------------------
@router.get("/patients/{patient_id}")
def patient(request: Request, who: Viewer, patient_id: str, setting: str = "", type: str = "", all: int = 0,
                  asked: int = 0):
    started = time.perf_counter()
    try:
        _check_filters(setting, type)
        summary = service.summarise(gate=gate_of(request), who=who, patient_id=patient_id)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who, patient_id=patient_id)
    tl = service.filter_timeline(patient_id=patient_id, events=summary.timeline, setting=setting or None,
                                 type=type or None)
    resp = page(request, "patient.html", {
        "s": summary, "tl": tl, "setting": setting, "type": type, "all": bool(all), "limit": TIMELINE_PAGE,
        "all_settings": SETTINGS, "all_types": service.TIMELINE_TYPES, "badge": _badge, "asked": bool(asked),
    }, who=who)
    resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return resp


@router.get("/patients/{patient_id}/timeline")
def patient_timeline(request: Request, who: Viewer, patient_id: str, setting: str = "", type: str = "", all: int = 0):
    """The timeline section alone (HTMX swaps it in place when the filters change)."""
    if not request.headers.get("hx-request"):
        query = urlencode({k: v for k, v in (("setting", setting), ("type", type), ("all", all or "")) if v})
        return RedirectResponse(f"/patients/{quote(patient_id)}{'?' + query if query else ''}#timeline",
                                status_code=303)
    try:
        _check_filters(setting, type)
        tl = service.timeline(gate=gate_of(request), who=who, patient_id=patient_id, setting=setting or None,
                              type=type or None)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who)
    resp = page(request, "_timeline.html", {"tl": tl, "pid": patient_id, "setting": setting, "type": type,
                                            "all": bool(all), "limit": TIMELINE_PAGE, "all_settings": SETTINGS,
                                            "all_types": service.TIMELINE_TYPES, "badge": _badge}, who=who)
    resp.headers["HX-Push-Url"] = f"/patients/{quote(patient_id)}?" + urlencode(
        {k: v for k, v in (("setting", setting), ("type", type)) if v})
    return resp


def _check_filters(setting: str, type: str) -> None:
    if setting and setting not in SETTINGS:
        raise FhirError(400, f"Unknown setting '{setting}': choose one of {', '.join(SETTINGS)}", code="value")
    if type and type not in service.TIMELINE_TYPES:
        raise FhirError(400, f"Unknown type '{type}': choose one of {', '.join(service.TIMELINE_TYPES)}",
                        code="value")


_BADGE = {"GP practice": "gp", "Hospital": "hospital", "Community": "community", "Mental health": "mental",
          "Social care": "social", "Pharmacy": "pharmacy", "Care home": "carehome", "Other": "other"}


def _badge(setting: str) -> str:
    return _BADGE.get(setting, "other")


# -- open in context ----------------------------------------------------------------------------------------
@router.get("/launch")
def launch(request: Request, who: Viewer, nhs: str = ""):
    """Open a person's page straight from a host system: /launch?nhs=NHS_NUMBER."""
    digits = re.sub(r"[\s-]", "", nhs)
    if not digits:
        return error_page(request, 400, "No NHS number was given. The link should end in ?nhs= followed by the "
                                        "person's 10-digit NHS number.", who=who)
    if not (digits.isdigit() and len(digits) == 10) or not valid_nhs_number(digits):
        return error_page(request, 400, f"'{nhs[:40]}' is not a valid NHS number (10 digits with a correct check "
                                        "digit). Check the link in the system you came from, or search below.",
                          who=who)
    try:
        people = service.find_by_nhs_number(gate=gate_of(request), who=who, nhs_number=digits)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who)
    if not people:
        return error_page(request, 404, f"No one with NHS number {digits[:3]} {digits[3:6]} {digits[6:]} is known "
                                        "to the shared record.", who=who,
                          advice="Check the number, or search by name and date of birth.")
    return RedirectResponse(f"/patients/{quote(people[0]['id'])}", status_code=303)

