"""FHIR R4 REST routes at /fhir: thin handlers over the gate."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from joinedup.api.auth import current_user
from joinedup.api.capability import capability_statement
from joinedup.api.limits import check_bundle_entries
from joinedup.api.responses import (
    FHIR_BUNDLE_SCHEMA,
    FHIR_JSON,
    FHIR_RESOURCE_SCHEMA,
    FhirResponse,
    fhir_responses,
)
from joinedup.deps import CurrentUser, FhirBody, FormData, GateDep, SettingsDep
from joinedup.fhir.bundles import apply_elements, apply_summary, searchset
from joinedup.fhir.errors import FhirError, info_outcome
from joinedup.fhir.validation import is_resource_type
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.store.repository import Stored, Written
from joinedup.store.search import MAX_COUNT_PARAM, MAX_OFFSET, parse_int, unsupported_reason

# Every handler is a plain `def`: FastAPI runs it in its thread pool, so a long store call (a 20,000-entry
# transaction) never holds up the event loop and other requests.
router = APIRouter(prefix="/fhir", tags=["fhir"], default_response_class=FhirResponse)
MAX_VERSION = 2_147_483_647  # versions are 32-bit integers in the store


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _body_doc(schema: dict[str, Any], media: str = FHIR_JSON) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {media: {"schema": schema}}}}


_COUNT = _query("_count", f"Page size, 0 to {MAX_COUNT_PARAM:,} (pages are capped at the server's page size)",
                {"type": "integer", "minimum": 0, "maximum": MAX_COUNT_PARAM})
_OFFSET = _query("_offset", f"Entries to skip, 0 to {MAX_OFFSET:,}",
                 {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET})
_SINCE = _query("_since", "Only what changed at or after this instant")
SEARCH_PARAMS = [_COUNT, _OFFSET, _query("_sort", "Sort keys, e.g. -_lastUpdated"),
                 _query("_summary", "true, false, text, data or count"),
                 _query("_elements", "Comma-separated elements to keep"),
                 _query("_total", "none, estimate or accurate"), _query("_include", "Type:param[:Target]"),
                 _query("_revinclude", "Type:param[:Target]")]
_READ_ERRORS = (400, 401, 403, 404, 406, 410)
_WRITE_ERRORS = (400, 401, 403, 404, 409, 412, 413, 415, 422, 428)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _etag(version: int) -> str:
    return f'W/"{version}"'


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(instant: str) -> str:
    """RFC 7231 date (IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT") for a stored UTC timestamp: what
    `email.utils.format_datetime(dt, usegmt=True)` writes, at a fraction of its cost (one per read)."""
    dt = datetime.fromisoformat(instant.rstrip("Z")[:26])
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return (f"{_DAYS[dt.weekday()]}, {dt.day:02d} {_MONTHS[dt.month - 1]} {dt.year:04d} "
            f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} GMT")


def _resource_response(s: Stored, status: int = 200, extra: dict | None = None) -> FhirResponse:
    headers = {"ETag": _etag(s.version)}
    if s.last_updated:
        headers["Last-Modified"] = http_date(s.last_updated)
    if extra:
        headers.update(extra)
    return FhirResponse(s.content, status_code=status, headers=headers)


def _written_response(request: Request, w: Written, created: bool) -> Response:
    loc = f"{base_url(request)}/{w.rtype}/{w.id}/_history/{w.version}"
    headers = {"ETag": _etag(w.version), "Location": loc, "Content-Location": loc}
    prefer = request.headers.get("prefer", "")
    status = 201 if created else 200
    if "return=minimal" in prefer:
        return Response(status_code=status, headers=headers)
    if "return=OperationOutcome" in prefer:
        return FhirResponse(info_outcome(f"{w.rtype}/{w.id} saved as version {w.version}"), status_code=status,
                            headers=headers)
    return FhirResponse(w.resource, status_code=status, headers=headers)


def _check_format(request: Request) -> None:
    fmt = request.query_params.get("_format")
    if fmt and "json" not in fmt:
        raise FhirError(406, f"_format '{fmt}' is not supported; this server speaks application/fhir+json",
                        code="not-supported")


@router.get("/metadata", summary="CapabilityStatement", responses=fhir_responses())
def metadata(request: Request, settings: SettingsDep):
    return FhirResponse(capability_statement(base_url(request), request.app.state.gate.params,
                                             max_body_bytes=settings.max_body_bytes,
                                             max_bundle_entries=settings.max_bundle_entries,
                                             max_page_size=settings.max_page_size))


@router.api_route("/metadata", methods=["POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def metadata_not_allowed():
    raise FhirError(405, "The CapabilityStatement is read-only: use GET /fhir/metadata", code="not-supported")


@router.post("", summary="Process a transaction or batch Bundle",
             description="At most `max_bundle_entries` entries (JOINEDUP_MAX_BUNDLE_ENTRIES, default 20,000) and "
                         "`max_body_bytes` (JOINEDUP_MAX_BODY_BYTES, default 64 MiB) per request: 413 otherwise.",
             responses=fhir_responses(*_WRITE_ERRORS, schema=FHIR_BUNDLE_SCHEMA, ok_description="The response Bundle"),
             openapi_extra=_body_doc(FHIR_BUNDLE_SCHEMA))
def bundle(request: Request, who: CurrentUser, gate: GateDep, settings: SettingsDep, body: FhirBody):
    check_bundle_entries(body, settings.max_bundle_entries)
    return FhirResponse(gate.bundle(who, body, base_url=base_url(request)))


@router.get("/_history", summary="System history",
            responses=fhir_responses(*_READ_ERRORS, schema=FHIR_BUNDLE_SCHEMA),
            openapi_extra={"parameters": [_COUNT, _OFFSET, _SINCE]})
def system_history(request: Request, who: CurrentUser, gate: GateDep):
    return _history(request, who, gate, None, None)


# Bulk export routes are registered before the generic type routes (see api/export.py).

@router.get("/{rtype}", summary="Search a resource type",
            responses=fhir_responses(*_READ_ERRORS, schema=FHIR_BUNDLE_SCHEMA),
            openapi_extra={"parameters": SEARCH_PARAMS})
def search_get(rtype: str, request: Request, who: CurrentUser, gate: GateDep):
    _check_format(request)
    return _search(request, who, gate, rtype, list(request.query_params.multi_items()))


@router.post("/{rtype}/_search", summary="Search a resource type (form-encoded POST)",
             responses=fhir_responses(*_READ_ERRORS, 413, schema=FHIR_BUNDLE_SCHEMA),
             openapi_extra=_body_doc({"type": "object", "additionalProperties": {"type": "string"}},
                                     "application/x-www-form-urlencoded"))
def search_post(rtype: str, request: Request, who: CurrentUser, gate: GateDep, form: FormData):
    params = list(request.query_params.multi_items()) + [(k, str(v)) for k, v in form.multi_items()]
    return _search(request, who, gate, rtype, params)


def _search(request: Request, who: Principal, gate: Gate, rtype: str, params: list[tuple[str, str]]):
    strict = "handling=strict" in request.headers.get("prefer", "")
    query_text = f"{rtype}?{urlencode(params)}" if params else rtype
    settings = request.app.state.settings
    result = gate.search(who, rtype, params, strict=strict, query_text=query_text,
                         default_count=settings.default_page_size, max_count=settings.max_page_size)
    base = base_url(request)
    plan = result.plan
    entries = []
    for s in result.matches:
        content = s.content
        if plan.elements:
            content = apply_elements(dict(content), plan.elements)
        elif plan.summary in ("true", "text", "data"):
            content = apply_summary(dict(content), plan.summary)
        entries.append({"fullUrl": f"{base}/{s.rtype}/{s.id}", "resource": content, "search": {"mode": "match"}})
    for s in result.included:
        entries.append({"fullUrl": f"{base}/{s.rtype}/{s.id}", "resource": s.content,
                        "search": {"mode": "include"}})
    kept = [(k, v) for k, v in (plan.used + _controls(params)) if k != "_offset"]
    path = f"{base}/{rtype}"

    def link(relation: str, offset: int) -> dict:
        q = kept + ([("_offset", str(offset))] if offset else [])
        return {"relation": relation, "url": f"{path}?{urlencode(q)}" if q else path}

    links = [link("self", plan.offset)]
    if plan.summary != "count" and plan.count:
        links.append(link("first", 0))
        if result.has_more:
            links.append(link("next", plan.offset + plan.count))
        if plan.offset > 0:
            links.append(link("previous", max(0, plan.offset - plan.count)))
        if result.total is not None and result.total > 0:
            links.append(link("last", ((result.total - 1) // plan.count) * plan.count))
    bundle = searchset(entries, total=result.total, links=links)
    if plan.ignored:
        bundle["entry"].append({"resource": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "not-supported",
                       "diagnostics": "Ignored (not used to filter): " + "; ".join(dict.fromkeys(
                           unsupported_reason(gate.params, rtype, n.partition(":")[0]) for n in plan.ignored)),
                       "expression": list(dict.fromkeys(plan.ignored))}]},
            "search": {"mode": "outcome"}})
    return FhirResponse(bundle)


def _controls(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in params if k in ("_count", "_sort", "_summary", "_elements", "_total")
            or k.startswith(("_include", "_revinclude"))]


@router.post("/{rtype}", summary="Create a resource (conditional with If-None-Exist)",
             responses={**fhir_responses(*_WRITE_ERRORS, ok=201, ok_description="Created"),
                        200: {"description": "If-None-Exist matched an existing resource",
                              "content": {FHIR_JSON: {"schema": FHIR_RESOURCE_SCHEMA}}}},
             openapi_extra=_body_doc(FHIR_RESOURCE_SCHEMA))
def create(rtype: str, request: Request, who: CurrentUser, gate: GateDep, body: FhirBody):
    if not is_resource_type(rtype):
        raise FhirError(404, f"Unknown resource type '{rtype}'", code="not-supported")
    if isinstance(body, dict) and body.get("resourceType") != rtype:
        raise FhirError(400, f"resourceType '{body.get('resourceType')}' does not match the URL's type '{rtype}'",
                        expression=["resourceType"])
    written = gate.create(who, body, if_none_exist=request.headers.get("if-none-exist"))
    if written.status == "exists":
        return _written_response(request, written, created=False)
    return _written_response(request, written, created=True)


@router.get("/{rtype}/_history", summary="Type history",
            responses=fhir_responses(*_READ_ERRORS, schema=FHIR_BUNDLE_SCHEMA),
            openapi_extra={"parameters": [_COUNT, _OFFSET, _SINCE]})
def type_history(rtype: str, request: Request, who: CurrentUser, gate: GateDep):
    return _history(request, who, gate, rtype, None)


@router.get("/{rtype}/{rid}", summary="Read a resource",
            responses={**fhir_responses(*_READ_ERRORS), 304: {"description": "Not modified (If-None-Match)"}},
            openapi_extra={"parameters": [_query("_summary", "true, text or data"),
                                          _query("_elements", "Comma-separated elements to keep")]})
async def read(rtype: str, rid: str, request: Request):
    # Reads are the requests clients make most (`DirectRead` below takes those with ids of FHIR's form before the
    # router does): signing in (the token's lookup) and the gated read run in one go (see `_answer_read`), where a
    # `CurrentUser` dependency and a plain `def` handler would take a trip to the thread pool each. The checks run
    # in the same order (401 before anything else).
    return await _answer_read(rtype, rid, request)


# Types whose reads always go to the thread pool: their content can be large (a Binary holds a whole file) or their
# read commits the audit trail first (AuditEvent).
_POOLED_TYPES = frozenset({"AuditEvent", "Binary"})


async def _answer_read(rtype: str, rid: str, request: Request) -> Response:
    """`_read`, on the event loop itself when the store is a local SQLite file, else in the thread pool.

    A read by id on SQLite is two indexed one-row lookups (the token, the entry) on the thread's own open
    connection, plus the policy's facts: tens of microseconds, less than the trip to a pool thread and back costs
    (waking the thread, then the loop; with 32 requests at once, dozens of threads passing the GIL to and fro at
    every statement). WAL readers never wait for writers, and the audit event is only recorded here (committed by
    `AuditDurabilityMiddleware` before the response leaves, as every other request's). PostgreSQL is a network
    round trip away: its reads stay in the pool, as do the types in `_POOLED_TYPES`."""
    if rtype not in _POOLED_TYPES and _local_store(request.app.state.gate):
        return _read(rtype, rid, request)
    return await run_in_threadpool(_read, rtype, rid, request)


def _local_store(gate: Gate) -> bool:
    return (gate.database_url or "").startswith("sqlite")


# A read's address as the route above matches it, for ids of FHIR's own form (R4 `id`: [A-Za-z0-9-.]{1,64}) and
# type names: what no other GET route under /fhir takes ($export and _history are neither).
_READ_PATH = re.compile(r"/fhir/([A-Z][A-Za-z]{0,63})/([A-Za-z0-9.-]{1,64})")


class DirectRead:
    """ASGI middleware, innermost of the app's own: `GET /fhir/{type}/{id}` (the request clients make most) goes
    straight to the same `_read` as the route, skipping the framework's route matching (dozens of routes) and
    dependency machinery. Every middleware outside it still runs (audit durability, security headers, request
    limits, reasons, access notices); errors get the app's own FhirError handler, so the OperationOutcomes are
    the route's; anything else falls through to the app."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            m = _READ_PATH.fullmatch(scope["path"])
            if m is not None:
                request = Request(scope, receive)
                try:
                    response = await _answer_read(m[1], m[2], request)
                except FhirError as exc:
                    response = await scope["app"].exception_handlers[FhirError](request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _read(rtype: str, rid: str, request: Request) -> Response:
    who = current_user(request)
    query = bool(request.scope.get("query_string"))  # most reads have none: nothing to parse then
    if query:
        _check_format(request)
    s = request.app.state.gate.read(who, rtype, rid)
    inm = request.headers.get("if-none-match")
    if inm and inm.strip() in (_etag(s.version), f'"{s.version}"'):
        return Response(status_code=304, headers={"ETag": _etag(s.version)})
    summary = request.query_params.get("_summary") if query else None
    elements = request.query_params.get("_elements") if query else None
    if elements:
        s.content = apply_elements(dict(s.content), [e.strip() for e in elements.split(",") if e.strip()])
    elif summary in ("true", "text", "data"):
        s.content = apply_summary(dict(s.content), summary)
    return _resource_response(s)


@router.put("/{rtype}/{rid}", summary="Update (or create with a given id) a resource; If-Match for locking",
            responses={**fhir_responses(*_WRITE_ERRORS, ok_description="Updated"),
                       201: {"description": "Created with the given id",
                             "content": {FHIR_JSON: {"schema": FHIR_RESOURCE_SCHEMA}}}},
            openapi_extra=_body_doc(FHIR_RESOURCE_SCHEMA))
def update(rtype: str, rid: str, request: Request, who: CurrentUser, gate: GateDep, body: FhirBody):
    written = gate.update(who, rtype, rid, body, if_match=request.headers.get("if-match"))
    return _written_response(request, written, created=written.status == "created")


@router.delete("/{rtype}/{rid}", summary="Delete a resource",
               responses=fhir_responses(400, 401, 403, 404, 409, ok_description="Deleted (an informational "
                                                                                  "OperationOutcome)"))
def delete(rtype: str, rid: str, who: CurrentUser, gate: GateDep):
    written = gate.delete(who, rtype, rid)
    text = f"{rtype}/{rid} deleted" if written else f"{rtype}/{rid} was not present; nothing to delete"
    headers = {"ETag": _etag(written.version)} if written else None
    return FhirResponse(info_outcome(text), status_code=200, headers=headers)


@router.get("/{rtype}/{rid}/_history", summary="Instance history",
            responses=fhir_responses(*_READ_ERRORS, schema=FHIR_BUNDLE_SCHEMA),
            openapi_extra={"parameters": [_COUNT, _OFFSET, _SINCE]})
def instance_history(rtype: str, rid: str, request: Request, who: CurrentUser, gate: GateDep):
    return _history(request, who, gate, rtype, rid)


@router.get("/{rtype}/{rid}/_history/{vid}", summary="Read one version (vread)",
            responses=fhir_responses(*_READ_ERRORS))
def vread(rtype: str, rid: str, vid: str, who: CurrentUser, gate: GateDep):
    version = parse_int("version id", vid, high=MAX_VERSION)
    s = gate.read(who, rtype, rid, version=version)
    return _resource_response(s)


def _history(request: Request, who: Principal, gate: Gate, rtype: str | None, rid: str | None):
    q = request.query_params
    settings = request.app.state.settings
    count_i = min(parse_int("_count", q.get("_count", "50"), high=MAX_COUNT_PARAM), settings.max_page_size)
    offset = parse_int("_offset", q.get("_offset", "0"), high=MAX_OFFSET)
    since = q.get("_since")
    since_norm = None
    if since:
        from joinedup.fhir.search_params import date_range

        rng = date_range(since)
        if rng is None:
            raise FhirError(400, f"_since '{since}' is not a valid instant", code="value", expression=["_since"])
        since_norm = rng[0]
    total, rows = gate.history(who, rtype=rtype, rid=rid, since=since_norm, count=count_i, offset=offset)
    base = base_url(request)
    entries = []
    for row in rows:
        full = f"{base}/{row['rtype']}/{row['id']}"
        entry = {"fullUrl": full,
                 "request": {"method": "DELETE" if row["deleted"] else row["method"],
                             "url": f"{row['rtype']}/{row['id']}" if row["method"] != "POST" else row["rtype"]},
                 "response": {"status": "204" if row["deleted"] else ("201" if row["version"] == 1 else "200"),
                              "etag": _etag(row["version"])}}
        if not row["deleted"]:
            entry["resource"] = row["content"]
        entries.append(entry)
    path = str(request.url).split("?")[0]
    links = [{"relation": "self", "url": str(request.url)}]
    if offset + count_i < total:
        nq = [(k, v) for k, v in q.multi_items() if k != "_offset"] + [("_offset", str(offset + count_i))]
        links.append({"relation": "next", "url": f"{path}?{urlencode(nq)}"})
    return FhirResponse({"resourceType": "Bundle", "type": "history", "total": total, "link": links,
                         "entry": entries})


everything_router = APIRouter(prefix="/fhir", tags=["fhir"], default_response_class=FhirResponse)


@everything_router.get("/Patient/{pid}/$everything", summary="Everything about one patient",
                       description="With `_count`, one page of that size (`_offset` to move on, a `next` link when "
                                   "there is more); without it, everything at once.",
                       responses=fhir_responses(*_READ_ERRORS, schema=FHIR_BUNDLE_SCHEMA),
                       openapi_extra={"parameters": [_SINCE, _query("_type", "Comma-separated resource types"),
                                                     _COUNT, _OFFSET]})
def everything(pid: str, request: Request, who: CurrentUser, gate: GateDep):
    q = request.query_params
    settings = request.app.state.settings
    count = (min(parse_int("_count", q["_count"], high=MAX_COUNT_PARAM), settings.max_page_size)
             if "_count" in q else None)
    offset = parse_int("_offset", q.get("_offset", "0"), high=MAX_OFFSET)
    since = None
    if q.get("_since"):
        from joinedup.fhir.search_params import date_range

        rng = date_range(q["_since"])
        if rng is None:
            raise FhirError(400, f"_since '{q['_since']}' is not a valid instant", code="value")
        since = rng[0]
    types = {t.strip() for t in q.get("_type", "").split(",") if t.strip()} or None
    unknown = sorted(t for t in types or () if not is_resource_type(t))
    if unknown:
        raise FhirError(400, f"_type names no FHIR R4 resource type: {', '.join(unknown)}", code="value",
                        expression=["_type"])
    items = gate.everything(who, pid, since=since, types=types)
    base = base_url(request)
    links = [{"relation": "self", "url": str(request.url)}]
    page = items[offset:]
    if count is not None:
        page = page[:count]
        path = str(request.url).split("?")[0]
        kept = [(k, v) for k, v in q.multi_items() if k != "_offset"]

        def link(relation: str, at: int) -> dict:
            return {"relation": relation, "url": f"{path}?{urlencode(kept + ([('_offset', str(at))] if at else []))}"}

        links.append(link("first", 0))
        if offset + count < len(items) and count:
            links.append(link("next", offset + count))
        if offset > 0 and count:
            links.append(link("previous", max(0, offset - count)))
    entries = [{"fullUrl": f"{base}/{s.rtype}/{s.id}", "resource": s.content, "search": {"mode": "match"}}
               for s in page]
    return FhirResponse(searchset(entries, total=len(items), links=links), media_type=FHIR_JSON)


# -- compartment search (FHIR R4 http.html "search", search.html "Compartments") -----------------------------------
_PAGING = ("_count", "_offset", "_sort", "_total", "_summary", "_elements")


@router.get("/Patient/{pid}/{ctype}", summary="Search a type within one patient's compartment",
            description="FHIR compartment search: the resources of a type that the Patient compartment "
                        "(CompartmentDefinition/patient) places in this person's compartment, e.g. "
                        "`/fhir/Patient/123/Claim` (Claims whose `patient` or `payee` is Patient/123), with any "
                        "further search parameters of that type.",
            responses=fhir_responses(*_READ_ERRORS, schema=FHIR_BUNDLE_SCHEMA),
            openapi_extra={"parameters": [_COUNT, _OFFSET]})
def patient_compartment_search(pid: str, ctype: str, request: Request, who: CurrentUser, gate: GateDep):
    _check_format(request)
    if not is_resource_type(ctype):
        raise FhirError(404, f"Unknown resource type '{ctype}'", code="not-supported")
    members = gate.params.compartments.get("Patient", {}).get(ctype)
    if not members:
        raise FhirError(400, f"{ctype} is not in the Patient compartment (CompartmentDefinition/patient): search "
                             f"/fhir/{ctype} instead", code="not-supported")
    gate.read(who, "Patient", pid)  # the person must exist and be visible (404 / 403 otherwise)
    params = list(request.query_params.multi_items())
    clash = [k for k, _v in params if k.split(":")[0] in members]
    if clash:
        raise FhirError(400, f"'{clash[0]}' is fixed by the compartment (Patient/{pid})", code="value",
                        expression=[clash[0]])
    if len(members) == 1:
        return _search(request, who, gate, ctype, params + [(members[0], f"Patient/{pid}")])
    # in the compartment through any of its parameters (e.g. a Claim's patient or payee): one search per parameter,
    # each through the gate, merged (each resource once, by id) and paged here
    settings = request.app.state.settings
    q = request.query_params
    count = min(parse_int("_count", q.get("_count", str(settings.default_page_size)), high=MAX_COUNT_PARAM),
                settings.max_page_size)
    offset = parse_int("_offset", q.get("_offset", "0"), high=MAX_OFFSET)
    filters = [(k, v) for k, v in params if k not in _PAGING and not k.startswith(("_include", "_revinclude"))]
    found: dict[str, Stored] = {}
    for member in members:
        query = filters + [(member, f"Patient/{pid}")]
        result = gate.search(who, ctype, query + [("_count", str(settings.max_page_size))],
                             query_text=f"Patient/{pid}/{ctype}?{urlencode(query)}",
                             default_count=settings.max_page_size, max_count=settings.max_page_size)
        for s in result.matches:
            found.setdefault(s.id, s)
    ordered = [found[k] for k in sorted(found)]
    page = ordered[offset:offset + count] if count else []
    base = base_url(request)
    path = f"{base}/Patient/{pid}/{ctype}"

    def link(relation: str, at: int) -> dict:
        kept = filters + [("_count", str(count))] + ([("_offset", str(at))] if at else [])
        return {"relation": relation, "url": f"{path}?{urlencode(kept)}"}

    links = [link("self", offset)]
    if offset + count < len(ordered) and count:
        links.append(link("next", offset + count))
    entries = [{"fullUrl": f"{base}/{s.rtype}/{s.id}", "resource": s.content, "search": {"mode": "match"}}
               for s in page]
    return FhirResponse(searchset(entries, total=len(ordered), links=links))
