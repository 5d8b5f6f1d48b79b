"""Thin routers: CDS Hooks 2.0 (/cds-services) and the conflict API (/api/conflicts, /api/patients/{id}/conflicts)."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request

from joinedup.api.responses import FhirResponse, api_errors
from joinedup.deps import CurrentUser, GateDep, RawBody
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.store.search import MAX_OFFSET

from . import cds, person, preferences, screen
from .knowledge import load_knowledge

# Plain `def` handlers: FastAPI runs them in its thread pool, so screening and evaluation stay off the event loop.
cds_router = APIRouter(tags=["CDS Hooks"])
api_router = APIRouter(tags=["conflicts"], responses=api_errors())

JSON = "application/json"
Who = CurrentUser


def _json(content: Any, status: int = 200) -> FhirResponse:
    return FhirResponse(content, status_code=status, media_type=JSON)


def _cds_error(exc: Exception) -> FhirResponse:
    if isinstance(exc, cds.CdsError):
        return _json(exc.body(), exc.status)
    assert isinstance(exc, FhirError)
    code = exc.issues[0].get("code", "error") if exc.issues else "error"
    return _json({"error": code, "message": exc.diagnostics, "status": exc.status}, exc.status)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


# -- CDS Hooks --------------------------------------------------------------------------------------------------
@cds_router.get("/cds-services", summary="CDS Hooks discovery: the conflict services and their prefetch templates")
def cds_discovery():
    return _json(cds.discovery())


@cds_router.post("/cds-services/{service_id}", summary="Call a CDS service (patient-view, order-select, order-sign)")
def cds_call(service_id: str, request: Request, who: Who, gate: GateDep, raw: RawBody):
    try:
        cds.service_hook(service_id)
        body = cds.parse_json(raw)
        result = cds.evaluate_hook(gate=gate, who=who, service_id=service_id, body=body, base_url=_base_url(request))
    except (cds.CdsError, FhirError) as exc:
        return _cds_error(exc)
    return _json(result)


@cds_router.post("/cds-services/{service_id}/feedback", summary="Record accepted/overridden cards")
def cds_feedback(service_id: str, who: Who, gate: GateDep, raw: RawBody):
    try:
        cds.service_hook(service_id)
        body = cds.parse_json(raw)
        result = cds.record_feedback(gate=gate, who=who, service_id=service_id, body=body)
    except (cds.CdsError, FhirError) as exc:
        return _cds_error(exc)
    return _json(result)


# -- conflict API -----------------------------------------------------------------------------------------------
@api_router.get("/api/conflicts/rules/{rule_id}", summary="One conflict rule with its sources (card source link)")
def conflict_rule(rule_id: str):
    kb = load_knowledge()
    items = [*kb.rules, *({**c, "kind": "lifestyle"} for c in kb.lifestyle),
             *({**t, "kind": "schedule"} for t in kb.timing), *([{**kb.reviews, "kind": "schedule"}]
                                                                 if kb.reviews else [])]
    for r in items:
        if r.get("id") == rule_id:
            return _json({"id": r["id"], "kind": r.get("kind"), "severity": r.get("severity"),
                          "summary": r.get("summary"), "detail": str(r.get("detail", "")).strip(),
                          "sources": list(r.get("sources", [])), "review_date": r.get("review_date"),
                          "knowledge_version": kb.version})
    raise FhirError(404, f"No conflict rule '{rule_id}'", code="not-found")


class _ScreenCache:
    """Finished screens kept briefly so paging does not re-screen the population; every page is still checked
    and audited by the gate."""

    def __init__(self, ttl: float = 120.0) -> None:
        self.ttl = ttl
        self._items: dict[tuple, tuple[float, screen.ScreenResult]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> screen.ScreenResult | None:
        with self._lock:
            hit = self._items.get(key)
            if hit and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
            self._items.pop(key, None)
            return None

    def put(self, key: tuple, result: screen.ScreenResult) -> None:
        with self._lock:
            now = time.monotonic()
            for k in [k for k, (t, _) in self._items.items() if now - t >= self.ttl]:
                del self._items[k]
            self._items[key] = (now, result)


SCREEN_CACHE = _ScreenCache()


def _screen_page(gate: Gate, who: Principal, severity: str | None, practice: str | None, count: int, offset: int,
                 refresh: bool, include_deceased: bool = False) -> dict[str, Any]:
    try:
        sev = screen.check_severity(severity)
    except screen.ScreenError as exc:
        raise FhirError(400, str(exc), code="value", expression=["severity"]) from None
    key = (gate.database_url or id(gate), who.name, who.role, sev, practice or "", include_deceased)
    result = None if refresh else SCREEN_CACHE.get(key)
    if result is None:
        result = screen.screen_population(gate=gate, who=who, severity=sev, practice=practice,
                                          include_deceased=include_deceased)
        SCREEN_CACHE.put(key, result)
    else:
        decision = gate.check(who, "search", "Patient", entity=f"population:{screen.PURPOSE}")
        gate.record(who, "search", allowed=True, reason=decision.reason,
                    entity=f"population:{screen.PURPOSE}", detail={"records": result.screened, "cached": True})
    page = result.worklist[offset:offset + count]
    nxt = offset + len(page) if offset + len(page) < result.flagged else None
    return {"generated": result.generated, "knowledge_version": result.knowledge_version, "filters": result.filters,
            "screened": result.screened, "total": result.flagged, "offset": offset, "count": len(page),
            "next_offset": nxt, "practices": result.practices, "worklist": page}


@api_router.get("/api/conflicts/screen", summary="Population conflict screen: worklist of flagged people (paged)")
def conflict_screen(who: Who, gate: GateDep,
                    severity: str | None = Query(None, description="minimum severity: critical|high|moderate|low"),
                    practice: str | None = Query(None, description="Organization/id, id or practice name"),
                    count: int = Query(50, alias="_count", ge=1, le=1000),
                    offset: int = Query(0, alias="_offset", ge=0, le=MAX_OFFSET),
                    refresh: bool = Query(False, description="screen again instead of using a recent result"),
                    include_deceased: bool = Query(False, description="also list people recorded as deceased")):
    return _json(_screen_page(gate, who, severity, practice, count, offset, refresh, include_deceased))


@api_router.get("/api/me/alert-settings", summary="My decision-support alert threshold")
def get_alert_settings(who: Who, gate: GateDep):
    return _json({"min_severity": preferences.threshold(gate=gate, who=who),
                  "choices": preferences.THRESHOLDS})


@api_router.put("/api/me/alert-settings",
                summary="Set my alert threshold: {\"min_severity\": \"low\"|\"moderate\"|\"high\"}")
def put_alert_settings(who: Who, gate: GateDep, raw: RawBody):
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise FhirError(400, "request body is not valid JSON", code="invalid") from None
    if not isinstance(body, dict):
        raise FhirError(400, "body must be {\"min_severity\": ...}", code="invalid")
    return _json({"min_severity": preferences.set_threshold(gate=gate, who=who,
                                                            min_severity=body.get("min_severity"))})


def _patient_conflicts(gate: Gate, who: Principal, patient_id: str,
                       drafts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return person.patient_conflicts(gate=gate, who=who, patient_id=patient_id, drafts=drafts)


@api_router.get("/api/patients/{patient_id}/conflicts",
                summary="Conflicts for a stored patient: findings (with acknowledgement) and least-harm resolution")
def patient_conflicts(patient_id: str, who: Who, gate: GateDep):
    return _json(_patient_conflicts(gate, who, patient_id))


@api_router.post("/api/patients/{patient_id}/conflicts",
                 summary="As GET, with draft orders checked as if active: body {\"draftOrders\": [resources]}")
def patient_conflicts_with_drafts(patient_id: str, who: Who, gate: GateDep, raw: RawBody):
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise FhirError(400, "request body is not valid JSON", code="invalid") from None
    drafts = body.get("draftOrders", []) if isinstance(body, dict) else None
    if not isinstance(drafts, list) or not all(isinstance(d, dict) and isinstance(d.get("resourceType"), str)
                                               for d in drafts):
        raise FhirError(400, "body must be {\"draftOrders\": [FHIR resources]}", code="invalid")
    drafts = [dict(d, id=d.get("id") or f"draft-{n + 1}") for n, d in enumerate(drafts)]
    return _json(_patient_conflicts(gate, who, patient_id, drafts))
