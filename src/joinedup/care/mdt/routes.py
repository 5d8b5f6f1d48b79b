"""Multidisciplinary reviews over HTTP: `/api/mdt` and the pages under `/mdt`."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import JSONResponse, RedirectResponse

from joinedup.api.responses import api_errors
from joinedup.care.mdt import service as svc
from joinedup.care.referrals.service import recipients
from joinedup.deps import CurrentUser, FormData, GateDep
from joinedup.fhir import words
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.record.service import my_patients
from joinedup.web.pages import Viewer, error_page, gate_of, service_page

# Plain `def` handlers (API and pages): FastAPI runs them in its thread pool, off the event loop.
api_router = APIRouter(prefix="/api/mdt", tags=["multidisciplinary reviews"], responses=api_errors())
web_router = APIRouter(include_in_schema=False)


# -- API ---------------------------------------------------------------------------------------------------------
@api_router.post("", status_code=201, summary="Schedule a review (an Appointment per person, participants from "
                                               "several organisations)")
def schedule(body: svc.NewReview, who: CurrentUser, gate: GateDep):
    return JSONResponse(svc.schedule_review(gate=gate, who=who, **body.model_dump()), status_code=201)


def _with_state(review: dict[str, Any]) -> dict[str, Any]:
    """A review with its state by its date in the platform's words (fhir/words.py): 'Booked' until it starts."""
    return {**review, "state": words.meeting_state(review.get("status"), review.get("start"), review.get("end")),
            "state_text": words.meeting_words(review.get("status"), review.get("start"), review.get("end"))}


@api_router.get("", summary="Reviews I take part in")
def mine(who: CurrentUser, gate: GateDep, include_past: bool = False):
    return JSONResponse({"reviews": [_with_state(r) for r in svc.list_reviews(gate=gate, who=who,
                                                                             include_past=include_past)]})


@api_router.get("/{review_id}", summary="A review: participants, attendance, people and decisions")
def one(review_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse(_with_state(svc.get_review(gate=gate, who=who, review_id=review_id)))


@api_router.get("/{review_id}/pack/{patient_id}",
                summary="The prepared pack for one person: summary, conflicts, open tasks, what matters")
def pack(review_id: str, patient_id: str, who: CurrentUser, gate: GateDep):
    return JSONResponse(svc.prepare_pack(gate=gate, who=who, review_id=review_id, patient_id=patient_id))


@api_router.post("/{review_id}/decisions", status_code=201,
                 summary="Record a decision: an owned action (FHIR Task) with a due date")
def decide(review_id: str, body: svc.Decision, who: CurrentUser, gate: GateDep):
    return JSONResponse(svc.record_decision(gate=gate, who=who, review_id=review_id, **body.model_dump()),
                        status_code=201)


@api_router.post("/{review_id}/attendance", summary="Record who attended")
def attendance(review_id: str, body: svc.Attendance, who: CurrentUser, gate: GateDep):
    return JSONResponse(svc.record_attendance(gate=gate, who=who, review_id=review_id, attendance=body.attendance))


@api_router.post("/{review_id}/complete", summary="Complete the review with its outcome")
def complete(review_id: str, body: svc.Completion, who: CurrentUser, gate: GateDep):
    return JSONResponse(svc.complete_review(gate=gate, who=who, review_id=review_id, outcome=body.outcome))


# -- pages -----------------------------------------------------------------------------------------------------------
@web_router.get("/mdt")
def reviews_page(request: Request, patient: str = "", deceased: int = 0):
    return _schedule_form(request, {"title": "", "start": "", "minutes": "60", "location": "",
                                    "patient_ids": [patient] if patient else [], "participants": [],
                                    "deceased": bool(deceased)})


def _schedule_form(request: Request, form: dict, error: str | None = None, status: int = 200, *,
                   who: Principal | None = None):
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        reviews = svc.list_reviews(gate=gate, who=who, include_past=True)
        people = my_patients(gate=gate, who=who, include_deceased=bool(form.get("deceased")))
        staff = recipients(gate=gate, who=who)
        known = {p["id"] for p in people}
        extra = [pid for pid in form["patient_ids"] if pid and pid not in known]
        return {"reviews": reviews, "people": people, "extra_people": extra, "staff": staff, "form": form,
                "error": error}

    return service_page(request, "care/mdt.html", build, who=who, status=status)


@web_router.post("/mdt")
def schedule_submit(request: Request, who: Viewer, data: FormData):
    form = {"title": str(data.get("title", "")), "start": str(data.get("start", "")),
            "minutes": str(data.get("minutes", "60")), "location": str(data.get("location", "")),
            "patient_ids": [str(x) for x in data.getlist("patient_ids") if x],
            "participants": [str(x) for x in data.getlist("participants") if x]}
    try:
        minutes = int(form["minutes"] or 60)
    except ValueError:
        return _schedule_form(request, form, "The length must be a whole number of minutes.", 422, who=who)
    try:
        review = svc.schedule_review(gate=gate_of(request), who=who, title=form["title"], start=form["start"],
                                     minutes=minutes, patient_ids=form["patient_ids"],
                                     participants=form["participants"], location=form["location"] or None)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return _schedule_form(request, form, exc.diagnostics, exc.status, who=who)
    return RedirectResponse(f"/mdt/{quote(review['id'])}", status_code=303)


def _default_due() -> str:
    return (date.today() + timedelta(days=14)).isoformat()


def _review_page(request: Request, review_id: str, *, who: Principal | None = None, error: str | None = None,
                 status: int = 200, form: dict | None = None):
    return service_page(request, "care/mdt_review.html", lambda gate, who: {
        "rv": svc.get_review(gate=gate, who=who, review_id=review_id), "error": error, "form": form or {},
        "default_due": _default_due(), "attendance_choices": list(svc.ATTENDANCE)}, who=who, status=status)


@web_router.get("/mdt/{review_id}")
def review_page(request: Request, review_id: str):
    return _review_page(request, review_id)


@web_router.post("/mdt/{review_id}/decisions")
def decision_submit(request: Request, who: Viewer, review_id: str, patient_id: str = Form(""), text: str = Form(""),
                    owner: str = Form(""), due: str = Form("")):
    """Capture a decision (HTMX swaps the person's decision list in place)."""
    htmx = bool(request.headers.get("hx-request"))
    form = {"patient_id": patient_id, "text": text, "owner": owner, "due": due}
    error = None
    try:
        svc.record_decision(gate=gate_of(request), who=who, review_id=review_id, patient_id=patient_id, text=text,
                            owner=owner, due=due)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        if not htmx:
            return _review_page(request, review_id, who=who, error=exc.diagnostics, status=exc.status, form=form)
        error = exc.diagnostics
    if not htmx:
        return RedirectResponse(f"/mdt/{quote(review_id)}#person-{quote(patient_id)}", status_code=303)

    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        review = svc.get_review(gate=gate, who=who, review_id=review_id)
        person = next((p for p in review["people"] if p["patient_id"] == patient_id), None)
        if person is None:
            raise FhirError(404, f"Patient/{patient_id} is not part of this review", code="not-found")
        return {"rv": review, "p": person, "error": error, "default_due": _default_due(),
                "form": form if error else {}}

    return service_page(request, "care/_mdt_person.html", build, who=who)


@web_router.post("/mdt/{review_id}/attendance")
def attendance_submit(request: Request, who: Viewer, review_id: str, data: FormData):
    marks = {k.removeprefix("att-"): str(v) for k, v in data.items() if k.startswith("att-")}
    try:
        svc.record_attendance(gate=gate_of(request), who=who, review_id=review_id, attendance=marks)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return _review_page(request, review_id, who=who, error=exc.diagnostics, status=exc.status)
    return RedirectResponse(f"/mdt/{quote(review_id)}", status_code=303)


@web_router.post("/mdt/{review_id}/complete")
def complete_submit(request: Request, who: Viewer, review_id: str, outcome: str = Form("")):
    try:
        svc.complete_review(gate=gate_of(request), who=who, review_id=review_id, outcome=outcome)
    except FhirError as exc:
        if exc.status == 403:
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return _review_page(request, review_id, who=who, error=exc.diagnostics, status=exc.status,
                            form={"outcome": outcome})
    return RedirectResponse(f"/mdt/{quote(review_id)}", status_code=303)


@web_router.get("/mdt/{review_id}/pack/{patient_id}")
def pack_page(request: Request, review_id: str, patient_id: str):
    return service_page(request, "care/mdt_pack.html", lambda gate, who: {
        "pk": svc.prepare_pack(gate=gate, who=who, review_id=review_id, patient_id=patient_id)})
