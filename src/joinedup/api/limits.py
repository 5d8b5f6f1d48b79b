"""Request limits: body size, bundle entries, integer parameters (a clear OperationOutcome, never a 500).

- Body size: `settings.max_body_bytes` (JOINEDUP_MAX_BODY_BYTES, default 64 MiB). A request whose Content-Length is
  over the limit is answered 413 before any of it is read; a chunked body is counted as it streams in and refused
  (413) as soon as it passes the limit, so the server never holds more than the limit in memory.
- Bundle entries: `settings.max_bundle_entries` (JOINEDUP_MAX_BUNDLE_ENTRIES, default 20,000) per batch or
  transaction Bundle posted to /fhir: 413 naming the limit (`check_bundle_entries`).
- Unstorable text: a NUL character (U+0000) in the URL or a JSON or form body, or a lone UTF-16 surrogate escape in
  a JSON body: 400 (FHIR strings may not hold them; PostgreSQL cannot store NUL, neither store half a character).
- Integer parameters (`_count`, `_offset`, `count`, `offset`, `limit`, version ids, item ids): whole numbers in a
  stated range, else 400 (`store.search.parse_int` for FHIR; `Query(ge=, le=)` bounds on the /api routes).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from joinedup.config import Settings
from joinedup.fhir.errors import FhirError


class RequestRefused(FhirError):
    """A request refused at the edge, before any route runs (rendered by the route's handlers or the middleware)."""


class BodyTooLarge(RequestRefused):
    """413: the request body is over `settings.max_body_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than this server's limit of {limit:,} bytes "
                              "(JOINEDUP_MAX_BODY_BYTES). Send less in one request: split a Bundle into several, "
                              "or load large files with `joinedup import`.", code="too-long")


class UnstorableText(RequestRefused):
    """400: text no FHIR string may hold and the store cannot keep: a NUL character (U+0000) in the URL or body, or a
    lone UTF-16 surrogate escape (e.g. "\\ud800" without its pair) in a JSON body. Refused at the edge rather than
    failing deep in the store (PostgreSQL cannot store NUL in text; neither database can store half a character)."""

    def __init__(self, where: str, what: str = "a NUL character (U+0000)") -> None:
        super().__init__(400, f"The request {where} contains {what}, which FHIR strings may not hold; remove it and "
                              "send the request again.", code="invalid")


_EVEN_BACKSLASHES = rb"(?<!\\)(?:\\\\)*"  # what follows is an escape, not an escaped backslash's text
_HIGH = rb"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_JSON_NUL = re.compile(_EVEN_BACKSLASHES + rb"\\u0000")
_LONE_SURROGATE = re.compile(_EVEN_BACKSLASHES + _HIGH + rb"(?!" + _LOW + rb")|" + _EVEN_BACKSLASHES + rb"(?<!"
                             + _HIGH + rb")" + _LOW)


TAIL = 32  # bytes of the previous piece kept in front of the next, as context for escapes cut between pieces


def unstorable(window: bytes, form: bool, *, seen: int = 0, final: bool = True) -> str | None:
    """What unstorable text a piece of a body holds (see UnstorableText), or None.

    A streamed body is checked piece by piece: `window` is the last TAIL bytes of the previous piece (`seen` > 0)
    followed by this one. Escapes that start in its first `seen` - 11 bytes were judged with the previous piece; an
    escape in the last 12 bytes is judged with the next piece unless this one is `final` (its pair may follow)."""
    if b"\x00" in window or (form and b"%00" in window):
        return "a NUL character (U+0000)"
    lo = max(0, seen - 11)
    if b"\\u0000" in window:
        for m in _JSON_NUL.finditer(window):
            if m.end() - 6 >= lo:
                return "a NUL character (U+0000)"
    if b"\\ud" in window or b"\\uD" in window:
        for m in _LONE_SURROGATE.finditer(window):
            if m.end() - 6 >= lo and (final or m.end() + 6 <= len(window)):
                return "a lone UTF-16 surrogate escape (half a character)"
    return None


def check_bundle_entries(body: Any, limit: int) -> None:
    """413 when a batch or transaction Bundle has more than `limit` entries (checked before any is processed)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        return
    entries = body.get("entry")
    if isinstance(entries, list) and len(entries) > limit:
        raise FhirError(413, f"The Bundle has {len(entries):,} entries; this server processes at most {limit:,} "
                             "entries in one batch or transaction (JOINEDUP_MAX_BUNDLE_ENTRIES). Split it into "
                             "smaller Bundles, or load large files with `joinedup import`.", code="too-costly",
                        expression=["Bundle.entry"])


async def send_outcome(send: Send, exc: FhirError) -> None:
    """Answer with exc's OperationOutcome straight from ASGI middleware (no route ran)."""
    payload = orjson.dumps(exc.outcome())
    await send({"type": "http.response.start", "status": exc.status,
                "headers": [(b"content-type", b"application/fhir+json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None (absent, chunked or malformed)."""
    for key, value in scope.get("headers") or ():
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _bodiless(scope: Scope) -> bool:
    """Whether the request declares no body at all: neither Content-Length nor Transfer-Encoding (RFC 9112 6.3)."""
    for key, _value in scope.get("headers") or ():
        if key == b"content-length" or key == b"transfer-encoding":
            return False
    return True


class RequestLimits:
    """ASGI middleware enforcing `max_body_bytes` on every HTTP request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        length = declared_length(scope)
        if length is not None and length > limit:
            return await send_outcome(send, BodyTooLarge(limit))
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            return await send_outcome(send, UnstorableText("URL"))
        if length is None and _bodiless(scope):
            # no Content-Length and no Transfer-Encoding: HTTP/1.1 says there is no body (most GETs, every read by
            # id), so there is nothing to count or scan, and nothing here can refuse it: the app as it is
            return await self.app(scope, receive, send)
        ctype = next((v for k, v in scope.get("headers") or () if k == b"content-type"), b"").lower()
        form = b"x-www-form-urlencoded" in ctype
        scan = not ctype.startswith(b"multipart/")
        received = 0
        tail = b""
        started = False

        async def counted_receive() -> Message:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge(limit)
                if scan and chunk:
                    window = tail + chunk
                    what = unstorable(window, form, seen=len(tail), final=not message.get("more_body", False))
                    if what:
                        raise UnstorableText("body", what)
                    tail = window[-TAIL:]
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except RequestRefused as exc:  # read by a middleware outside the routes' error handlers
            if started:
                raise
            await send_outcome(send, exc)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the request-limit middleware to the app."""
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
