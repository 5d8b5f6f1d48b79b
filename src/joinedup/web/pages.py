"""The page layer: rendering, log-in redirect, the error page and the helpers every page route uses.

Domain page routes (care/, conflicts/, record pages in web/routes.py) import these public names:

* `page(request, template, context)`: render a template with the signed-in person, access notices and headings;
* `error_page(request, status, message)`: the clear page for bad input and refusals (same status as the API);
* `service_page(request, template, build)`: log-in first, then `build(gate, who)` gives the context; refusals
  become the error page;
* `service_action(request, do, then=...)`: the usual form post (redirect on success);
* `panel_page(...)`: an HTMX panel of the person page;
* `Viewer`: the signed-in person as a route parameter (`def show(request: Request, who: Viewer)`); nobody signed in
  is sent to the log-in page and back (the `LoginRequired` handler installed by `install(app)`);
* `gate_of(request)`, `current_who(request)`, `to_login(request)`, `safe_next(path)`, `role_name(role)`;
* `templates` (Jinja2, with the date/number filters and the CSRF helpers), `STATIC_DIR`, `COOKIE`.

Every form carries the session's CSRF token (`{{ csrf_input() }}`, checked by api/security.py); HTMX requests carry
it in X-CSRF-Token (set on <body>).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse, RedirectResponse

from joinedup.api.auth import bearer
from joinedup.api.security import csrf_token
from joinedup.fhir.errors import FhirError
from joinedup.governance.accounts import authenticate
from joinedup.governance.gate import Gate, access_notices, how_to_get_access
from joinedup.governance.identity import Principal
from joinedup.governance.policy import activities_of, rules
from joinedup.governance.service import REASON_CATEGORIES
from joinedup.record.models import HEADINGS

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


# -- helpers ------------------------------------------------------------------------------------------------
def gate_of(request: Request) -> Gate:
    return request.app.state.gate


def current_who(request: Request) -> Principal | None:
    return authenticate(gate_of(request), bearer(request))


def safe_next(value: str | None) -> str:
    """Only same-site paths may be a post-login destination."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def to_login(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': here})}", status_code=303)


def role_name(role: str) -> str:
    return (rules()["roles"].get(role) or {}).get("display", role)


def page(request: Request, name: str, context: dict[str, Any], *, who: Principal | None = None,
         status: int = 200) -> HTMLResponse:
    # break-glass (and any other access notice) the gate raised while serving this request: shown on the page
    ctx = {"who": who, "role_name": role_name(who.role) if who else None, "headings": HEADINGS,
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
    who = who or current_who(request)
    if who is None:
        return None, None, None
    try:
        return who, fn(gate_of(request), who), None
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
        return to_login(request)
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
        return to_login(request)
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
        return to_login(request)
    return page(request, template, on_error(refused.diagnostics) if refused is not None else context, who=who)


class LoginRequired(Exception):
    """Nobody is signed in on a page that needs someone: answered with the log-in page (and back afterwards)."""


def viewer(request: Request) -> Principal:
    """The signed-in person, or LoginRequired (a plain `def`: the token lookup runs in the threadpool)."""
    who = current_who(request)
    if who is None:
        raise LoginRequired()
    return who


Viewer = Annotated[Principal, Depends(viewer)]


def install(app) -> None:
    """Answer LoginRequired with the redirect to the log-in page."""

    async def _login_required(request: Request, _exc: LoginRequired) -> RedirectResponse:
        return to_login(request)

    app.add_exception_handler(LoginRequired, _login_required)
