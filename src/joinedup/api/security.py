"""Web security around every request: security headers, trusted hosts, CSRF on cookie-authenticated form posts.

One pure ASGI middleware (outermost of the app's own middleware), in this order:

1. Trusted hosts: a Host header not in `settings.trusted_hosts` (plus the host of `settings.base_url`) is refused
   with 400 before anything else runs, so a foreign host name never reaches a Location header or a bundle link.
2. CSRF: an unsafe request (POST, PUT, PATCH, DELETE) to a web page that carries the session cookie must carry
   this session's CSRF token, in the form field `csrf_token` or the `X-CSRF-Token` header (HTMX). The token is
   HMAC(secret_key, session token), so it needs no storage and dies with the session. The log-in form, before
   there is a session, uses a double-submit cookie (`joinedup_csrf`, a random value; the token is its HMAC).
   Requests with an Authorization header are not cookie-authenticated and need no token; the APIs (/fhir, /api,
   /cds-services, /auth) never accept the cookie.
3. Security headers on every response: Content-Security-Policy (no inline scripts), X-Frame-Options and
   frame-ancestors, nosniff, Referrer-Policy, Cache-Control: no-store (everything but /static), and `Secure` on
   cookies (plus HSTS) when `settings.secure_cookies` is set.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from joinedup.config import Settings

SESSION_COOKIE = "joinedup_token"
LOGIN_COOKIE = "joinedup_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
STATE_KEY = "joinedup.csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# paths where the session cookie is never accepted (bearer tokens or passwords only): no CSRF token needed
COOKIELESS_PREFIXES = ("/fhir", "/api", "/cds-services", "/auth")
RECORD_FREE_PREFIXES = ("/static/",)  # the only responses a browser or proxy may keep
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",  # the vendored htmx only: no inline scripts, no eval
    "style-src 'self' 'unsafe-inline'",  # pages carry small <style> blocks and style attributes
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "object-src 'none'",
])
# the OpenAPI pages (no records) load Swagger UI / ReDoc from their CDN with an inline start-up script
DOCS_CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly",
    "font-src 'self' https://fonts.gstatic.com",
    "worker-src 'self' blob:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "object-src 'none'",
])
_CSP_BYTES, _DOCS_CSP_BYTES = CSP.encode(), DOCS_CSP.encode()
# headers the middleware sets itself, replacing any the app set (and, for what may not be kept, its caching ones)
_REPLACED = frozenset({b"content-security-policy", b"x-frame-options", b"x-content-type-options", b"referrer-policy"})
_REPLACED_NO_STORE = _REPLACED | {b"cache-control", b"pragma", b"expires"}
_SEED = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_SECURE_ATTR = re.compile(rb";\s*secure\s*(;|$)", re.IGNORECASE)
log = logging.getLogger("joinedup.security")


# -- CSRF tokens ------------------------------------------------------------------------------------------------
def _mac(secret: str, purpose: str, seed: str) -> str:
    digest = hmac.new(secret.encode(), f"joinedup-csrf:{purpose}:{seed}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass
class CsrfState:
    """Per request: what the page's CSRF token is and whether the log-in cookie must be set."""

    secret: str
    session: str | None  # the session cookie's token
    login_seed: str | None  # the pre-session double-submit cookie's value
    new_login_seed: bool = False  # generated for this request (set the cookie if a page used it)
    used: bool = False

    def token(self) -> str:
        """The token a page rendered for this request must carry."""
        if self.session:
            return _mac(self.secret, "session", self.session)
        if self.login_seed is None:
            self.login_seed, self.new_login_seed = secrets.token_urlsafe(32), True
        self.used = True
        return _mac(self.secret, "login", self.login_seed)

    def accepts(self, given: str | None, *, login_form: bool) -> bool:
        if not given:
            return False
        expected = []
        if self.session:
            expected.append(_mac(self.secret, "session", self.session))
        if login_form and self.login_seed and not self.new_login_seed:
            expected.append(_mac(self.secret, "login", self.login_seed))
        return any(hmac.compare_digest(given.encode(), e.encode()) for e in expected)


def csrf_token(request: Request) -> str:
    """This request's CSRF token, for a page's forms (`{{ csrf_input() }}`) and HTMX (`X-CSRF-Token`)."""
    state = request.scope.setdefault("state", {})
    csrf = state.get(STATE_KEY)
    if csrf is None:  # the middleware is not installed (an app built without it): derive from the cookies
        settings = request.app.state.settings
        csrf = state[STATE_KEY] = CsrfState(settings.secret_key, request.cookies.get(SESSION_COOKIE),
                                            _valid_seed(request.cookies.get(LOGIN_COOKIE)))
    return csrf.token()


def _valid_seed(value: str | None) -> str | None:
    return value if value and _SEED.match(value) else None


def _cookies(headers: Headers) -> dict[str, str]:
    """The request's cookies exactly as the app will see them (Starlette's parser over every Cookie header, as
    Request.cookies does), so the middleware and the routes never disagree about the session."""
    jar: dict[str, str] = {}
    for raw in headers.getlist("cookie"):
        jar.update(cookie_parser(raw))
    return jar


# -- trusted hosts ----------------------------------------------------------------------------------------------
def _split_host(value: str) -> tuple[str, str | None]:
    """'Example.org:8443' → ('example.org', '8443'); '[::1]:80' → ('[::1]', '80')."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        rest = value[end + 1:]
        return value[:end + 1], (rest[1:] if rest.startswith(":") else None)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    return value, None


class TrustedHosts:
    """Host names the server answers for: exact names ('localhost'), with a port ('example.org:8443'),
    wildcards ('*.example.org'), or '*' for any."""

    def __init__(self, spec: str, *extra: str) -> None:
        entries = [e.strip().lower() for e in spec.split(",") if e.strip()] + [e.lower() for e in extra if e]
        self.any = "*" in entries
        self.entries = [_split_host(e) for e in entries if e != "*"]

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        if not host_header or len(host_header) > 255:
            return False
        host, port = _split_host(host_header)
        if port is not None and not port.isdigit():
            return False
        for name, want_port in self.entries:
            if want_port is not None and want_port != port:
                continue
            if name == host or (name.startswith("*.") and host.endswith(name[1:]) and len(host) > len(name) - 1):
                return True
        return False


def trusted_hosts(settings: Settings) -> TrustedHosts:
    """The settings' trusted hosts plus the host of the configured public base URL."""
    base = urlsplit(settings.base_url).netloc if settings.base_url else ""
    return TrustedHosts(settings.trusted_hosts, base)


# -- responses written by the middleware ------------------------------------------------------------------------
def _page(status: int, title: str, message: str) -> bytes:
    return (f'<!doctype html><html lang="en-GB"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{escape(title)} – JoinedUp</title>'
            f'<link rel="stylesheet" href="/static/app.css"></head><body><main id="main" class="narrow">'
            f'<p class="status-code">Error {status}</p><h1>{escape(title)}</h1>'
            f'<div class="notice notice--error"><p>{message}</p></div>'
            f'<p><a class="button" href="/">Go to JoinedUp</a></p></main></body></html>').encode()


def _outcome(code: str, diagnostics: str) -> bytes:
    return orjson.dumps({"resourceType": "OperationOutcome",
                         "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]})


def _is_prefixed(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


# -- the middleware ---------------------------------------------------------------------------------------------
class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings, fastapi_app: FastAPI) -> None:
        self.app = app
        self.settings = settings
        self.fastapi_app = fastapi_app
        self.hosts = trusted_hosts(settings)
        self.secure = bool(settings.secure_cookies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = Headers(scope=scope)
        reply = self._headers_sender(scope, send, path)
        if not self.hosts.allows(headers.get("host")):
            message = ("This server does not answer for that host name (the Host header is not one of its "
                       "trusted hosts).")
            if _is_prefixed(path, ("/fhir", "/api")):
                await _respond(reply, 400, _outcome("invalid", message), "application/fhir+json")
            else:
                await _respond(reply, 400, _page(400, "Unknown host name", escape(message)),
                               "text/html; charset=utf-8")
            return
        cookies = _cookies(headers)
        csrf = CsrfState(self.settings.secret_key, cookies.get(SESSION_COOKIE) or None,
                         _valid_seed(cookies.get(LOGIN_COOKIE)))
        scope.setdefault("state", {})[STATE_KEY] = csrf
        method = scope.get("method", "GET").upper()
        login_form = path == "/login"
        bearer = (headers.get("authorization") or "")[:7].lower() == "bearer "
        if (method not in SAFE_METHODS and not bearer
                and not _is_prefixed(path, COOKIELESS_PREFIXES) and (csrf.session or login_form)):
            given = headers.get(CSRF_HEADER)
            if not given:
                try:
                    given, receive = await self._form_token(scope, receive, headers)
                except _TooLarge:
                    await _respond(reply, 413, _page(413, "That form is too large", "The form sent more data "
                                                     "than this server accepts."), "text/html; charset=utf-8")
                    return
            if not csrf.accepts(given, login_form=login_form):
                await self._refuse_csrf(reply, path, method, given is not None, scope)
                return
        try:
            await self.app(scope, receive, reply)
        except Exception as exc:
            # a crash becomes the app's own 500 OperationOutcome, sent here so that it carries the headers too
            handler = self.fastapi_app.exception_handlers.get(Exception)
            if handler is None or reply.started:  # type: ignore[attr-defined]
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, reply)
            raise

    async def _form_token(self, scope: Scope, receive: Receive, headers: Headers) -> tuple[str | None, Receive]:
        """The csrf_token form field, and a receive that replays the body to the app."""
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return None, receive
        body = await _read_body(receive, max(1, int(getattr(self.settings, "max_body_bytes", 64 << 20))))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        given = None
        if ctype == "application/x-www-form-urlencoded":
            try:
                given = next((v for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True)
                              if k == CSRF_FIELD), None)
            except ValueError:
                given = None
        else:
            sent = False

            async def once() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return {"type": "http.disconnect"}

            try:
                form = await Request(dict(scope), once).form()
                value = form.get(CSRF_FIELD)
                given = value if isinstance(value, str) else None
                await form.close()
            except Exception:  # noqa: BLE001 - an unreadable form has no token
                given = None
        return given, replay

    async def _refuse_csrf(self, send: Send, path: str, method: str, had_token: bool, scope: Scope) -> None:
        gate = getattr(self.fastapi_app.state, "gate", None)
        client = scope.get("client")
        if gate is not None:
            gate.record(None, "csrf", allowed=False, entity=path[:255],
                        detail={"method": method, "address": client[0] if client else "unknown"},
                        reason=f"{method} {path[:200]} refused: "
                               f"{'wrong' if had_token else 'missing'} CSRF token on a cookie-authenticated "
                               "request")
        title = "This form could not be accepted"
        message = ("It did not carry this session's security token, so it may not have come from a JoinedUp page "
                   "(another site can try to make your browser send forms). If you sent it yourself, the page was "
                   "probably open from an earlier log-in: go back, reload the page and try again.")
        await _respond(send, 403, _page(403, title, escape(message)), "text/html; charset=utf-8")

    def _headers_sender(self, scope: Scope, send: Send, path: str) -> Any:
        secure = self.secure
        keep_cacheable = path.startswith(RECORD_FREE_PREFIXES)
        added = _added_headers(path in DOCS_PATHS, keep_cacheable, secure)  # built once, shared
        drop = _REPLACED if keep_cacheable else _REPLACED_NO_STORE

        async def reply(message: Message) -> None:
            if message["type"] == "http.response.start":
                reply.started = True  # type: ignore[attr-defined]
                out = []
                for k, v in message.get("headers", []):
                    name = k.lower()
                    if name in drop:
                        continue
                    if name == b"set-cookie" and secure and not _SECURE_ATTR.search(v):
                        v = v + b"; Secure"
                    out.append((k, v))
                out += added
                csrf: CsrfState | None = (scope.get("state") or {}).get(STATE_KEY)
                if csrf is not None and csrf.new_login_seed and csrf.used:
                    cookie = f"{LOGIN_COOKIE}={csrf.login_seed}; Path=/; HttpOnly; SameSite=Lax"
                    out.append((b"set-cookie", (cookie + ("; Secure" if secure else "")).encode()))
                message = {**message, "headers": out}
            await send(message)

        reply.started = False  # type: ignore[attr-defined]
        return reply


@functools.cache
def _added_headers(docs: bool, keep_cacheable: bool, secure: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The headers the middleware adds to a response (after the app's own, less those it replaces)."""
    out = [(b"content-security-policy", _DOCS_CSP_BYTES if docs else _CSP_BYTES), (b"x-frame-options", b"DENY"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-opener-policy", b"same-origin"),
           (b"permissions-policy", b"camera=(), microphone=(), geolocation=()")]
    if not keep_cacheable:
        out += [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
    if secure:
        out.append((b"strict-transport-security", b"max-age=31536000"))
    return tuple(out)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the security middleware to the app (outermost of the app's own middleware)."""
    app.add_middleware(SecurityMiddleware, settings=settings, fastapi_app=app)
