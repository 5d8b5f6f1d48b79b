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
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import yaml
from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, RedirectResponse

from joinedup.api.auth import bearer
from joinedup.api.security import csrf_token
from joinedup.fhir import words
from joinedup.fhir.errors import FhirError
from joinedup.governance.accounts import authenticate
from joinedup.governance.gate import Gate, access_notices, how_to_get_access
from joinedup.governance.identity import Principal
from joinedup.governance.policy import activities_of, activity_text, has_activity, rules
from joinedup.governance.service import REASON_CATEGORIES
from joinedup.record.models import HEADINGS

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
COOKIE = "joinedup_token"
TIMELINE_PAGE = 200

templates = Jinja2Templates(directory=str(HERE / "templates"))
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _ukdate(value: str | None, time: bool = True) -> str:
    """The one human date format: '2026-05-25T10:40:00Z' → '25 May 2026 10:40' (the clock time as recorded); partial dates stay partial ('Jun 2019', '2019'); `time=False` gives the day only."""
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
    if time and hh and (hh, mm) != ("00", "00"):
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


def _status(code: str | None, rtype: str) -> str:
    """`{{ t.status | status("Task") }}`: a FHIR status in the platform's one vocabulary (fhir/words.py)."""
    return words.status_words(rtype, code)


_ISO_IN_TEXT = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?\b")


def _dates_in_text(text: str | None) -> str:
    """Text with any ISO dates in it written as people write them ('dated 2026-04-24' → 'dated 24 Apr 2026')."""
    return _ISO_IN_TEXT.sub(lambda m: _ukdate(m.group(0)), text or "")


_INTERNAL_NOTE = re.compile(r"\s*\((?:[a-z0-9_]+_id|rule|id)\b[^)]*\)", re.IGNORECASE)


def _no_ids(text: str | None) -> str:
    """Text for a page without internal notes such as '(v3_id: unverified)' or '(rule X-12)'."""
    return _INTERNAL_NOTE.sub("", text or "").strip()


def _once(name: str | None, role: str | None = None) -> str:
    """A name with its role shown once: 'Dr X (GP)' and 'GP' give 'Dr X (GP)', never 'Dr X (GP) (GP)'."""
    name = (name or "").strip()
    role = (role or "").strip()
    if not role or role.lower() in name.lower():
        return name or role
    return f"{name} ({role})" if name else role


templates.env.filters.update(ukdate=_ukdate, nhs=_nhs, short_org=_short_org, num=_num,
                             urlencode_nonempty=_urlencode_nonempty, status=_status, conversation=words.conversation_words,
                             meeting=words.meeting_words, name_once=_once, no_ids=_no_ids,
                             dates_in_text=_dates_in_text)


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


# -- areas, the menu and each role's home (navigation.yaml and the policy) ------------------------------------
@lru_cache(maxsize=1)
def areas() -> list[dict[str, Any]]:
    """The web app's areas from navigation.yaml, in menu order."""
    data = yaml.safe_load((HERE / "navigation.yaml").read_text())
    out = []
    for a in data["areas"]:
        area = {"paths": [], "needs": [], "any_of": [], "without": [], "home": False, "badge": None, "menu": None, **a}
        # '{id}' in a path stands for one path segment (a person's record id)
        area["patterns"] = [re.compile("^" + re.escape(p.rstrip("/")).replace(re.escape("{id}"), "[^/]+") + "(?:/.*)?$")
                            for p in area["paths"]]
        out.append(area)
    return out


def may_use(who: Principal, area: dict[str, Any]) -> bool:
    """Whether the role's activities (the policy) include everything the area needs."""
    return all(has_activity(who, a) for a in area["needs"]) and \
        (not area["any_of"] or any(has_activity(who, a) for a in area["any_of"])) and \
        not any(has_activity(who, a) for a in area["without"])


def _href(who: Principal, area: dict[str, Any]) -> str:
    return area["href"].replace("{patient}", who.patient_id or "")


def menu_of(who: Principal) -> list[dict[str, Any]]:
    """The menu for this person: every area their role may use (a patient account needs its own record)."""
    out = []
    for a in areas():
        if a["menu"] and may_use(who, a) and ("{patient}" not in a["href"] or who.patient_id):
            out.append({"key": a["key"], "label": a["menu"], "href": _href(who, a), "badge": a["badge"]})
    return out


def home_of(who: Principal) -> str | None:
    """Where this person's home is: the first area marked home that their role may use (the integration account,
    which may do everything, starts at the search like a professional)."""
    if "*" in activities_of(who.role):
        return "/"
    for a in areas():
        if a["home"] and may_use(who, a) and ("{patient}" not in a["href"] or who.patient_id):
            return _href(who, a)
    return None


def area_of(path: str) -> dict[str, Any] | None:
    """The area a page address belongs to (None: the page decides through the gate, e.g. a person's record)."""
    for a in areas():
        if any(p.match(path) for p in a["patterns"]):
            return a
    return None


def may_open(who: Principal | None, path: str) -> bool:
    """Whether a link to this page may be shown to this person (its area, if any, is one their role may use)."""
    if who is None:
        return False
    area = area_of(path.split("?")[0])
    return area is None or may_use(who, area)


def _admit(request: Request, who: Principal) -> FhirError | None:
    """Refuse (audited, 403) a page of an area the role cannot use: typing /mdt as a patient is refused here,
    whatever the page's own reads would have allowed."""
    area = area_of(request.url.path)
    if area is None or may_use(who, area):
        return None
    missing = [activity_text(a) for a in area["needs"] if not has_activity(who, a)]
    if not missing and area["any_of"] and not any(has_activity(who, a) for a in area["any_of"]):
        missing = [" or ".join(activity_text(a) for a in area["any_of"])]
    name = area["menu"] or area.get("name") or "these"
    why = (f"the {name} pages are for roles that may " + " and ".join(missing)) if missing else \
        f"the {name} pages are not part of your role's work"
    return gate_of(request).refuse(who, f"Access refused: {why}.", action="read",
                                   entity=f"page:{request.url.path}"[:200])


class PageRefused(Exception):
    """A signed-in person opened a page their role cannot use: answered with the refusal page."""

    def __init__(self, who: Principal, error: FhirError) -> None:
        super().__init__(error.diagnostics)
        self.who = who
        self.error = error


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
           "menu": menu_of(who) if who else [], "here": request.url.path, "can": lambda path: may_open(who, path),
           "access_notices": list(access_notices.get() or []), **context}
    return templates.TemplateResponse(request, name, ctx, status_code=status)


_TITLES = {400: "That request was not understood", 401: "Please log in", 403: "You do not have access to this page",
           404: "Page not found", 405: "That cannot be done here", 409: "Someone changed this meanwhile",
           410: "This record has been removed", 413: "That is too large", 422: "Please check what you entered",
           429: "Too many attempts", 500: "Something went wrong on our side"}
_API_PATH = re.compile(r"\s*\((?:e\.g\. )?(?:GET|POST|PUT|PATCH|DELETE) /[^)]*\)|\s*(?:GET|POST|PUT|PATCH|DELETE) /\S+")
_ROLE_ID = re.compile(r"role '([a-z-]+)'")
_NEEDS = re.compile(r"\s*\(needs '([a-z-]+)'\)")
_TYPE_ENTRIES = re.compile(r"\b([A-Z][A-Za-z]+) entries\b")


def plain_words(message: str) -> str:
    """A refusal or error in words for a page: no API paths, role or activity ids, or resource type names."""
    from joinedup.record.own import PLAIN_TYPES

    text = _API_PATH.sub("", message or "")
    text = _NEEDS.sub(lambda m: f" (that needs permission to {activity_text(m.group(1))})", text)
    text = _ROLE_ID.sub(lambda m: f"the {role_name(m.group(1)).lower()} role", text)
    text = _TYPE_ENTRIES.sub(lambda m: PLAIN_TYPES.get(m.group(1), m.group(1)) if m.group(1) in PLAIN_TYPES
                             else m.group(0), text)
    return re.sub(r"\s+([.,;:])", r"\1", text).strip()


def page_advice(who: Principal | None, message: str) -> str | None:
    """How to get access, for a page (the API's advice names API paths)."""
    if who is None:
        return None
    if " pages are " in message:
        return "The menu at the top lists the pages your role can use."
    if who.role == "patient":
        return "Ask your GP practice if you think you should be able to see this."
    if who.role == "analyst":
        return "Analysts work with de-identified extracts and published figures, not individual records."
    if who.role == "privacy-officer":
        return ("Privacy officers review the audit trail, emergency access and people's choices from the privacy "
                "reviews page.")
    if "sealed" in message or "private" in message:
        return "Ask the organisation that recorded it; sealed and private entries are not shared, even in an emergency."
    if "objected" in message:
        return ("The person's choice is honoured everywhere; ask the person, or the organisation that recorded the "
                "entry, if you need it for their care.")
    if "emergency-access" in activities_of(who.role):
        return ("If you are caring for this person, ask to be added to their care team or send a referral. In an "
                "emergency you can use emergency access (break glass): it is time-limited and reviewed by the "
                "privacy officer.")
    return "If you are caring for this person, ask to be added to their care team."


def error_page(request: Request, status: int, message: str, *, who: Principal | None = None,
               advice: str | None = None, patient_id: str | None = None) -> HTMLResponse:
    """A clear page for bad input and refusals (the same status code as the API would give), in plain words."""
    if status == 403 and who is not None:
        api_advice = how_to_get_access(who)
        if api_advice in message:
            message = message.replace(api_advice, "").strip()
        if advice is None:
            advice = page_advice(who, message)
    message = plain_words(message)
    advice = plain_words(advice) if advice else advice
    # professionals refused for want of a relationship may ask for emergency access to that person
    emergency = bool(status == 403 and patient_id and who is not None
                     and "emergency-access" in activities_of(who.role))
    title = "You do not have access to this record" if status == 403 and patient_id else \
        _TITLES.get(status, "Something went wrong")
    return page(request, "error.html", {"status": status, "title": title,
                                        "message": message, "advice": advice, "patient_id": patient_id,
                                        "emergency": emergency, "reason_categories": REASON_CATEGORIES,
                                        "home": home_of(who) if who else "/login"},
                who=who, status=status)


def _run(request: Request, fn: Callable[[Gate, Principal], Any], who: Principal | None = None
         ) -> tuple[Principal | None, Any, FhirError | None]:
    """(who, fn's result, None) or (who, None, the refusal); who is None when nobody is logged in (fn not run)."""
    who = who or current_who(request)
    if who is None:
        return None, None, None
    refused = _admit(request, who)
    if refused is not None:
        return who, None, refused
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
    refused = _admit(request, who)
    if refused is not None:
        raise PageRefused(who, refused)
    return who


Viewer = Annotated[Principal, Depends(viewer)]


def install(app) -> None:
    """Answer LoginRequired with the redirect to the log-in page."""

    async def _login_required(request: Request, _exc: LoginRequired) -> RedirectResponse:
        return to_login(request)

    def _page_refused(request: Request, exc: PageRefused) -> HTMLResponse:
        return error_page(request, exc.error.status, exc.error.diagnostics, who=exc.who)

    api_http = app.exception_handlers.get(StarletteHTTPException)
    api_unexpected = app.exception_handlers.get(Exception)

    async def _http(request: Request, exc: StarletteHTTPException):
        """An unknown page (or a method a page does not take) is a styled page for a browser; the APIs, and any
        client that does not ask for HTML (an API client mistyping an address), keep OperationOutcome."""
        if api_http is not None and (is_api_path(request.url.path) or isinstance(exc.__cause__, FhirError)
                                     or not wants_html(request)):
            return await api_http(request, exc)
        return await run_in_threadpool(_http_page, request, exc)

    def _http_page(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        if exc.status_code == 404:
            message = "There is no page at this address. It may have been mistyped, or the page may have moved."
        elif exc.status_code == 405:
            message = "This address cannot be used that way. Go back and use the page's own buttons and links."
        else:
            message = exc.detail if isinstance(exc.detail, str) else "The request could not be completed."
        return error_page(request, exc.status_code, message, who=_quiet_who(request))

    async def _unexpected(request: Request, exc: Exception):
        if api_unexpected is not None and is_api_path(request.url.path):
            return await api_unexpected(request, exc)
        import logging

        logging.getLogger("joinedup.web").error("unexpected error on a page", exc_info=exc)
        return error_page(request, 500, "The page could not be shown because of a fault in JoinedUp. It has been "
                                        "logged; nothing you typed has been lost from the page you came from. Try "
                                        "again, or go back.", who=None)

    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageRefused, _page_refused)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)


API_PREFIXES = ("/fhir", "/api", "/cds-services", "/auth", "/docs", "/redoc", "/openapi.json", "/healthz", "/static",
                "/.well-known", "/metadata")


def wants_html(request: Request) -> bool:
    """A browser asks for text/html; API clients ask for FHIR/JSON or anything (*/*)."""
    return "text/html" in request.headers.get("accept", "")


def is_api_path(path: str) -> bool:
    """Addresses whose errors are OperationOutcome or JSON (the APIs), not pages."""
    return any(path == p or path.startswith(p + "/") or path.startswith(p + "?") for p in API_PREFIXES)


def _quiet_who(request: Request) -> Principal | None:
    """The signed-in person for an error page's menu (nobody when the token cannot be checked)."""
    try:
        return current_who(request)
    except Exception:  # noqa: BLE001 - an error page must render even when the store is failing
        return None
