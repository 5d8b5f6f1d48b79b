"""Fewer appointments: propose merging a person's separate condition reviews into one multimorbidity review
(from the conflict engine's schedule finding), and let the key worker accept it as a care plan action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from joinedup.care.plans import service as plan_service
from joinedup.care.plans import team as team_service
from joinedup.conflicts import service as conflicts
from joinedup.fhir.errors import FhirError
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

MERGE_RULE = "sch-merge-condition-reviews"
DEFAULT_WEEKS = 6


def proposals(*, gate: Gate, who: Principal, patient_id: str, plan: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Review-merge proposals for the person (none once one has been accepted into the plan)."""
    patient = team_service.require_person(gate=gate, who=who, patient_id=patient_id)
    resources = [patient]
    found = gate.search(who, "Condition", [("patient", f"Patient/{patient_id}"), ("_count", "500")])
    resources += [s.content for s in found.matches]
    result = conflicts.detect_findings(resources=resources)
    plan = plan if plan is not None else plan_service.get_plan(gate=gate, who=who, patient_id=patient_id)
    taken = {a.get("finding") for a in plan["actions"] if a.get("finding")}
    out = []
    for f in result["findings"]:
        if f["kind"] != "schedule" or f["rule"] != MERGE_RULE:
            continue
        summary = f["summary"]
        reviews = []
        if "(" in summary and summary.endswith(")"):
            reviews = [x.strip() for x in summary[summary.rindex("(") + 1:-1].split(",") if x.strip()]
        out.append({"finding": f["id"], "rule": f["rule"], "summary": summary, "detail": f["detail"],
                    "reviews": reviews, "involves": f["involves"], "sources": f["sources"],
                    "accepted": any(m.split(":")[0] == f["rule"] for m in taken)})
    return out


def accept(*, gate: Gate, who: Principal, patient_id: str, finding: str, due: str | None = None,
           owner_practitioner: str | None = None, owner_organization: str | None = None,
           if_match: str | None) -> dict[str, Any]:
    """The key worker accepts a merge proposal: it becomes an owned, dated action in the care plan."""
    kw = team_service.key_worker(gate=gate, who=who, patient_id=patient_id)
    if who.role != "system":
        if kw is None:
            raise FhirError(409, "This person has no key worker yet: name one (key worker handover) before accepting "
                                 "a review merge", code="business-rule")
        if kw["practitioner_id"] != who.practitioner_id:
            raise gate.refuse(who, f"Only the person's key worker ({kw['name']}, {kw['organization']}) can accept a "
                                   "review merge into the care plan", action="update", entity="CarePlan",
                              patient_id=patient_id)
    plan = plan_service.get_plan(gate=gate, who=who, patient_id=patient_id)
    props = proposals(gate=gate, who=who, patient_id=patient_id, plan=plan)
    p = next((x for x in props if x["finding"] == finding), None)
    if p is None:
        raise FhirError(404, f"There is no review-merge proposal '{finding[:64]}' for this person (the conditions may "
                             "have changed): reload the plan", code="not-found")
    if p["accepted"]:
        raise FhirError(409, "This review merge is already an action in the care plan", code="duplicate")
    due = due or (datetime.now(UTC).date() + timedelta(weeks=DEFAULT_WEEKS)).isoformat()
    if kw and not owner_practitioner:
        owner_practitioner, owner_organization = kw["practitioner_id"], kw["organization_id"]
    names = ", ".join(p["reviews"]) or "the separate condition reviews"
    text = f"Book one multimorbidity review replacing: {names} (monitoring tests booked beforehand)"
    return plan_service.add_action(gate=gate, who=who, patient_id=patient_id, description=text,
                                   owner_practitioner=owner_practitioner, owner_organization=owner_organization,
                                   due=due, if_match=if_match, finding=f"{p['rule']}:{p['finding']}")
