"""The clerical review page for record linkage: each uncertain pair side by side, with its match weight and
probability and the fields that agree or differ; accept (the records become one person's) or reject (remembered,
never proposed again); the confirmed links, each of which can be unlinked (and an unlink undone). For the privacy
officer and the records manager (`review-record-linkage`); every listing and decision is audited by the gate."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse

from joinedup.fhir.errors import FhirError
from joinedup.interop.linkage import service
from joinedup.web.pages import Viewer, error_page, gate_of, service_page

router = APIRouter(include_in_schema=False)
STATUSES = {"pending": "Waiting for review", "approved": "Accepted", "rejected": "Rejected", "all": "All"}


def _context(gate, who, status: str, **extra):
    if status not in STATUSES:
        raise FhirError(400, f"Unknown status '{status}': choose one of {', '.join(STATUSES)}", code="value")
    return {"pairs": service.review_queue(gate, who, status=status), "status": status, "statuses": STATUSES,
            "done": None, "error": None, "links": service.links(gate, who), "unlinked_done": None,
            "unlink_error": None, "relink_error": None, **extra}


UNLINK_DONE = {"unlinked": "The records are unlinked. The pair will not be proposed again unless linked again below.",
               "relinked": "The records are linked again."}


@router.get("/linkage/review")
def review_page(request: Request, status: str = "pending", done: str = ""):
    return service_page(request, "linkage/review.html", lambda gate, who: _context(
        gate, who, status, done=done if done in ("accepted", "rejected") else None,
        unlinked_done=UNLINK_DONE.get(done)))


@router.post("/linkage/unlink")
def unlink_submit(request: Request, who: Viewer, patient: str = Form(""), other_patient: str = Form(""),
                  reason: str = Form("")):
    try:
        service.unlink(gate_of(request), who, patient, other_patient, reason=reason)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        message = ("Say why these are not one person (at least 10 characters)." if exc.status == 400
                   else exc.diagnostics)
        return service_page(request, "linkage/review.html", lambda gate, w: _context(
            gate, w, "pending", unlink_error={"patient": patient, "other_patient": other_patient,
                                              "reason": reason, "message": message}), who=who, status=exc.status)
    return RedirectResponse("/linkage/review?done=unlinked#linked", status_code=303)


@router.post("/linkage/relink/{unlink_id}")
def relink_submit(request: Request, who: Viewer, unlink_id: str, reason: str = Form("")):
    try:
        service.relink(gate_of(request), who, unlink_id, reason=reason)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        message = ("Say why the records are one person after all (at least 10 characters)." if exc.status == 400
                   else exc.diagnostics)
        return service_page(request, "linkage/review.html", lambda gate, w: _context(
            gate, w, "pending", relink_error={"id": unlink_id, "reason": reason, "message": message}),
            who=who, status=exc.status)
    return RedirectResponse("/linkage/review?done=relinked#linked", status_code=303)


@router.post("/linkage/review/{request_id}")
def review_submit(request: Request, who: Viewer, request_id: str, outcome: str = Form(""), note: str = Form("")):
    try:
        service.decide_review(gate_of(request), who, request_id, outcome=outcome or None, note=note or None)
    except FhirError as exc:
        if exc.status in (403, 404):
            return error_page(request, exc.status, exc.diagnostics, who=who)
        message = "Choose accept or reject." if exc.status == 400 else exc.diagnostics
        return service_page(request, "linkage/review.html", lambda gate, w: _context(
            gate, w, "pending", error={"id": request_id, "message": message, "note": note, "outcome": outcome}),
            who=who, status=exc.status)
    return RedirectResponse(f"/linkage/review?done={'accepted' if outcome == 'approved' else 'rejected'}",
                            status_code=303)
