"""Server-rendered pages (Jinja2 + HTMX): log-in, search, my patients, the patient page, open-in-context.

Every page reads data through the one gate with the logged-in professional's principal; refusals and bad
input become clear pages, never tracebacks. Routes are plain `def`s: FastAPI runs them (and their database
work) in its threadpool, never on the event loop. Every form carries the session's CSRF token
(`{{ csrf_input() }}`, checked by api/security.py); HTMX requests carry it in X-CSRF-Token (set on <body>).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse, RedirectResponse

from joinedup.api.auth import bearer, client_address
from joinedup.api.security import csrf_token
from joinedup.fhir.errors import FhirError
from joinedup.fhir.nhs_number import is_valid as valid_nhs_number
from joinedup.governance.gate import Gate, access_notices, how_to_get_access
from joinedup.governance.identity import Principal, authenticate, revoke_token, sign_in
from joinedup.governance.policy import activities_of, rules
from joinedup.governance.service import REASON_CATEGORIES, grant_break_glass
from joinedup.record import own, service
from joinedup.record.models import HEADINGS, SETTINGS

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
COOKIE = "joinedup_token"
TIMELINE_PAGE = 200

templates = Jinja2Templates(directory=str(HERE / "templates"))
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _ukdate(value: str | None) -> str:
    """'2026-05-25T10:40:00Z' → '25 May 2026 10:40'; partial dates stay partial ('Jun 2019')."""
    if not value:
        return ""
    m = re.match(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2}))?)?)?", str(value))
    if not m:
        return str(value)
    y, mo, d, hh, mm = m.groups()
    if not mo:
        return y
    text = f"{_MONTHS[int(mo) - 1]} {y}"
    if d:
        text = f"{int(d)} {text}"
    if hh and (hh, mm) != ("00", "00"):
        text += f" {hh}:{mm}"
    return text


def _nhs(value: str) -> str:
    return f"{value[:3]} {value[3:6]} {value[6:]}" if value and len(value) == 10 else value


def _short_org(name: str | None) -> str:
    return (name or "").replace("NHS Foundation Trust", "NHS FT")


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _urlencode_nonempty(d: dict) -> str:
    return urlencode({k: v for k, v in d.items() if v})


templates.env.filters.update(ukdate=_ukdate, nhs=_nhs, short_org=_short_org, num=_num,
                             urlencode_nonempty=_urlencode_nonempty)


def _request_of(ctx) -> Request:
    request = ctx.get("request")
    if request is None:
        raise RuntimeError("csrf_token()/csrf_input() need the page's request: import macros 'with context'")
    return request


@pass_context
def _csrf_token(ctx) -> str:
    """This session's CSRF token (for hx-headers)."""
    return csrf_token(_request_of(ctx))


@pass_context
def _csrf_input(ctx) -> Markup:
    """The hidden field every <form method="post"> carries."""
    return Markup('<input type="hidden" name="csrf_token" value="{}">').format(escape(csrf_token(_request_of(ctx))))


templates.env.globals.update(csrf_token=_csrf_token, csrf_input=_csrf_input)
router = APIRouter(include_in_schema=False)


# -- helpers ------------------------------------------------------------------------------------------------
def _gate(request: Request) -> Gate:
    return request.app.state.gate


def _who(request: Request) -> Principal | None:
    return authenticate(_gate(request).store, bearer(request))


def _safe_next(value: str | None) -> str:
    """Only same-site paths may be a post-login destination."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _to_login(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': here})}", status_code=303)


def _role_name(role: str) -> str:
    return (rules()["roles"].get(role) or {}).get("display", role)


def page(request: Request, name: str, context: dict[str, Any], *, who: Principal | None = None,
         status: int = 200) -> HTMLResponse:
    # break-glass (and any other access notice) the gate raised while serving this request: shown on the page
    ctx = {"who": who, "role_name": _role_name(who.role) if who else None, "headings": HEADINGS,
           "access_notices": list(access_notices.get() or []), **context}
    return templates.TemplateResponse(request, name, ctx, status_code=status)


_TITLES = {400: "That request was not understood", 401: "Please log in", 403: "You do not have access to this record",
           404: "Not found", 410: "This record has been removed"}


def error_page(request: Request, status: int, message: str, *, who: Principal | None = None,
               advice: str | None = None, patient_id: str | None = None) -> HTMLResponse:
    """A clear page for bad input and refusals (the same status code as the API would give)."""
    if status == 403 and advice is None and who is not None:
        advice = how_to_get_access(who)
        if advice in message:
            message = message.replace(advice, "").strip()
    # professionals refused for want of a relationship may ask for emergency access to that person
    emergency = bool(status == 403 and patient_id and who is not None
                     and "emergency-access" in activities_of(who.role))
    return page(request, "error.html", {"status": status, "title": _TITLES.get(status, "Something went wrong"),
                                        "message": message, "advice": advice, "patient_id": patient_id,
                                        "emergency": emergency, "reason_categories": REASON_CATEGORIES},
                who=who, status=status)


def _run(request: Request, fn: Callable[[Gate, Principal], Any], who: Principal | None = None
         ) -> tuple[Principal | None, Any, FhirError | None]:
    """(who, fn's result, None) or (who, None, the refusal); who is None when nobody is logged in (fn not run)."""
    who = who or _who(request)
    if who is None:
        return None, None, None
    try:
        return who, fn(_gate(request), who), None
    except FhirError as exc:
        return who, None, exc


def service_page(request: Request, template: str, build: Callable[[Gate, Principal], dict[str, Any]], *,
                 patient_id: str | None = None, status: int = 200, who: Principal | None = None,
                 after: Callable[[HTMLResponse], None] | None = None) -> HTMLResponse | RedirectResponse:
    """The usual page: log-in first, then `build(gate, who)` gives the template's context; a refusal or bad
    input from the service becomes the clear error page.

    `who`: the caller has already logged the person in (a form shown again after a refused edit);
    `status`: the page's status (such as 422 for that form); `after(response)`: adds to the page, never to the
    error page (a header such as Server-Timing)."""
    who, context, refused = _run(request, build, who)
    if who is None:
        return _to_login(request)
    if refused is not None:
        return error_page(request, refused.status, refused.diagnostics, who=who, patient_id=patient_id)
    resp = page(request, template, context, who=who, status=status)
    if after is not None:
        after(resp)
    return resp


def service_action(request: Request, do: Callable[[Gate, Principal], Any], *,
                   then: str | Callable[[Any], str]) -> HTMLResponse | RedirectResponse:
    """The usual form post: log-in first, then `do(gate, who)`; a refusal or bad input becomes the clear error page,
    success a redirect to `then` (or `then(result)`)."""
    who, result, refused = _run(request, do)
    if who is None:
        return _to_login(request)
    if refused is not None:
        return error_page(request, refused.status, refused.diagnostics, who=who)
    return RedirectResponse(then(result) if callable(then) else then, status_code=303)


def panel_page(request: Request, template: str, build: Callable[[Gate, Principal], dict[str, Any]], *,
               full_page: str, on_error: Callable[[str], dict[str, Any]]) -> HTMLResponse | RedirectResponse:
    """A panel the person page loads with HTMX: without HTMX the address leads to `full_page`; a refusal or
    failure becomes a quiet note in the panel (`on_error(message)` gives the context) instead of a whole page."""
    if not request.headers.get("hx-request"):
        return RedirectResponse(full_page, status_code=303)
    who, context, refused = _run(request, build)
    if who is None:
        return _to_login(request)
    return page(request, template, on_error(refused.diagnostics) if refused is not None else context, who=who)


@router.post("/patients/{patient_id}/break-glass")
def break_glass_form(request: Request, patient_id: str, reason_category: str = Form(""),
                           reason: str = Form("")):
    """Emergency access from the refusal page: reason required, time-limited, reviewed by the privacy officer."""
    who = _who(request)
    if who is None:
        return _to_login(request)
    try:
        grant_break_glass(_gate(request), who, patient_id=patient_id, reason_category=reason_category,
                          reason=reason)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who,
                          patient_id=patient_id if exc.status in (400, 403) else None)
    return RedirectResponse(f"/patients/{quote(patient_id)}", status_code=303)


# -- log in and out -----------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str = "/"):
    return page(request, "login.html", {"next": _safe_next(next), "error": None, "username": "", "locked": False})


@router.post("/login")
def login_submit(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/")):
    """Throttled per account and per address (identity.sign_in): a locked account is told until when."""
    gate = _gate(request)
    settings = request.app.state.settings
    result = sign_in(gate, username, password, address=client_address(request), settings=settings, channel="web")
    if result.token is None:
        locked = result.locked_until is not None
        resp = page(request, "login.html", {
            "next": _safe_next(next), "username": username, "locked": locked,
            "error": result.message if locked else "That user name and password do not match. Try again."},
            status=429 if locked else 401)
        if locked:
            resp.headers["Retry-After"] = str(result.retry_after)
        return resp
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(COOKIE, result.token, httponly=True, samesite="lax", max_age=12 * 3600, path="/",
                    secure=settings.secure_cookies or request.url.scheme == "https")
    return resp


@router.post("/logout")
def logout(request: Request):
    """Log out: the session's token is revoked on the server, not only forgotten by the browser."""
    gate = _gate(request)
    token = bearer(request)
    who = authenticate(gate.store, token)
    if who is not None:
        revoke_token(gate.store, token)
        gate.audit.record(who, "logout", allowed=True, reason="web log-out: session token revoked")
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax",
                       secure=request.app.state.settings.secure_cookies or request.url.scheme == "https")
    return resp


# -- home, search, my patients ------------------------------------------------------------------------------
@router.get("/")
def home(request: Request):
    who = _who(request)
    if who is None:
        return _to_login(request)
    if who.role == "patient" and who.patient_id:  # a person's home is their own record
        return RedirectResponse(f"/patients/{quote(who.patient_id)}", status_code=303)
    mine = service.my_patients(gate=_gate(request), who=who)
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
def search(request: Request, q: str = ""):
    who = _who(request)
    if who is None:
        return _to_login(request)
    gate = _gate(request)
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
def patient(request: Request, patient_id: str, setting: str = "", type: str = "", all: int = 0,
                  asked: int = 0):
    who = _who(request)
    if who is None:
        return _to_login(request)
    started = time.perf_counter()
    try:
        _check_filters(setting, type)
        summary = service.summarise(gate=_gate(request), who=who, patient_id=patient_id)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who, patient_id=patient_id)
    tl = service.filter_timeline(patient_id=patient_id, events=summary.timeline, setting=setting or None,
                                 type=type or None)
    resp = page(request, "patient.html", {
        "s": summary, "tl": tl, "setting": setting, "type": type, "all": bool(all), "limit": TIMELINE_PAGE,
        "all_settings": SETTINGS, "all_types": service.TIMELINE_TYPES, "charts": _charts(summary),
        "badge": _badge, "asked": bool(asked),
    }, who=who)
    resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return resp


@router.get("/patients/{patient_id}/timeline")
def patient_timeline(request: Request, patient_id: str, setting: str = "", type: str = "", all: int = 0):
    """The timeline section alone (HTMX swaps it in place when the filters change)."""
    who = _who(request)
    if who is None:
        return _to_login(request)
    if not request.headers.get("hx-request"):
        query = urlencode({k: v for k, v in (("setting", setting), ("type", type), ("all", all or "")) if v})
        return RedirectResponse(f"/patients/{quote(patient_id)}{'?' + query if query else ''}#timeline",
                                status_code=303)
    try:
        _check_filters(setting, type)
        tl = service.timeline(gate=_gate(request), who=who, patient_id=patient_id, setting=setting or None,
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


def _charts(summary) -> list[dict[str, Any]]:
    """Server-rendered SVG line charts (no JavaScript) for results with two or more values."""
    out = []
    w, h, pad = 240, 72, 8
    for r in summary.results:
        pts = r.points
        if len(pts) < 2:
            continue
        vals = [p.value for p in pts]
        lo, hi = min(vals), max(vals)
        span = (hi - lo) or 1.0
        xs = [pad + i * (w - 2 * pad) / (len(pts) - 1) for i in range(len(pts))]
        ys = [h - pad - (v - lo) / span * (h - 2 * pad) for v in vals]
        out.append({"code": r.code, "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys)),
                    "last": (xs[-1], ys[-1]), "lo": lo, "hi": hi, "w": w, "h": h})
    return out


# -- open in context ----------------------------------------------------------------------------------------
@router.get("/launch")
def launch(request: Request, nhs: str = ""):
    """Open a person's page straight from a host system: /launch?nhs=NHS_NUMBER."""
    who = _who(request)
    if who is None:
        return _to_login(request)
    digits = re.sub(r"[\s-]", "", nhs)
    if not digits:
        return error_page(request, 400, "No NHS number was given. The link should end in ?nhs= followed by the "
                                        "person's 10-digit NHS number.", who=who)
    if not (digits.isdigit() and len(digits) == 10) or not valid_nhs_number(digits):
        return error_page(request, 400, f"'{nhs[:40]}' is not a valid NHS number (10 digits with a correct check "
                                        "digit). Check the link in the system you came from, or search below.",
                          who=who)
    try:
        people = service.find_by_nhs_number(gate=_gate(request), who=who, nhs_number=digits)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who)
    if not people:
        return error_page(request, 404, f"No one with NHS number {digits[:3]} {digits[3:6]} {digits[6:]} is known "
                                        "to the shared record.", who=who,
                          advice="Check the number, or search by name and date of birth.")
    return RedirectResponse(f"/patients/{quote(people[0]['id'])}", status_code=303)

