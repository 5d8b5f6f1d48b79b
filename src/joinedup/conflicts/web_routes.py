"""Medicines safety in the web app: the panel on the person page, the full page with the least-harm proposal, and a
clinician's review of an alert (recorded in the person's record)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse

from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import human_name
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.web.pages import Viewer

from . import person, preferences

router = APIRouter(include_in_schema=False)

SEVERITY_ORDER = {"critical": 0, "high": 1, "moderate": 2, "low": 3}
FLAG = {"critical": "high", "high": "high", "moderate": "warning", "low": "info"}
ACTIONS = {"stop": "Stop or review", "switch": "Switch", "adjust-dose": "Reduce the dose", "add": "Add protection",
           "separate-timing": "Separate the times", "merge-reviews": "Merge reviews",
           "agree-advice": "Agree the advice", "add-monitoring": "Medication review"}


def _web():
    from joinedup.web import pages as web

    return web


def safety_context(gate: Gate, who: Principal, patient_id: str, *, error: str | None = None,
                   notice: str | None = None, form: dict[str, str] | None = None) -> dict[str, Any]:
    """What the panel and the page show: findings to review first (most severe first), then reviewed ones."""
    patient = gate.read(who, "Patient", patient_id).content
    ctx: dict[str, Any] = {"pid": patient_id, "name": human_name(patient), "error": error, "notice": notice,
                           "form": form or {}, "flag": FLAG, "actions": ACTIONS, "outcomes": person.REVIEW_OUTCOMES}
    if not person.sees_medicines(who):
        ctx["allowed"] = False
        return ctx
    result = person.patient_conflicts(gate=gate, who=who, patient_id=patient_id, labels=True, merged=True)
    findings = sorted(result["findings"], key=lambda f: (SEVERITY_ORDER.get(f["severity"], 9), f["summary"]))
    min_severity = preferences.threshold(gate=gate, who=who)
    shown, hidden = preferences.visible([f for f in findings if not f["acknowledged"]], min_severity)
    ctx.update(
        allowed=True, version=result["knowledge_version"], labels=result["labels"],
        open=shown, hidden=hidden, min_severity=min_severity, thresholds=preferences.THRESHOLDS,
        reviewed=[f for f in findings if f["acknowledged"]],
        resolution=result.get("resolution") or {"changes": [], "residual": []},
        unrecognised=[u for u in result["unrecognised"]
                      if u["resourceType"] in ("MedicationRequest", "MedicationStatement", "Medication")])
    return ctx


@router.get("/patients/{patient_id}/medicines-safety")
def safety_page(request: Request, patient_id: str, reviewed: str = ""):
    notice = "Your review is recorded in the person's record." if reviewed else None
    return _web().service_page(request, "medicines_safety.html",
                               lambda gate, who: safety_context(gate, who, patient_id, notice=notice),
                               patient_id=patient_id)


@router.get("/patients/{patient_id}/medicines-safety/panel")
def safety_panel(request: Request, patient_id: str):
    """On the person page (HTMX): a refusal or failure is a quiet note in the panel, not a whole error page."""
    return _web().panel_page(
        request, "_medicines_safety_panel.html", lambda gate, who: safety_context(gate, who, patient_id),
        full_page=f"/patients/{quote(patient_id)}/medicines-safety",
        on_error=lambda message: {"pid": patient_id, "error": message, "allowed": True})


@router.post("/patients/{patient_id}/medicines-safety/settings")
def settings_submit(request: Request, patient_id: str, min_severity: str = Form("")):
    """The user's alert threshold (for every person), then back to this person's page."""
    return _web().service_action(
        request, lambda gate, who: preferences.set_threshold(gate=gate, who=who, min_severity=min_severity),
        then=f"/patients/{quote(patient_id)}/medicines-safety#alert-settings")


@router.post("/patients/{patient_id}/medicines-safety/review")
def review_submit(request: Request, who: Viewer, patient_id: str, fingerprint: str = Form(""), outcome: str = Form(""),
                  comment: str = Form("")):
    web = _web()
    try:
        person.review_finding(gate=web.gate_of(request), who=who, patient_id=patient_id, fingerprint=fingerprint,
                              outcome=outcome, comment=comment)
    except FhirError as exc:
        if exc.status in (401, 403, 404):
            return web.error_page(request, exc.status, exc.diagnostics, who=who, patient_id=patient_id)
        form = {"fingerprint": fingerprint, "outcome": outcome, "comment": comment}
        message = exc.diagnostics
        return web.service_page(request, "medicines_safety.html", lambda gate, w: safety_context(
            gate, w, patient_id, error=message, form=form), patient_id=patient_id, who=who, status=exc.status)
    return RedirectResponse(f"/patients/{quote(patient_id)}/medicines-safety?reviewed=1", status_code=303)
