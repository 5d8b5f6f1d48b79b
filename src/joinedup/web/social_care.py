"""Social care pages (social workers and others who work from the social care record): their people, and the
social care and carer view of one person - carers and contacts, care packages, the care team and key worker, what
matters and goals, sharing choices, and open referrals, tasks and appointments.

Each part is read through the gate with the worker's own access; a part their role may not see says so (never
"none recorded" for something hidden).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from joinedup.care.plans import service as plan_service
from joinedup.care.plans import tasks as task_service
from joinedup.care.plans import team as team_service
from joinedup.fhir import words
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import concept_text, human_name, reference_id
from joinedup.governance.facts import choices_of
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.record.own import PLAIN_TYPES
from joinedup.web.pages import service_page

router = APIRouter(include_in_schema=False)
OPEN_REQUEST = {"draft", "active", "on-hold"}
OPEN_TASK = {"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"}
UPCOMING = {"proposed", "pending", "booked", "arrived", "checked-in", "waitlist"}


@router.get("/social-care")
def people_page(request: Request, deceased: int = 0):
    """The people whose care team I am in, most urgent first (as on My people), each with their social care view."""
    return service_page(request, "roles/social_care.html", lambda gate, who: {
        "mine": task_service.my_people(gate=gate, who=who, include_deceased=bool(deceased))})


def _part(fn: Callable[[], Any], kind: str) -> dict[str, Any]:
    """One part of the view: its items, or a note that the reader's role may not see this kind of entry."""
    try:
        return {"rows": fn(), "hidden": None}
    except FhirError as exc:
        if exc.status != 403:
            raise
        return {"rows": [], "hidden": f"Your role may not see {kind}, so whether there are any is not shown here. "
                                      "Ask the person's GP practice or key worker."}


def _search(gate: Gate, who: Principal, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [s.content for s in gate.search(who, rtype, params + [("_count", "200")]).matches]


def person_view(gate: Gate, who: Principal, patient_id: str) -> dict[str, Any]:
    person = team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    ref = f"Patient/{patient_id}"

    def carers() -> list[dict[str, Any]]:
        out = []
        for r in _search(gate, who, "RelatedPerson", [("patient", ref)]):
            if r.get("active") is False:
                continue
            phone = next((t.get("value") for t in r.get("telecom") or [] if t.get("system") == "phone"), None)
            out.append({"name": human_name(r), "relationship": ", ".join(
                concept_text(x) for x in r.get("relationship") or [] if concept_text(x)), "phone": phone})
        return out

    def packages() -> list[dict[str, Any]]:
        out = []
        for e in _search(gate, who, "EpisodeOfCare", [("patient", ref)]):
            title = concept_text(e.get("type")) or "Episode of care"
            if "registration" in title.lower():
                continue
            period = e.get("period") or {}
            out.append({"title": title, "status": words.status_words("EpisodeOfCare", e.get("status")),
                        "active": e.get("status") == "active", "start": period.get("start"), "end": period.get("end"),
                        "source": (e.get("meta") or {}).get("source")})
        out.sort(key=lambda x: (not x["active"], x["start"] or ""), reverse=False)
        return out

    def requests() -> list[dict[str, Any]]:
        out = []
        for sr in _search(gate, who, "ServiceRequest", [("patient", ref)]):
            if sr.get("status") not in OPEN_REQUEST:
                continue
            out.append({"title": concept_text(sr.get("code")) or "Referral", "status": words.request_words(sr),
                        "when": sr.get("authoredOn"), "id": sr.get("id")})
        return sorted(out, key=lambda x: x["when"] or "", reverse=True)

    def open_tasks() -> list[dict[str, Any]]:
        out = []
        for t in _search(gate, who, "Task", [("patient", ref)]):
            if t.get("status") not in OPEN_TASK:
                continue
            out.append({"text": t.get("description") or concept_text(t.get("code")) or "Task",
                        "status": words.status_words("Task", t.get("status")),
                        "due": ((t.get("restriction") or {}).get("period") or {}).get("end")})
        return sorted(out, key=lambda x: x["due"] or "9999")

    def appointments() -> list[dict[str, Any]]:
        out = []
        for a in _search(gate, who, "Appointment", [("patient", ref)]):
            if a.get("status") not in UPCOMING:
                continue
            out.append({"what": a.get("description") or concept_text(a.get("serviceType")) or "Appointment",
                        "when": a.get("start"), "status": words.status_words("Appointment", a.get("status"))})
        return sorted(out, key=lambda x: x["when"] or "")

    def choices() -> list[str]:
        out = []
        for c in _search(gate, who, "Consent", [("patient", ref), ("status", "active")]):
            kinds, private = choices_of(c)
            for kind, _org in kinds:
                out.append({"all": "Objects to sharing their record beyond the organisation that recorded each entry",
                            "organization": "Objects to sharing their record with one organisation",
                            "opt-out": "Has opted out of research and planning use (National Data Opt-out)"}
                           .get(kind, kind.replace("-", " ")))
            if private:
                out.append(f"Has marked {len(private)} {'entry' if len(private) == 1 else 'entries'} private")
        return list(dict.fromkeys(out))

    team = _part(lambda: team_service.care_team(gate=gate, who=who, patient_id=patient_id), "the care team")
    plan = _part(lambda: plan_service.get_plan(gate=gate, who=who, patient_id=patient_id), "the care plan")
    return {"person": {"id": patient_id, "name": human_name(person), "birth_date": person.get("birthDate"),
                       "deceased": person.get("deceasedDateTime") or person.get("deceasedBoolean"),
                       "gp": reference_id(next(iter(person.get("generalPractitioner") or []), None))},
            "carers": _part(carers, PLAIN_TYPES["RelatedPerson"]), "packages": _part(packages, "care packages"),
            "team": team, "plan": plan, "requests": _part(requests, PLAIN_TYPES["ServiceRequest"]),
            "tasks": _part(open_tasks, PLAIN_TYPES["Task"]), "appointments": _part(appointments, "appointments"),
            "choices": _part(choices, PLAIN_TYPES["Consent"])}


@router.get("/social-care/{patient_id}")
def person_page(request: Request, patient_id: str):
    """The social care and carer view of one person."""
    return service_page(request, "roles/social_care_person.html",
                        lambda gate, who: person_view(gate, who, patient_id), patient_id=patient_id)
