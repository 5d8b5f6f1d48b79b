"""FHIR Subscription (R4, channel rest-hook) for external systems.

A system creates a Subscription through /fhir (`criteria` such as `Encounter?class=IMP`, `channel.type`
rest-hook, `channel.endpoint` http(s), optional `channel.payload` and `channel.header`). The notification worker
(`care.notifications.service`) hands every committed write to `RestHooks.dispatch`; a written resource matches when the
store's own search finds it with the criteria plus `_id`, so criteria mean exactly what they mean in a search.
Matches are POSTed from a small thread pool (a slow receiver never holds up the inbox): with a payload, a
`history` Bundle holding the resource; without, an empty body. Failures are retried with backoff and then the
Subscription's `status` becomes `error` with the reason in `error`; the next success makes it `active` again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from joinedup.fhir.bundles import split_url
from joinedup.fhir.errors import FhirError
from joinedup.fhir.validation import is_resource_type
from joinedup.governance.gate import Gate
from joinedup.governance.identity import SYSTEM

log = logging.getLogger("joinedup.care.subscriptions")
BACKOFF = (0.2, 0.5, 1.0, 2.0)   # seconds before each retry
TIMEOUT = 5.0


def check_subscription(resource: Any) -> None:
    """Refuse (400) a Subscription whose channel JoinedUp cannot deliver: rest-hook to an http(s) endpoint."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        return
    channel = resource.get("channel") or {}
    if not isinstance(channel, dict):
        raise FhirError(400, "Subscription.channel must be an object", code="structure",
                        expression=["Subscription.channel"])
    ctype = channel.get("type")
    if ctype != "rest-hook":
        raise FhirError(400, f"Subscription.channel.type '{ctype}' is not supported: JoinedUp delivers rest-hook "
                             "notifications only", code="not-supported", expression=["Subscription.channel.type"])
    endpoint = channel.get("endpoint") or ""
    try:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if not parts or parts.scheme not in ("http", "https") or not parts.netloc:
        raise FhirError(400, f"Subscription.channel.endpoint '{str(endpoint)[:80]}' is not an http(s) URL: a "
                             "rest-hook endpoint must be http:// or https://", code="value",
                        expression=["Subscription.channel.endpoint"])
    criteria = resource.get("criteria") or ""
    if not isinstance(criteria, str):
        raise FhirError(400, "Subscription.criteria must be a string, e.g. Encounter?class=IMP", code="structure",
                        expression=["Subscription.criteria"])
    rtype = criteria.split("?", 1)[0]
    if not rtype or not is_resource_type(rtype):
        raise FhirError(400, f"Subscription.criteria '{criteria[:80]}' must start with a resource type, e.g. "
                             "Encounter?class=IMP", code="value", expression=["Subscription.criteria"])
    headers = channel.get("header") or []
    if not isinstance(headers, list):
        raise FhirError(400, "Subscription.channel.header must be a list of 'Name: value' strings",
                        code="structure", expression=["Subscription.channel.header"])
    for h in headers:
        if not isinstance(h, str) or ":" not in h:
            raise FhirError(400, f"Subscription.channel.header '{str(h)[:60]}' must be 'Name: value'",
                            code="value", expression=["Subscription.channel.header"])


class RestHooks:
    """Active rest-hook Subscriptions and their delivery."""

    def __init__(self, gate: Gate, *, workers: int = 8) -> None:
        self.gate = gate
        self._subs: list[dict] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="joinedup-resthook")
        self._client = httpx.Client(timeout=TIMEOUT)
        self._state: dict[str, str] = {}     # subscription id -> last status we recorded

    def invalidate(self) -> None:
        with self._lock:
            self._subs = None

    def active(self) -> list[dict]:
        with self._lock:
            if self._subs is not None:
                return self._subs
        subs = []
        result = self.gate.search(SYSTEM, "Subscription", [("_count", "1000")])
        for s in result.matches:
            sub = s.content
            if sub.get("status") not in ("requested", "active", "error"):
                continue
            try:
                check_subscription(sub)
            except FhirError as exc:
                self._set_status(sub, "error", exc.diagnostics)
                continue
            if sub.get("status") == "requested":
                sub = self._set_status(sub, "active", None) or sub
            subs.append(sub)
            self._state[sub["id"]] = sub.get("status")
        with self._lock:
            self._subs = subs
        return subs

    def dispatch(self, written: list[tuple[str, str, dict | None]], *, bulk: bool = False) -> int:
        """Match written resources against the Subscriptions and queue the POSTs; returns how many matched."""
        if any(rtype == "Subscription" for rtype, _, _ in written):
            self.invalidate()
        subs = self.active()
        if not subs:
            return 0
        n = 0
        by_type: dict[str, list[dict]] = {}
        for sub in subs:
            by_type.setdefault(sub["criteria"].split("?", 1)[0], []).append(sub)
        for rtype, rid, res in written:
            if not res or rtype not in by_type:
                continue
            for sub in by_type[rtype]:
                if self.matches(sub, rtype, rid):
                    n += 1
                    self._pool.submit(self._send, sub, res)
        return n

    def matches(self, sub: dict, rtype: str, rid: str) -> bool:
        try:
            _, _, params = split_url(sub["criteria"] if "?" in sub["criteria"] else sub["criteria"] + "?")
            found = self.gate.search(SYSTEM, rtype, [*params, ("_id", rid), ("_count", "1")],
                                     query_text=f"subscription:{sub.get('id')}")
            return bool(found.matches)
        except FhirError as exc:
            self._set_status(sub, "error", f"criteria cannot be evaluated: {exc.diagnostics}")
            return False

    def _send(self, sub: dict, res: dict) -> None:
        channel = sub.get("channel") or {}
        headers = {}
        for h in channel.get("header") or []:
            k, _, v = h.partition(":")
            headers[k.strip()] = v.strip()
        body = None
        if channel.get("payload"):
            headers["Content-Type"] = channel["payload"]
            base = "urn:joinedup"
            body = json.dumps({"resourceType": "Bundle", "type": "history", "timestamp": _now(),
                               "entry": [{"fullUrl": f"{base}:{res['resourceType']}/{res['id']}", "resource": res,
                                          "request": {"method": "PUT",
                                                      "url": f"{res['resourceType']}/{res['id']}"},
                                          "response": {"status": "200"}}]})
        last = "no attempt"
        for attempt in range(len(BACKOFF) + 1):
            try:
                r = self._client.post(channel["endpoint"], content=body, headers=headers)
                if 200 <= r.status_code < 300:
                    if self._state.get(sub["id"]) != "active":
                        self._set_status(sub, "active", None)
                    return
                last = f"endpoint answered HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"[:200]
            if attempt < len(BACKOFF):
                time.sleep(BACKOFF[attempt])
        self._set_status(sub, "error", f"delivery failed after {len(BACKOFF) + 1} attempts: {last}")

    def _set_status(self, sub: dict, status: str, error: str | None) -> dict | None:
        """Record the delivery status on the Subscription (a write through the gate as the platform)."""
        self._state[sub["id"]] = status
        try:
            current = self.gate.read(SYSTEM, "Subscription", sub["id"]).content
            if current.get("status") == status and current.get("error") == error:
                return current
            new = {k: v for k, v in current.items() if k != "meta"}
            new["status"] = status
            if error:
                new["error"] = error
            else:
                new.pop("error", None)
            return self.gate.update(SYSTEM, "Subscription", sub["id"], new).resource
        except FhirError:
            log.warning("could not record status %s on Subscription/%s", status, sub.get("id"))
            return None


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def install(app) -> None:
    """Refuse undeliverable Subscriptions at the FHIR API (400 OperationOutcome) before they are stored."""
    app.add_middleware(SubscriptionCheck)


class SubscriptionCheck:
    """ASGI middleware: POST/PUT /fhir/Subscription bodies must describe a deliverable rest-hook.

    The body is read (at most `settings.max_body_bytes`, else 413) and checked in the thread pool, never on the
    event loop, then replayed to the route."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT") or \
                not scope["path"].startswith("/fhir/Subscription"):
            return await self.app(scope, receive, send)
        from starlette.concurrency import run_in_threadpool

        from joinedup.api.limits import BodyTooLarge, declared_length, send_outcome

        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        limit = settings.max_body_bytes if settings is not None else None
        if limit is not None and (declared_length(scope) or 0) > limit:
            return await send_outcome(send, BodyTooLarge(limit))
        chunks = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                return await send_outcome(send, BodyTooLarge(limit))
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        refusal = await run_in_threadpool(_refusal, body)
        if refusal is not None:
            return await send_outcome(send, refusal)

        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _refusal(body: bytes) -> FhirError | None:
    """Why a Subscription body is refused, or None (not JSON: the FHIR route gives its own precise 400)."""
    try:
        doc = orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError: not JSON, or nested too deep
        return None
    try:
        check_subscription(doc)
    except FhirError as exc:
        return exc
    return None
